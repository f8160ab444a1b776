"""The model: image tokens vs features, the training loss vs transformers' own, what trains, saving for plain
transformers (loaded where glassllava cannot be imported), the paper presets from local weights, and the FLOPs formula."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from glassllava.conversation import collate, encode
from glassllava.model import (
    CLIP_VIT_L14,
    IMAGE_TOKEN,
    OPENLLAMA_7B,
    ModelWeightsMissing,
    apply_lora,
    build_model,
    check_weights,
    save_model,
)
from glassllava.params import ModelParams
from glassllava.train import AnswerLoss, lm_matmul_params, sample_flops, tower_features

QUESTIONS = ["What does this SEM image show?", "Are there cracks?"]
ANSWERS = ["The image shows pores and cracks.", "No."]


def images() -> list[Image.Image]:
    return [Image.effect_noise((50, 40), 60).convert("RGB"), Image.new("RGB", (30, 30), (200, 10, 10))]


def padded_batch(built):
    """Two conversations of different lengths (right-padded), with their images as pixel values."""
    tok, chat, n = built.tokenizer, built.preset.chat, built.model.config.image_seq_length
    encs = [encode(tok, chat, QUESTIONS, ANSWERS, image_tokens=n, max_len=512),
            encode(tok, chat, QUESTIONS[1:], ANSWERS[1:], image_tokens=n, max_len=512)]
    batch = collate([(e, f"sha{i}") for i, e in enumerate(encs)], tok.pad_token_id)
    pixels = built.processor.image_processor(images(), return_tensors="pt")["pixel_values"]
    return batch, pixels


# ---- tiny local weights for the paper presets (notes/training.md §6: offline tokenizer A) --------
def save_paper_weights(root: Path) -> tuple[Path, Path]:
    """A tiny CLIP vision tower and a tiny Llama with a byte-level BPE tokenizer, saved as Hugging Face folders."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = ["A chat between a curious user and a glass scientist who reads SEM micrographs.", *QUESTIONS, *ANSWERS,
             "USER: ASSISTANT: Yes. No. The micrograph shows dendritic crystals, bubbles and pores."] * 4
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                  additional_special_tokens=[IMAGE_TOKEN])
    llm, clip = root / "llm", root / "clip"
    torch.manual_seed(0)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(text).save_pretrained(llm)
    tok.save_pretrained(llm)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                              patch_size=14)
    CLIPVisionModel(vision).save_pretrained(clip)
    return clip, llm


@pytest.fixture(scope="session")
def paper_weights(tmp_path_factory) -> tuple[Path, Path]:
    return save_paper_weights(tmp_path_factory.mktemp("paper-weights"))


def paper_params(paper_weights, preset: str = "paper", **extra) -> ModelParams:
    clip, llm = paper_weights
    return ModelParams(preset=preset, vision_weights=str(clip), llm_weights=str(llm), image_size=28, **extra)


@pytest.fixture(scope="module")
def tiny():
    return build_model(ModelParams(preset="tiny"))


@pytest.fixture(scope="module")
def paper(paper_weights):
    return build_model(paper_params(paper_weights))


# ---- image tokens and features ------------------------------------------------------------------
@pytest.mark.parametrize("change", [-1, +1])
def test_forward_refuses_image_tokens_that_do_not_match_the_features(tiny, change):
    batch, pixels = padded_batch(tiny)
    ids = batch.input_ids.clone()
    image = tiny.image_token_id
    row = ids[0].tolist()
    if change < 0:
        ids[0, row.index(image)] = tiny.tokenizer.convert_tokens_to_ids("Ġthe") if "Ġthe" in tiny.tokenizer.get_vocab() else 5
    else:
        ids[0, len(row) - 2] = image  # one image token too many, inside the last answer
    with torch.no_grad():
        tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=pixels)  # as built: fine
        with pytest.raises(ValueError, match="Image features and image tokens do not match"):
            tiny.model(input_ids=ids, attention_mask=batch.attention_mask, pixel_values=pixels)


# ---- the training loss ---------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny", "paper"])
def test_answer_loss_on_cached_tower_features_equals_the_models_own_loss(which, request):
    built = request.getfixturevalue(which)
    batch, pixels = padded_batch(built)
    model = built.model
    with torch.no_grad():
        own = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=pixels, labels=batch.labels).loss
        features = tower_features(model, pixels)
        ours = AnswerLoss(model)(batch.input_ids, batch.attention_mask, batch.labels, features)
    n = model.config.image_seq_length
    assert features.shape[:2] == (2, n)
    assert torch.isfinite(own) and abs(float(own) - float(ours)) < 1e-5


