"""open_clip ViT → transformers CLIPVisionModel: same features layer by layer, every load path of
``load_clip_vision_tower`` agreeing, clear refusals, and the converted tower inside a tiny Llava."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from open_clip.transformer import QuickGELU, VisionTransformer  # noqa: E402
from torch import nn  # noqa: E402
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

from glassllava.clip_convert import (  # noqa: E402
    ClipConversionError,
    VisionTowerError,
    load_clip_vision_tower,
    open_clip_to_clip_vision,
    resize_clip_vision_tower,
)
from glassllava.vision import VisionModelError  # noqa: E402

IMAGE, PATCH, WIDTH, HEADS = 28, 14, 32, 2
LAYERS = 3  # three, not two: with two, block -2 is also block 0, and an index convention off by one could still pass
TOKENS = (IMAGE // PATCH) ** 2
TOL = dict(atol=1e-5, rtol=1e-5)
ARCH = "glassllava-test-tiny-vit"  # registered with open_clip for the <arch>@<file> form
TINY_CLIP = {
    "embed_dim": 16,
    "quick_gelu": True,  # as OpenAI's CLIP
    "vision_cfg": {"image_size": IMAGE, "patch_size": PATCH, "width": WIDTH, "layers": LAYERS, "head_width": WIDTH // HEADS,
                   "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def _jitter(model: nn.Module, seed: int) -> nn.Module:
    """open_clip starts biases at 0 and norms at (1, 0): jitter every tensor, so a swapped q/k bias or a missed
    norm cannot hide behind equal initial values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def tiny_visual(seed: int = 0, **overrides) -> VisionTransformer:
    torch.manual_seed(seed)
    kwargs = dict(image_size=IMAGE, patch_size=PATCH, width=WIDTH, layers=LAYERS, heads=HEADS, mlp_ratio=2.0, output_dim=16) | overrides
    return _jitter(VisionTransformer(**kwargs), seed)


def pixels(size: int = IMAGE, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(size))


def open_clip_penultimate(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LLaVA's features the open_clip way (training.md §2.3): block -2, class token dropped, (B, patches, width)."""
    out = visual.forward_intermediates(x, indices=[-2], stop_early=True, intermediates_only=True, output_fmt="NLC")
    return out["image_intermediates"][0]


def hidden_states(tower: CLIPVisionModel, x: torch.Tensor, **kwargs) -> tuple[torch.Tensor, ...]:
    return tower(pixel_values=x, output_hidden_states=True, **kwargs).hidden_states


# ---- conversion --------------------------------------------------------------------------------
@pytest.mark.parametrize(("act_layer", "hidden_act"), [(nn.GELU, "gelu"), (QuickGELU, "quick_gelu")])
def test_converted_tower_gives_open_clip_features_at_every_layer(act_layer, hidden_act):
    visual = tiny_visual(act_layer=act_layer)
    tower = open_clip_to_clip_vision(visual)
    config = tower.config
    shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size)
    assert shape == (WIDTH, LAYERS, HEADS, 2 * WIDTH)
    assert (config.image_size, config.patch_size, config.hidden_act, config.layer_norm_eps) == (IMAGE, PATCH, hidden_act, 1e-5)

    x = pixels()
    with torch.no_grad():
        hf = hidden_states(tower, x)
        penultimate = open_clip_penultimate(visual, x)
        every = visual.forward_intermediates(
            x, indices=list(range(LAYERS)), intermediates_only=True, output_fmt="NLC", output_extra_tokens=True
        )
    assert len(hf) == LAYERS + 1  # [0] = embeddings after pre_layrnorm, [k + 1] = output of block k
    assert penultimate.shape == (2, TOKENS, WIDTH)
    torch.testing.assert_close(hf[-2][:, 1:], penultimate, **TOL)  # Llava's vision_feature_layer=-2, "default" strategy
    for k in range(LAYERS):
        torch.testing.assert_close(hf[k + 1][:, 1:], every["image_intermediates"][k], **TOL)
        torch.testing.assert_close(hf[k + 1][:, :1], every["image_intermediates_prefix"][k], **TOL)  # the class token too


def test_last_layer_after_ln_post_and_pooled_feature_match():
    visual = tiny_visual(act_layer=QuickGELU)
    tower = open_clip_to_clip_vision(visual)
    x = pixels()
    with torch.no_grad():
        out = tower(pixel_values=x)
        last = visual.forward_intermediates(x, indices=[-1], normalize_intermediates=True, output_fmt="NLC", output_extra_tokens=True)
        embedding = visual(x)
    # open_clip applies ln_post to the last layer; CLIPVisionModel's last_hidden_state is before post_layernorm
    torch.testing.assert_close(tower.post_layernorm(out.last_hidden_state)[:, 1:], last["image_intermediates"][0], **TOL)
    torch.testing.assert_close(out.pooler_output, last["image_intermediates_prefix"][0][:, 0], **TOL)
    # the dropped proj is the only difference from open_clip's image embedding
    torch.testing.assert_close(out.pooler_output @ visual.proj, embedding, **TOL)
    torch.testing.assert_close(last["image_features"], embedding, **TOL)


