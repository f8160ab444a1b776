"""CLIP vision towers for the LLaVA model: an open_clip ViT or a transformers CLIP checkpoint in, a transformers
``CLIPVisionModel`` out.

``LlavaForConditionalGeneration`` builds its tower from ``LlavaConfig.vision_config`` with ``AutoModel``, so the
``paper`` preset's tower has to be a ``CLIPVisionModel`` whatever the weights came as:

- ``open_clip_to_clip_vision(visual)``: an open_clip ``VisionTransformer`` (``model.visual``) rewritten as a
  ``CLIPVisionModel`` with the same numbers: config read off the module, every tensor mapped, nothing guessed.
  What a ``CLIPVisionModel`` cannot express (layer scale, attentional pooling, patch dropout, extra norms, ...)
  raises ``ClipConversionError`` with every reason, instead of converting into a different network.
- ``load_clip_vision_tower(spec, image_size)``: the tower named by ``model.vision_weights`` in params.yaml
  (float32, CPU, eval mode), from one of:

  ``/models/clip-vit-large-patch14``   a transformers folder (config.json + weights) of a ``CLIPVisionModel``
                                       or a full ``CLIPModel`` (only the vision tensors are read);
  ``openai/clip-vit-large-patch14``    a hub id: from the Hugging Face cache, or the hub where it can be reached;
  ``open_clip:/models/ViT-L-14``       an open_clip folder (open_clip_config.json + open_clip_model.safetensors);
  ``open_clip:ViT-L-14-quickgelu@/models/vit-l-14.pt``   a built-in open_clip architecture + a checkpoint file.

  OpenAI's CLIP weights were trained with QuickGELU: load them into the ``-quickgelu`` open_clip architecture
  (open_clip 3.x only warns on a mismatch, and the converted tower would faithfully copy the wrong activation).
- ``resize_clip_vision_tower(tower, image_size)``: the same tower for another image size, its position embeddings
  interpolated once exactly as transformers' ``interpolate_pos_encoding=True`` does at run time.

Layer indices line up one to one: open_clip's ``forward_intermediates(indices=[k])`` is the output of block k
(negative k counts from the end), transformers' ``hidden_states[k + 1]`` is the same tensor (``hidden_states[0]`` is
the embeddings after ``pre_layrnorm``), so LLaVA's ``vision_feature_layer=-2`` equals open_clip's ``indices=[-2]``.
open_clip drops the class token from intermediates; Llava's ``vision_feature_select_strategy="default"`` does too.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from glassllava.vision import LOCAL_DIR, WEIGHT_FILES, ClipSpec, VisionModelError

log = logging.getLogger(__name__)

PARAM = "model.vision_weights"  # the params.yaml key every loading error names
OPEN_CLIP = "open_clip:"
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CLIP_MODEL_TYPES = ("clip_vision_model", "clip")
# Tensors of a full CLIPModel / CLIPVisionModelWithProjection checkpoint that a bare vision tower leaves out on purpose
# (the text tower and the projections into the joint space); position_ids is a buffer older checkpoints stored.
NOT_THE_TOWER = ("text_model.", "text_projection.", "visual_projection.", "logit_scale", "logit_bias")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ClipConversionError(VisionModelError):
    """The open_clip tower cannot become a ``CLIPVisionModel`` without changing what it computes (with every reason)."""


class VisionTowerError(VisionModelError):
    """The tower named by ``model.vision_weights`` is missing, of the wrong kind or does not load (with what was looked for)."""


# ---- open_clip → transformers ------------------------------------------------------------------
def open_clip_to_clip_vision(visual: nn.Module) -> CLIPVisionModel:
    """A ``CLIPVisionModel`` computing what the open_clip ``VisionTransformer`` ``visual`` computes.

    Args:
        visual: ``model.visual`` of an open_clip CLIP, a bare ``open_clip.transformer.VisionTransformer``, or the
            CLIP model itself (its ``.visual`` is taken).

    Returns:
        The converted tower in eval mode, on ``visual``'s device and dtype. Its ``hidden_states`` equal open_clip's
        block outputs (class token included); ``pooler_output`` equals open_clip's pooled feature before ``proj``.

    Raises:
        ClipConversionError: an architecture feature ``CLIPVisionModel`` lacks (every one is listed), or a tensor
            with no place on either side.
    """
    visual = _vision_transformer(visual)
    config = _clip_vision_config(visual)
    source = dict(visual.state_dict())
    # proj (width x embed_dim) maps the pooled class token into CLIP's joint image-text space. CLIPVisionModel has no
    # such layer (CLIPVisionModelWithProjection's visual_projection would hold it) and LLaVA reads hidden states, so
    # it is dropped, and is the only tensor dropped.
    source.pop("proj", None)
    weights: dict[str, torch.Tensor] = {}

    def move(src: str, dst: str) -> None:
        if src in source:  # an absent source shows up below as an unfilled destination, with its name
            weights[dst] = source.pop(src)

    move("conv1.weight", "embeddings.patch_embedding.weight")
    move("class_embedding", "embeddings.class_embedding")
    move("positional_embedding", "embeddings.position_embedding.weight")  # (grid² + 1, width), class position first in both
    for name in ("weight", "bias"):
        move(f"ln_pre.{name}", f"pre_layrnorm.{name}")
        move(f"ln_post.{name}", f"post_layernorm.{name}")
    for i in range(config.num_hidden_layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        # in_proj packs q, k, v along the output axis, in that order, for nn.MultiheadAttention and open_clip's Attention
        for kind in ("weight", "bias"):
            packed = source.pop(f"{src}attn.in_proj_{kind}", None)
            if packed is not None:
                for part, tensor in zip(("q", "k", "v"), packed.chunk(3, dim=0)):
                    weights[f"{dst}self_attn.{part}_proj.{kind}"] = tensor
        for name in ("weight", "bias"):
            move(f"{src}attn.out_proj.{name}", f"{dst}self_attn.out_proj.{name}")
            move(f"{src}ln_1.{name}", f"{dst}layer_norm1.{name}")
            move(f"{src}ln_2.{name}", f"{dst}layer_norm2.{name}")
            move(f"{src}mlp.c_fc.{name}", f"{dst}mlp.fc1.{name}")
            move(f"{src}mlp.c_proj.{name}", f"{dst}mlp.fc2.{name}")

    tower = CLIPVisionModel(config)
    _check_complete(source, weights, tower.state_dict())
    tower.load_state_dict(weights, strict=True)
    first = visual.conv1.weight
    log.info(
        "open_clip ViT converted to CLIPVisionModel: width %d, %d layers, %d heads, %d px / %d px patches, %s, proj dropped",
        config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.image_size, config.patch_size, config.hidden_act,
    )
    return tower.to(device=first.device, dtype=first.dtype).eval()


def _vision_transformer(model: nn.Module) -> nn.Module:
    """``model`` itself when it is an open_clip ViT, its ``.visual`` when it is a whole open_clip CLIP."""
    try:
        from open_clip.transformer import VisionTransformer
    except ImportError as err:
        raise ClipConversionError(f"converting an open_clip tower needs open_clip: pip install -e '.[vision]' ({err})") from err
    if not isinstance(model, VisionTransformer) and isinstance(getattr(model, "visual", None), nn.Module):
        model = model.visual
    if not isinstance(model, VisionTransformer):
        raise ClipConversionError(
            f"{type(model).__name__} is not an open_clip VisionTransformer (ResNet and timm towers have no CLIPVisionModel form)"
        )
    return model


def _activation_name(activation: nn.Module) -> str | None:
    """The transformers ``hidden_act`` computing exactly what ``activation`` computes (None: there is none)."""
    from open_clip.transformer import QuickGELU

    if isinstance(activation, QuickGELU):
        return "quick_gelu"  # x * sigmoid(1.702 x) on both sides
    if isinstance(activation, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_pytorch_tanh"}.get(activation.approximate)
    return None


def _clip_vision_config(visual: nn.Module) -> CLIPVisionConfig:
    """The ``CLIPVisionConfig`` of ``visual``, read off its modules; ``ClipConversionError`` lists all that does not fit."""
    from open_clip.transformer import Attention, CustomResidualAttentionBlock, PatchDropout, ResidualAttentionBlock

    reasons: list[str] = []
    conv = visual.conv1
    width = conv.out_channels
    (image_h, image_w), (patch_h, patch_w) = visual.image_size, visual.patch_size
    if image_h != image_w or patch_h != patch_w:
        reasons.append(f"non-square images or patches ({image_h}x{image_w} px, {patch_h}x{patch_w} patches): CLIPVisionConfig has one side")
    if conv.bias is not None or tuple(conv.stride) != tuple(conv.kernel_size) or any(conv.padding):
        reasons.append("patch embedding is not a bias-free convolution with stride = kernel")
    # Pooling: CLIPVisionModel pools the class token (post_layernorm(hidden[:, 0])); open_clip's final_ln_after_pool
    # applies the same norm to the same token in the other order, which is the same thing, so it is accepted.
    if getattr(visual, "attn_pool", None) is not None:
        reasons.append("attentional pooling (attn_pool): CLIPVisionModel pools the class token")
    if getattr(visual, "class_embedding", None) is None:
        reasons.append("no class token: CLIPVisionModel always prepends one")
    if getattr(visual, "pool_type", "tok") != "tok":
        reasons.append(f"pool_type={visual.pool_type!r}: CLIPVisionModel pools the class token ('tok')")
    # Patch dropout only acts in training, but a converted tower would silently train without it.
    if isinstance(visual.patch_dropout, PatchDropout) and visual.patch_dropout.prob > 0:
        reasons.append(
            f"patch dropout (p={visual.patch_dropout.prob}): CLIPVisionModel has none; create the model with "
            "force_patch_dropout=0.0 or set visual.patch_dropout = torch.nn.Identity()"
        )
    grid = (image_h // patch_h) * (image_w // patch_w)
    if tuple(visual.positional_embedding.shape) != (grid + 1, width):
        shape = tuple(visual.positional_embedding.shape)
        reasons.append(f"positional embedding {shape} is not (patches + 1, width) = ({grid + 1}, {width})")

    blocks = list(visual.transformer.resblocks)
    norms = {"ln_pre": visual.ln_pre, "ln_post": visual.ln_post}
    heads, activations, mlp_widths = set(), set(), set()
    for i, block in enumerate(blocks):
        where = f"block {i}"
        if not isinstance(block, (ResidualAttentionBlock, CustomResidualAttentionBlock)):
            reasons.append(f"{where} is a {type(block).__name__}")
            continue
        norms[f"{where} ln_1"], norms[f"{where} ln_2"] = block.ln_1, block.ln_2
        if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
            reasons.append(f"{where}: layer scale (ls_1/ls_2): CLIPVisionModel has no per-channel residual scale")
        if hasattr(block, "ln_1_kv"):
            reasons.append(f"{where}: cross-attention norm (ln_1_kv)")
        attn = block.attn
        if isinstance(attn, nn.MultiheadAttention):
            if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
                reasons.append(f"{where}: attention with separate q/k/v sizes, bias_k/bias_v or add_zero_attn")
        elif isinstance(attn, Attention):
            extras = {
                "scaled cosine attention": attn.logit_scale is not None,
                "per-head scale": attn.head_scale is not None,
                "q/k norm": not (isinstance(attn.ln_q, nn.Identity) and isinstance(attn.ln_k, nn.Identity)),
                "norm inside attention (scale_attn_inner)": not isinstance(attn.ln_inner, nn.Identity),
                "norm after attention (scale_attn)": not isinstance(block.ln_attn, nn.Identity),
                "norm inside the MLP (scale_fc)": not isinstance(getattr(block.mlp, "ln", nn.Identity()), nn.Identity),
            }
            reasons += [f"{where}: {extra}: not in CLIPVisionModel" for extra, present in extras.items() if present]
        else:
            reasons.append(f"{where}: attention is a {type(attn).__name__}")
            continue
        heads.add(attn.num_heads)
        activation = getattr(block.mlp, "gelu", None)
        name = _activation_name(activation) if activation is not None else None
        if name is None:
            reasons.append(f"{where}: MLP activation {type(activation).__name__} has no transformers equivalent here")
        activations.add(name)
        mlp_widths.add(block.mlp.c_fc.out_features)

    eps = set()
    for where, norm in norms.items():
        if not isinstance(norm, nn.LayerNorm):
            reasons.append(f"{where} is {type(norm).__name__}, not LayerNorm (CLIPVisionModel always normalises there)")
        elif not norm.elementwise_affine or norm.bias is None:
            reasons.append(f"{where} is a LayerNorm without weight and bias")
        elif tuple(norm.normalized_shape) != (width,):
            reasons.append(f"{where} normalises {tuple(norm.normalized_shape)}, not the width {width}")
        else:
            eps.add(norm.eps)
    for what, values in (("layer-norm eps", eps), ("head counts", heads), ("MLP activations", activations), ("MLP widths", mlp_widths)):
        if len(values) > 1:
            reasons.append(f"blocks differ in {what} ({sorted(map(str, values))}): CLIPVisionConfig has one value")
    if not blocks:
        reasons.append("no transformer blocks")
    if reasons:
        listed = "\n  - ".join(reasons)
        raise ClipConversionError(f"open_clip VisionTransformer cannot be converted faithfully to CLIPVisionModel:\n  - {listed}")
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=mlp_widths.pop(),  # int(width * mlp_ratio), read off c_fc rather than recomputed
        num_hidden_layers=len(blocks),
        num_attention_heads=heads.pop(),
        num_channels=conv.in_channels,
        image_size=image_h,
        patch_size=patch_h,
        hidden_act=activations.pop(),
        layer_norm_eps=eps.pop(),
        projection_dim=visual.proj.shape[1] if getattr(visual, "proj", None) is not None else width,  # provenance only: proj is dropped
    )


def _check_complete(leftover: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Every open_clip tensor used, every CLIPVisionModel tensor filled with the right shape; else all the offenders."""
    problems = []
    if leftover:
        problems.append(f"open_clip tensors with no place in CLIPVisionModel: {', '.join(sorted(leftover))}")
    unfilled = sorted(set(expected) - set(weights))
    if unfilled:
        problems.append(f"CLIPVisionModel tensors left unfilled: {', '.join(unfilled)}")
    wrong = [
        f"{key} {tuple(tensor.shape)} vs {tuple(expected[key].shape)}"
        for key, tensor in weights.items()
        if key in expected and tensor.shape != expected[key].shape
    ]
    if wrong:
        problems.append(f"shape mismatches (open_clip vs CLIPVisionModel): {', '.join(wrong)}")
    if problems:
        raise ClipConversionError("open_clip → CLIPVisionModel weight mapping incomplete:\n  - " + "\n  - ".join(problems))