def test_the_vision_tower_gets_no_gradient_and_the_projector_does(tiny):
    model = tiny.model
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.training
    batch, pixels = padded_batch(tiny)
    model.zero_grad(set_to_none=True)
    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=pixels, labels=batch.labels).loss.backward()
    assert all(p.grad is None for p in tower.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    model.zero_grad(set_to_none=True)
    AnswerLoss(model)(batch.input_ids, batch.attention_mask, batch.labels, tower_features(model, pixels)).backward()
    assert all(p.grad is None for p in tower.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    model.zero_grad(set_to_none=True)


# ---- saved for plain transformers -----------------------------------------------------------------
LOAD_WITHOUT_GLASSLLAVA = """
import json, sys
# the editable install's finder would import glassllava from anywhere: drop it, so only plain transformers is left
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in repr(f)]
sys.path_hooks = [h for h in sys.path_hooks if "__editable__" not in repr(h)]
sys.path_importer_cache.clear()
try:
    import glassllava
    importable = True
except ImportError:
    importable = False
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained(sys.argv[1]).eval()
processor = AutoProcessor.from_pretrained(sys.argv[1])
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What does this SEM image show?"}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
enc = processor(images=[Image.open(sys.argv[2]).convert("RGB")], text=[text], return_tensors="pt")
out = model.generate(**enc, max_new_tokens=3, do_sample=False)
print(json.dumps({"glassllava_importable": importable, "glassllava_loaded": any(m.startswith("glassllava") for m in sys.modules),
                  "class": type(model).__name__, "prompt_ids": enc["input_ids"][0].tolist(),
                  "new_ids": out[0, enc["input_ids"].shape[1]:].tolist(),
                  "eos": model.generation_config.eos_token_id}))
"""


@pytest.mark.slow
def test_a_saved_model_loads_and_generates_with_plain_transformers_in_a_process_without_glassllava(tiny, tmp_path):
    out = save_model(tiny, tmp_path / "model", generation={"max_new_tokens": 7}, provenance={"preset": "tiny"})
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "processor_config.json", "tokenizer.json",
            "chat_template.jinja"} <= names
    assert json.loads((out / "glassllava.json").read_text()) == {"preset": "tiny"}
    image = tmp_path / "micrograph.png"
    Image.effect_noise((48, 40), 50).convert("RGB").save(image)
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_GLASSLLAVA, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(script), str(out), str(image)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["glassllava_importable"] is False and got["glassllava_loaded"] is False
    assert got["class"] == "FastVlmForConditionalGeneration" and got["eos"] == [tiny.tokenizer.eos_token_id]
    # the same prompt and the same greedy tokens as the model in memory
    from glassllava.generate import prompt_text

    enc = tiny.processor(images=[Image.open(image).convert("RGB")], text=[prompt_text(tiny.processor, "What does this SEM image show?")],
                         return_tensors="pt")
    assert got["prompt_ids"] == enc["input_ids"][0].tolist()
    assert got["prompt_ids"].count(tiny.image_token_id) == tiny.model.config.image_seq_length
    tiny.model.eval()
    with torch.no_grad():
        mine = tiny.model.generate(**enc, max_new_tokens=3, do_sample=False)[0, enc["input_ids"].shape[1]:].tolist()
    assert 1 <= len(got["new_ids"]) <= 3 and got["new_ids"] == mine


# ---- the paper presets -------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["paper", "paper-lora"])
def test_paper_presets_without_weights_fail_naming_both_params(preset, tmp_path):
    with pytest.raises(ModelWeightsMissing, match=r"model\.vision_weights and model\.llm_weights"):
        check_weights(ModelParams(preset=preset))
    with pytest.raises(ModelWeightsMissing, match=r"set model\.llm_weights in params"):
        check_weights(ModelParams(preset=preset, vision_weights="openai/clip-vit-large-patch14"))
    with pytest.raises(ModelWeightsMissing, match=r"no config\.json"):
        check_weights(ModelParams(preset=preset, vision_weights="x", llm_weights=str(tmp_path)))
    with pytest.raises(ModelWeightsMissing):
        build_model(ModelParams(preset=preset))
    check_weights(ModelParams(preset="tiny"))  # nothing to check


def test_the_paper_preset_from_local_weights_is_a_llava_with_image_size_over_14_squared_tokens(paper, paper_weights):
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    model = paper.model
    assert type(model) is LlavaForConditionalGeneration
    assert model.config.image_seq_length == (28 // 14) ** 2 == 4
    assert model.config.vision_feature_layer == -2 and model.config.vision_feature_select_strategy == "default"
    clip, llm = paper_weights
    assert paper.sources == {"vision": str(clip), "llm": str(llm)}
    tower = load_file(str(clip / "model.safetensors"))
    key = next(k for k in tower if k.endswith("encoder.layers.1.mlp.fc1.weight"))
    assert torch.equal(model.model.vision_tower.state_dict()["encoder.layers.1.mlp.fc1.weight"], tower[key])
    lm = load_file(str(llm / "model.safetensors"))
    assert torch.equal(model.model.language_model.layers[1].mlp.down_proj.weight, lm["model.layers.1.mlp.down_proj.weight"])
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    # the processor writes as many <image> tokens as the tower gives features (CLS dropped), and the forward agrees
    enc = paper.processor(images=images()[:1], text=[paper.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}], add_generation_prompt=True, tokenize=False)],
        return_tensors="pt")
    assert enc["input_ids"][0].tolist().count(paper.image_token_id) == 4 and enc["pixel_values"].shape[-2:] == (28, 28)
    with torch.no_grad():
        assert torch.isfinite(model(**enc).logits).all()


