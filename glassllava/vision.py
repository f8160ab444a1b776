"""CLIP image encoders (open_clip): panel images in, unit-length embeddings out.

The SEM classifier can use one as its backbone (``glassllava fit-sem --clip ...``), and the model's
vision tower will be one. Nothing here downloads on the default path: a model is named as open_clip
names it and its weights come from where the user has them:

- ``model="local-dir:/models/clip-vit-l14"``: a folder holding ``open_clip_config.json`` and
  ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``), the layout of open_clip
  models on the Hugging Face hub, so a downloaded snapshot works as it is;
- ``model="ViT-L-14", weights="/models/ViT-L-14.pt"``: a built-in architecture and a checkpoint file;
- ``model="ViT-L-14", weights="openai"`` or ``model="hf-hub:org/repo"``: open_clip's own download,
  for machines that can reach it (or have it in their Hugging Face cache).

``weights=None`` with a built-in name gives random initialisation, which only tests should want.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from glassllava.files import sha256_file, sha256_json

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")


class VisionModelError(ValueError):
    """The CLIP model cannot be loaded as specified (with the reason and what was looked for)."""


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP image encoder: an open_clip model name and where its weights are."""

    model: str
    weights: str | None = None

    def local_weight_file(self) -> Path | None:
        """The checkpoint file on this machine, when the weights are local."""
        if self.model.startswith(LOCAL_DIR):
            folder = Path(self.model[len(LOCAL_DIR) :]).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise VisionModelError(f"{folder} has no open_clip_config.json (expected an open_clip model folder)")
            for name in WEIGHT_FILES:
                if (folder / name).is_file():
                    return folder / name
            raise VisionModelError(f"{folder} holds none of {', '.join(WEIGHT_FILES)}")
        if self.weights and Path(self.weights).expanduser().is_file():
            return Path(self.weights).expanduser()
        if self.weights and ("/" in self.weights or self.weights.endswith((".pt", ".bin", ".safetensors", ".pth"))):
            raise VisionModelError(f"CLIP weights file {self.weights} does not exist")
        return None

    def fingerprint(self) -> str:
        """Identity of the encoder, the same on every machine: the architecture (the config file's sha256
        for a local folder, else the model name) and the weights (a local checkpoint's sha256, else the tag)."""
        weight_file = self.local_weight_file()
        if self.model.startswith(LOCAL_DIR):
            architecture = sha256_file(Path(self.model[len(LOCAL_DIR) :]).expanduser() / "open_clip_config.json")
        else:
            architecture = self.model
        weights = sha256_file(weight_file) if weight_file else self.weights
        return sha256_json({"architecture": architecture, "weights": weights})[:16]


class ClipEncoder:
    """A loaded CLIP image tower with its preprocessing; ``embed`` returns float32 unit vectors."""

    def __init__(self, spec: ClipSpec, device: str | None = None) -> None:
        try:
            import open_clip
            import torch
        except ImportError as err:
            raise VisionModelError(f"CLIP encoders need the vision extra: pip install -e '.[vision]' ({err})") from err
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.spec = spec
        self.fingerprint = spec.fingerprint()
        local = spec.local_weight_file()
        named_by_schema = spec.model.startswith(("hf-hub:", LOCAL_DIR))  # open_clip finds those weights itself
        pretrained = None if named_by_schema else str(local) if local else spec.weights
        if pretrained is None and not named_by_schema:
            log.warning("CLIP model %s has no weights: random initialisation (fine for tests, useless otherwise)", spec.model)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=pretrained, device=device)
        except Exception as err:  # open_clip raises RuntimeError/ValueError/OSError for missing configs and weights
            raise VisionModelError(f"cannot load CLIP model {spec.model!r} with weights {spec.weights!r}: {err}") from err
        model.eval()
        self._torch = torch
        self.model, self.preprocess, self.device = model, preprocess, device
        with torch.no_grad():
            probe = preprocess(Image.new("RGB", (32, 32), "grey")).unsqueeze(0).to(device)
            self.dim = int(model.encode_image(probe).shape[-1])

    def embed(self, images: list[Image.Image], batch_size: int = 16) -> np.ndarray:
        """(len(images), dim) float32, each row of unit length."""
        torch = self._torch
        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = [self.preprocess(im.convert("RGB")) for im in images[start : start + batch_size]]
                features = self.model.encode_image(torch.stack(chunk).to(self.device)).float()
                out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


@functools.lru_cache(maxsize=2)
def load_clip(spec: ClipSpec, device: str | None = None) -> ClipEncoder:
    """Load (once per process) the encoder named by ``spec``, on ``device`` (default: a GPU when there is one)."""
    encoder = ClipEncoder(spec, device)
    log.info("CLIP image encoder %s loaded on %s (dim %d, fingerprint %s)", spec.model, encoder.device, encoder.dim, encoder.fingerprint)
    return encoder