# ---- image size --------------------------------------------------------------------------------
def resize_clip_vision_tower(tower: CLIPVisionModel, image_size: int) -> CLIPVisionModel:
    """``tower`` for ``image_size`` px images: a new model whose position table is interpolated once.

    The interpolation is transformers' own (``CLIPVisionEmbeddings.interpolate_pos_encoding``: the class position
    kept, the patch grid resized bicubically, ``align_corners=False``), so the result computes exactly what
    ``tower(pixels, interpolate_pos_encoding=True)`` computes, but with a fixed table, a config that says the new
    size and a Llava ``image_seq_length`` that can be checked against it. It is not a tower trained at that size.

    Raises:
        VisionTowerError: ``image_size`` is not a positive multiple of the patch size, or the tower is not square.
    """
    old, patch = tower.config.image_size, tower.config.patch_size
    if not (isinstance(old, int) and isinstance(patch, int)):
        raise VisionTowerError(f"cannot resize a tower with non-square image size {old} or patch size {patch}")
    if image_size <= 0 or image_size % patch:
        raise VisionTowerError(f"image_size {image_size} is not a positive multiple of the tower's patch size {patch}")
    if image_size == old:
        return tower
    grid = image_size // patch
    with torch.no_grad():
        # interpolate_pos_encoding reads only the token count and width of its first argument
        probe = torch.zeros(1, grid * grid + 1, tower.config.hidden_size)
        table = tower.embeddings.interpolate_pos_encoding(probe, image_size, image_size)[0].clone()
    config = copy.deepcopy(tower.config)
    config.image_size = image_size
    resized = CLIPVisionModel(config)
    weights = dict(tower.state_dict())
    weights["embeddings.position_embedding.weight"] = table
    resized.load_state_dict(weights, strict=True)
    log.warning(
        "CLIP tower resized from %d px to %d px: position embeddings interpolated (%dx%d -> %dx%d patches, bicubic); "
        "the tower was not trained at %d px (a tower trained there, e.g. openai/clip-vit-large-patch14-336, is the faithful choice)",
        old, image_size, old // patch, old // patch, grid, grid, image_size,
    )
    param = tower.embeddings.patch_embedding.weight
    return resized.to(device=param.device, dtype=param.dtype).eval()