def test_a_larger_image_size_gives_more_image_tokens_with_interpolated_positions(paper_weights):
    clip, llm = paper_weights
    built = build_model(ModelParams(preset="paper", vision_weights=str(clip), llm_weights=str(llm), image_size=56))
    assert built.model.config.image_seq_length == (56 // 14) ** 2 == 16
    assert built.model.config.vision_config.image_size == 56
    batch, pixels = padded_batch(built)
    assert pixels.shape[-2:] == (56, 56) and batch.input_ids[0].tolist().count(built.image_token_id) == 16
    with torch.no_grad():
        loss = built.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=pixels, labels=batch.labels).loss
    assert torch.isfinite(loss)


def test_the_paper_lora_preset_trains_only_lora_and_the_projector(paper_weights, tmp_path):
    params = paper_params(paper_weights, "paper-lora", lora_r=4, lora_alpha=8)
    built = build_model(params)
    base_projector = {k: v.clone() for k, v in built.model.model.multi_modal_projector.state_dict().items()}
    built.model = apply_lora(built.model, params)
    trainable = [n for n, p in built.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or ".multi_modal_projector.modules_to_save." in n for n in trainable)
    assert sum("lora_A" in n for n in trainable) == sum("lora_B" in n for n in trainable) == 2 * 7  # 2 layers x q k v o gate up down
    assert sum("multi_modal_projector" in n for n in trainable) == 4  # linear_1, linear_2: weight and bias
    assert not any("vision_tower" in n or "embed_tokens" in n for n in trainable)
    # merged on save: plain transformers loads a Llava without adapters
    from transformers import AutoModelForImageTextToText

    save_model(built, tmp_path / "lora-model")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "lora-model")
    assert type(loaded).__name__ == "LlavaForConditionalGeneration" and not any("lora" in n for n, _ in loaded.named_parameters())
    assert all(torch.equal(loaded.model.multi_modal_projector.state_dict()[k], v) for k, v in base_projector.items())


# ---- FLOPs (notes/training.md §3.1, §4) -------------------------------------------------------------
def test_the_flops_formula_reproduces_the_notes_for_the_7b_model():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    with torch.device("meta"):  # OpenLLaMA-7B + ViT-L/14-336 shapes, no memory
        model = LlavaForConditionalGeneration(LlavaConfig(vision_config=CLIPVisionConfig(image_size=336, **CLIP_VIT_L14),
                                                          text_config=LlamaConfig(**OPENLLAMA_7B), image_token_index=32000,
                                                          image_seq_length=576, vision_feature_layer=-2))
    n = lm_matmul_params(model)  # N: embeddings excluded, lm_head included (notes §4)
    assert abs(n - 6.607e9) / 6.607e9 < 1e-3
    layers, width = OPENLLAMA_7B["num_hidden_layers"], OPENLLAMA_7B["hidden_size"]
    n_vis = sum(p.numel() for p in model.model.vision_tower.parameters())
    n_proj = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert abs(n_vis - 303.5e6) < 1e6 and abs(n_proj - 21e6) < 1e5

    def vision(t_v):  # F_vis + F_proj of notes §4 (the frozen tower, forward only, once per image)
        return 2 * n_vis * t_v + 4 * 24 * 1024 * t_v**2 + 6 * n_proj

    for tokens, image_tokens, tflop in ((776, 577, 32.2), (456, 257, 18.6)):  # 336 px and 224 px rows of §3.1
        llm = sample_flops(tokens, n_params=n, layers=layers, width=width, trains_lm=True)
        assert llm == 6 * n * tokens + 12 * layers * width * tokens**2
        assert abs(llm / 1e12 - tflop) / tflop < 0.03  # the language model alone: within 3 %
        assert abs((llm + vision(image_tokens)) / 1e12 - tflop) / tflop < 0.005  # with the tower and projector: the notes' number
    frozen = sample_flops(776, n_params=n, layers=layers, width=width, trains_lm=False)
    assert frozen == 4 * n * 776 + 8 * layers * width * 776**2