def test_custom_block_without_extras_and_a_whole_clip_convert_too():
    visual = tiny_visual(block_type="custom")  # open_clip's own Attention instead of nn.MultiheadAttention
    x = pixels()
    with torch.no_grad():
        torch.testing.assert_close(hidden_states(open_clip_to_clip_vision(visual), x)[-2][:, 1:], open_clip_penultimate(visual, x), **TOL)
    clip = _jitter(open_clip.CLIP(**TINY_CLIP), 1)
    with torch.no_grad():
        converted = hidden_states(open_clip_to_clip_vision(clip), x)[-2][:, 1:]
        torch.testing.assert_close(converted, open_clip_penultimate(clip.visual, x), **TOL)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (dict(ls_init_value=1e-5), "layer scale"),
        (dict(attentional_pool=True), "attentional pooling"),
        (dict(patch_dropout=0.5), "patch dropout"),
        (dict(no_ln_pre=True), "ln_pre is Identity"),
        (dict(pool_type="avg"), "pool_type='avg'"),
        (dict(qk_norm=True), "q/k norm"),
        (dict(act_layer=nn.SiLU), "MLP activation SiLU"),
    ],
)
def test_unsupported_open_clip_variants_are_refused_with_the_reason(overrides, reason):
    with pytest.raises(ClipConversionError, match="cannot be converted faithfully") as err:
        open_clip_to_clip_vision(tiny_visual(**overrides))
    assert reason in str(err.value)
    assert isinstance(err.value, VisionModelError)


def test_pruned_norm_resnet_and_stray_tensors_are_refused():
    visual = tiny_visual()
    visual.prune_intermediate_layers(indices=[-2], prune_norm=True)  # ln_post -> Identity, last block dropped
    with pytest.raises(ClipConversionError, match="ln_post is Identity"):
        open_clip_to_clip_vision(visual)

    from open_clip.modified_resnet import ModifiedResNet

    with pytest.raises(ClipConversionError, match="ModifiedResNet is not an open_clip VisionTransformer"):
        open_clip_to_clip_vision(ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, image_size=32, width=8))

    visual = tiny_visual()
    visual.register_parameter("adapter", nn.Parameter(torch.zeros(4)))  # a tensor the mapping does not know
    visual.transformer.resblocks[1].attn.out_proj.bias = None  # a tensor CLIPVisionModel needs and cannot get
    with pytest.raises(ClipConversionError) as err:
        open_clip_to_clip_vision(visual)
    assert "no place in CLIPVisionModel: adapter" in str(err.value)
    assert "left unfilled: encoder.layers.1.self_attn.out_proj.bias" in str(err.value)