# ---- loading by spec ---------------------------------------------------------------------------
def load_clip_vision_tower(spec: str, image_size: int | None = None) -> CLIPVisionModel:
    """The ``CLIPVisionModel`` named by ``spec`` (the value of ``model.vision_weights``), float32 on CPU, eval mode.

    Args:
        spec: a transformers CLIP folder or hub id, ``open_clip:<folder>``, or ``open_clip:<architecture>@<weights>``
            (see the module docstring). Files are checked before anything is loaded.
        image_size: the image side the model will see; None keeps the checkpoint's. A different size interpolates
            the position embeddings (``resize_clip_vision_tower``) and logs a warning.

    Raises:
        VisionTowerError: nothing at the path, a folder of the wrong kind, a hub id neither cached nor reachable,
            an image size the patch size does not divide.
        ClipConversionError: an open_clip tower with features ``CLIPVisionModel`` lacks.
    """
    spec = (spec or "").strip()
    if not spec:
        raise VisionTowerError(f"{PARAM} is empty: name a CLIP folder, a hub id, open_clip:<folder> or open_clip:<architecture>@<weights>")
    if image_size is not None and image_size <= 0:
        raise VisionTowerError(f"image_size must be positive, got {image_size}")
    tower = _load_open_clip(spec) if spec.startswith(OPEN_CLIP) else _load_transformers(spec)
    if image_size is not None and image_size != tower.config.image_size:
        tower = resize_clip_vision_tower(tower, image_size)
    log.info("CLIP vision tower from %s: %d px, %d patches of %d px, %d layers", spec, tower.config.image_size,
             (tower.config.image_size // tower.config.patch_size) ** 2, tower.config.patch_size, tower.config.num_hidden_layers)
    return tower


def _open_clip_spec(spec: str) -> ClipSpec:
    """``open_clip:...`` as vision.py's ``ClipSpec``, its files checked (nothing imported, nothing loaded)."""
    rest = spec[len(OPEN_CLIP) :].strip().removeprefix(LOCAL_DIR)  # local-dir: is how open_clip itself spells a folder
    if rest.startswith("hf-hub:"):
        clip = ClipSpec(rest)  # open_clip's own hub schema: its cache or the network
    elif "@" in rest and not Path(rest).expanduser().is_dir():
        architecture, _, weights = rest.partition("@")  # architecture names never hold "@"; file paths may
        if not architecture or not weights:
            raise VisionTowerError(
                f"{PARAM}={spec!r}: write open_clip:<architecture>@<weights file>, e.g. open_clip:ViT-L-14-quickgelu@/models/vit-l-14.pt"
            )
        clip = ClipSpec(architecture.strip(), weights.strip())
    else:
        folder = Path(rest).expanduser()
        if not folder.is_dir():
            raise VisionTowerError(
                f"{PARAM}={spec!r}: no open_clip folder at {folder} "
                f"(looked for open_clip_config.json and one of {', '.join(WEIGHT_FILES)}); "
                "for a built-in architecture write open_clip:<architecture>@<weights file>"
            )
        clip = ClipSpec(f"{LOCAL_DIR}{folder}")
    try:
        local = clip.local_weight_file()  # raises for a folder without its config or weights, or a weights path that is not there
    except VisionModelError as err:
        raise VisionTowerError(f"{PARAM}={spec!r}: {err}") from err
    if local is None and clip.weights and not _could_be_a_tag(clip.weights):
        raise VisionTowerError(f"{PARAM}={spec!r}: weights file {clip.weights} does not exist")
    return clip


def _could_be_a_tag(weights: str | None) -> bool:
    """An open_clip pretrained tag (``openai``, ``laion2b_s32b_b82k``) rather than a file name."""
    return bool(weights) and "/" not in weights and "." not in weights


def _load_open_clip(spec: str) -> CLIPVisionModel:
    clip = _open_clip_spec(spec)
    try:
        import open_clip
    except ImportError as err:
        raise VisionTowerError(f"{PARAM}={spec!r} needs open_clip: pip install -e '.[vision]' ({err})") from err
    named_by_schema = clip.model.startswith(("hf-hub:", LOCAL_DIR))  # open_clip finds those weights itself
    if not named_by_schema and clip.model.replace("/", "-") not in open_clip.list_models():
        raise VisionTowerError(f"{PARAM}={spec!r}: open_clip has no architecture {clip.model!r} (see open_clip.list_models())")
    local = clip.local_weight_file()
    pretrained = None if named_by_schema else str(local) if local else clip.weights
    try:
        # require_pretrained: a folder or tag that yields no weights must fail here, not give a random tower
        model = open_clip.create_model(clip.model, pretrained=pretrained, device="cpu", require_pretrained=True)
    except Exception as err:  # open_clip raises RuntimeError/ValueError/OSError/FileNotFoundError for configs and weights
        raise VisionTowerError(f"{PARAM}={spec!r}: open_clip cannot load {clip.model} with weights {clip.weights or local}: {err}") from err
    try:
        return open_clip_to_clip_vision(model.visual).float()
    except ClipConversionError as err:
        raise ClipConversionError(f"{PARAM}={spec!r}: {err}") from err


def _load_transformers(spec: str) -> CLIPVisionModel:
    folder = Path(spec).expanduser()
    if folder.is_dir():
        _check_transformers_folder(folder, spec)
        return _from_pretrained(str(folder), spec, local_files_only=True)
    if folder.exists():
        raise VisionTowerError(f"{PARAM}={spec!r} is a file: name its folder (config.json + weights), or open_clip:<architecture>@{spec}")
    if not HUB_ID.match(spec):
        raise VisionTowerError(f"{PARAM}={spec!r}: no folder {folder} (looked for {folder / 'config.json'} and its weights)")
    return _from_pretrained(spec, spec, local_files_only=_hub_cached(spec, folder))


def _check_transformers_folder(folder: Path, spec: str) -> None:
    """A transformers CLIP folder with weights, checked from its file names and config.json only."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        hint = f"; it holds open_clip_config.json: write {OPEN_CLIP}{spec}" if (folder / "open_clip_config.json").is_file() else ""
        raise VisionTowerError(f"{PARAM}={spec!r}: {config_file} does not exist (expected a transformers CLIP folder){hint}")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise VisionTowerError(f"{PARAM}={spec!r}: {config_file} is not a readable JSON object: {err}") from err
    if model_type not in CLIP_MODEL_TYPES:
        kinds = " or ".join(CLIP_MODEL_TYPES)
        raise VisionTowerError(f"{PARAM}={spec!r}: {config_file} describes a {model_type!r} model, not CLIP ({kinds})")
    if not any((folder / name).is_file() for name in HF_WEIGHT_FILES):
        raise VisionTowerError(f"{PARAM}={spec!r}: {folder} holds none of {', '.join(HF_WEIGHT_FILES)}")


def _hub_cached(hub_id: str, folder: Path) -> bool:
    """Whether ``hub_id`` is in the Hugging Face cache; when it is not and the hub is offline, a clear error."""
    from huggingface_hub import is_offline_mode, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(hub_id, "config.json")
    except ValueError as err:  # huggingface_hub's HFValidationError: "--", "..", too long
        raise VisionTowerError(f"{PARAM}={hub_id!r}: no local folder {folder}, and not a valid hub id: {err}") from err
    if isinstance(cached, str):
        return True
    if is_offline_mode():
        raise VisionTowerError(
            f"{PARAM}={hub_id!r}: no local folder {folder}, and as a Hugging Face hub id it is not in the HF cache while the hub "
            f"is offline (HF_HUB_OFFLINE): download it where the hub is reachable (hf download {hub_id}) and set {PARAM} to that folder"
        )
    return False  # not cached, hub allowed: transformers downloads (and retries for ~30 s when there is no network)


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Silence transformers' table of unused tensors: for a full CLIPModel it lists the whole text tower, which is the
    point; ``_from_pretrained`` checks missing and unexpected tensors itself and raises on what matters."""
    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _from_pretrained(source: str, spec: str, local_files_only: bool) -> CLIPVisionModel:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
        if config.model_type not in CLIP_MODEL_TYPES:
            raise VisionTowerError(f"{PARAM}={spec!r} is a {config.model_type!r} model, not CLIP ({' or '.join(CLIP_MODEL_TYPES)})")
        with _quiet_load_report():
            # CLIPVisionModel reads a full CLIPModel checkpoint too: transformers strips its vision_model. prefix
            tower, info = CLIPVisionModel.from_pretrained(
                source, dtype=torch.float32, local_files_only=local_files_only, output_loading_info=True
            )
    except VisionTowerError:
        raise
    except Exception as err:  # OSError (not found / no network), ValueError, RuntimeError (size mismatch) from transformers
        raise VisionTowerError(f"{PARAM}={spec!r}: transformers cannot load a CLIP vision tower from {source}: {err}") from err
    missing = sorted(info["missing_keys"])
    if missing:
        raise VisionTowerError(
            f"{PARAM}={spec!r}: the checkpoint lacks {len(missing)} tower tensors (they would stay random): {', '.join(missing[:8])}"
        )
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith(NOT_THE_TOWER) and not k.endswith("position_ids"))
    if unexpected:
        raise VisionTowerError(f"{PARAM}={spec!r}: the checkpoint has tensors a CLIP vision tower never uses: {', '.join(unexpected[:8])}")
    return tower.eval()