# ---- every load path ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_towers(tmp_path_factory):
    """One tiny open_clip CLIP saved four ways; yields (reference open_clip model, {form: spec})."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("towers")
    clip = _jitter(open_clip.CLIP(**TINY_CLIP), 2)
    weights = {k: v.contiguous() for k, v in clip.state_dict().items()}

    oc_dir = root / "open_clip_tiny"
    oc_dir.mkdir()
    (oc_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    save_file(weights, str(oc_dir / "open_clip_model.safetensors"))

    arch_file = root / f"{ARCH}.json"
    arch_file.write_text(json.dumps(TINY_CLIP))
    checkpoint = root / "tiny_clip.safetensors"
    save_file(weights, str(checkpoint))
    open_clip.add_model_config(arch_file)

    tower = open_clip_to_clip_vision(clip.visual)
    hf_dir = root / "clip_vision"
    tower.save_pretrained(hf_dir)

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    full = CLIPModel(CLIPConfig(vision_config=tower.config.to_dict(), text_config=text, projection_dim=16))
    full.vision_model.load_state_dict(tower.state_dict(), strict=True)
    full_dir = root / "clip_full"
    full.save_pretrained(full_dir)

    specs = {
        "transformers CLIPVisionModel folder": str(hf_dir),
        "transformers CLIPModel folder": str(full_dir),
        "open_clip folder": f"open_clip:{oc_dir}",
        "open_clip arch@file": f"open_clip:{ARCH}@{checkpoint}",
    }
    yield clip, specs
    open_clip.factory._MODEL_CONFIGS.pop(ARCH, None)  # leave open_clip's registry as found
    open_clip.factory._MODEL_CONFIG_PATHS.remove(arch_file)


def test_every_load_path_gives_identical_features(saved_towers):
    clip, specs = saved_towers
    x = pixels()
    with torch.no_grad():
        reference = open_clip_penultimate(clip.visual, x)
        towers = {form: load_clip_vision_tower(spec) for form, spec in specs.items()}
        states = {form: hidden_states(tower, x) for form, tower in towers.items()}
    first = states["open_clip folder"]
    for form, state in states.items():
        assert isinstance(towers[form], CLIPVisionModel) and not towers[form].training, form
        torch.testing.assert_close(state[-2][:, 1:], reference, **TOL, msg=lambda m, form=form: f"{form}: {m}")
        for a, b in zip(state, first):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_image_size_interpolates_position_embeddings_as_transformers_does(saved_towers):
    _, specs = saved_towers
    spec = specs["transformers CLIPVisionModel folder"]
    native = load_clip_vision_tower(spec)
    assert load_clip_vision_tower(spec, image_size=IMAGE).config.image_size == IMAGE
    bigger = load_clip_vision_tower(spec, image_size=42)  # 3x3 patches from a 2x2 grid
    assert bigger.config.image_size == 42
    assert bigger.embeddings.position_embedding.weight.shape == (3 * 3 + 1, WIDTH)
    x = pixels(42)
    with torch.no_grad():
        for a, b in zip(hidden_states(bigger, x), hidden_states(native, x, interpolate_pos_encoding=True)):
            torch.testing.assert_close(a, b, **TOL)
    with pytest.raises(VisionTowerError, match="not a positive multiple of the tower's patch size 14"):
        load_clip_vision_tower(spec, image_size=30)
    assert resize_clip_vision_tower(native, IMAGE) is native


def test_missing_or_wrong_weights_fail_clearly_before_loading(saved_towers, tmp_path, monkeypatch):
    _, specs = saved_towers

    def must_not_run(*args, **kwargs):
        raise AssertionError("heavy work started before the spec was checked")

    monkeypatch.setattr(open_clip, "create_model", must_not_run)
    monkeypatch.setattr(CLIPVisionModel, "from_pretrained", must_not_run)
    empty = tmp_path / "empty"
    empty.mkdir()
    oc_dir = specs["open_clip folder"].removeprefix("open_clip:")
    cases = {
        str(tmp_path / "nowhere"): str(tmp_path / "nowhere" / "config.json"),
        f"open_clip:{tmp_path / 'nowhere'}": "open_clip_config.json",
        f"open_clip:{ARCH}@{tmp_path / 'nowhere.safetensors'}": str(tmp_path / "nowhere.safetensors"),
        f"open_clip:{empty}": "open_clip_config.json",
        str(empty): str(empty / "config.json"),
        oc_dir: f"write open_clip:{oc_dir}",  # an open_clip folder without the prefix
        "": "is empty",
        "open_clip:no-such-architecture@openai": "no architecture 'no-such-architecture'",
    }
    for spec, looked_for in cases.items():
        with pytest.raises(VisionTowerError) as err:
            load_clip_vision_tower(spec)
        assert "model.vision_weights" in str(err.value), spec
        assert looked_for in str(err.value), (spec, str(err.value))


def test_hub_id_offline_and_not_cached_fails_clearly(monkeypatch):
    import huggingface_hub

    monkeypatch.setitem(huggingface_hub.is_offline_mode.__globals__, "HF_HUB_OFFLINE", True)
    with pytest.raises(VisionTowerError, match=r"model.vision_weights='glassllava-test/no-such-clip'.*not in the HF cache.*offline"):
        load_clip_vision_tower("glassllava-test/no-such-clip")


def test_non_clip_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model"}))
    with pytest.raises(VisionTowerError, match="describes a 'siglip_vision_model' model, not CLIP"):
        load_clip_vision_tower(str(tmp_path))


# ---- inside Llava ------------------------------------------------------------------------------
def test_converted_tower_runs_in_llava_and_round_trips(tmp_path):
    visual = tiny_visual(act_layer=QuickGELU, seed=3)
    tower = open_clip_to_clip_vision(visual)
    image_token = 63
    text = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0)
    config = LlavaConfig(vision_config=tower.config, text_config=text, image_token_index=image_token, image_seq_length=TOKENS,
                         vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    assert isinstance(model.model.vision_tower, CLIPVisionModel)

    x = pixels(batch=1)
    ids = torch.tensor([[1, 5, *[image_token] * TOKENS, 7, 9]])
    with torch.no_grad():
        features = model.model.get_image_features(
            pixel_values=x, vision_feature_layer=-2, vision_feature_select_strategy="default"
        ).pooler_output
        torch.testing.assert_close(features[0], model.model.multi_modal_projector(open_clip_penultimate(visual, x))[0], **TOL)
        out = model(input_ids=ids, pixel_values=x, labels=ids)
        assert out.logits.shape == (1, ids.shape[1], 64) and torch.isfinite(out.loss)
        with pytest.raises(ValueError, match="Image features and image tokens do not match"):
            model(input_ids=torch.tensor([[1, 5, *[image_token] * (TOKENS - 1), 7]]), pixel_values=x)  # one image token short

    model.save_pretrained(tmp_path / "llava")
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava", dtype=torch.float32).eval()
    assert isinstance(reloaded.model.vision_tower, CLIPVisionModel)
    assert reloaded.config.vision_config.hidden_act == "quick_gelu"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, pixel_values=x).logits, out.logits, atol=1e-6, rtol=1e-6)
