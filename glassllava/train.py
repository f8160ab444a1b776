"""The training recipe: dataset shards in, a trained model (Hugging Face layout) and a report out.

Run it under torchrun, which the ``train`` stage flow does:

    torchrun --standalone --nproc-per-node 1 -m glassllava.train --params params.yaml --data data

It reads like a torchtune recipe, top to bottom: validate the params and fail before loading anything
heavy; set up the model, the data (conversations → ids and labels, image features cached once), the
optimizer; then two stages — stage 1 trains the projector alone on the alignment set (image + caption),
stage 2 tunes projector and language model (full, or LoRA adapters) on the instruction conversations —
each with a warm-up + cosine schedule, a resumable checkpoint every ``checkpoint_every_minutes`` (or
``checkpoint_every_steps``) and the eval loss after every epoch; finally rank 0 saves the model, writes ``data/train/report.json`` and
``loss.csv``, logs the run to MLflow and registers the model with the alias ``candidate``.

- **Frozen tower, features once.** The vision tower is frozen, so each image's tower output is computed
  once, stored under ``data/train/features/<tower key>/<image sha>.pt`` and reused by every epoch and run;
  epochs never run the tower. The projector, which trains, runs on the cached features.
- **Loss on answers only.** Logits are computed only where a label is supervised (answers + EOS), which
  never materialises the full (B, T, vocab) logits; the mean is the same as transformers' causal-LM loss.
- **Precision.** bf16 autocast with fp32 master weights (pure bf16 weights lose lr 1e-5 updates to
  rounding) on GPUs and on CPUs with native bf16 matmuls (AVX512-BF16 or AMX: measured 2.7x the fp32
  matmul rate and 1.6x the training step of the small preset on 2 cores); fp32 on other CPUs.
- **Exact resume.** A checkpoint holds the trainable weights, optimizer and scheduler state, every RNG,
  and the position in the (seeded, per-epoch) batch order; it is written atomically with its sha256 and
  verified before it is loaded. A run killed with SIGKILL resumes and ends with the weights an
  uninterrupted run ends with.
- **Distributed.** Under torchrun with more than one process: DDP (gloo on CPU, NCCL on GPU), or FSDP2
  ``fully_shard`` per decoder layer (``train.distributed: fsdp``). Every rank sees the same batch order and
  takes its share; only rank 0 logs, saves and registers.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from glassllava.conversation import IGNORE, Batch, ConversationError, Encoded, collate, encode, pack
from glassllava.files import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file, sha256_json
from glassllava.model import PRESETS, Built, apply_lora, build_model, check_weights, computes_bf16_natively, save_model
from glassllava.params import DataLayout, Params, load_params_or_exit
from glassllava.schemas import CONVERSATIONS_SCHEMA, read_table

log = logging.getLogger(__name__)

RECIPE_VERSION = "1"
# The GlassLLaVA paper's stage-2 recipe (arXiv 2309.12460): batch 4, lr 1e-5, cosine, 28 epochs; warm-up 3 % as LLaVA.
PAPER_RECIPE = dict(batch_size=4, lr=1e-5, projector_lr=1e-5, schedule="cosine", warmup_ratio=0.03, epochs=28.0, weight_decay=0.0)


class TrainingError(RuntimeError):
    """Training cannot start or go on (the message says why and what to do)."""


# ---- distributed context ------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank, local, world, device)


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        torch.distributed.barrier()


def _all_sum(dist: Dist, values: list[float]) -> list[float]:
    if dist.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(t)
    return t.tolist()


# ---- the effective hyper-parameters ------------------------------------------------------------
def effective_train_params(params: Params):
    """``train`` with the paper's recipe applied when ``train.recipe: paper`` (it wins over the values written)."""
    train = params.train
    if train.recipe == "paper":
        train = train.model_copy(update=PAPER_RECIPE)
    return train


def batch_reading(train, world: int) -> dict:
    """How ``batch_size`` is read, recorded with the run ("batch 4" in the paper can be either)."""
    per_device = train.batch_size if train.batch_reading == "per_device" else max(1, train.batch_size // world)
    if train.batch_reading == "global" and train.batch_size % world:
        raise TrainingError(f"train.batch_size={train.batch_size} (global) does not split over {world} processes")
    micro = per_device // train.grad_accum if per_device % train.grad_accum == 0 else None
    if micro is None or micro == 0:
        raise TrainingError(f"train.grad_accum={train.grad_accum} must divide the per-device batch {per_device}")
    return {"reading": train.batch_reading, "per_device": per_device, "micro_batch": micro, "grad_accum": train.grad_accum,
            "world": world, "global": per_device * world}


# ---- data ---------------------------------------------------------------------------------------
@dataclass
class Sample:
    encoded: Encoded
    image_sha: str
    image_path: str
    conversation_id: str


def read_conversations(layout: DataLayout, split: str) -> list[dict]:
    shards = sorted(layout.dataset.glob(f"{split}-*.parquet"))
    rows: list[dict] = []
    for shard in shards:
        rows += read_table(shard, CONVERSATIONS_SCHEMA).to_pylist()
    return rows


def encode_split(rows: list[dict], built: Built, max_len: int) -> tuple[list[Sample], list[dict]]:
    """Samples for training, and the conversations that could not become one (with the reason)."""
    samples, skipped = [], []
    n = built.model.config.image_seq_length
    for row in rows:
        turns = row["turns"]
        try:
            enc = encode(built.tokenizer, built.preset.chat, [t["question"] for t in turns], [t["answer"] for t in turns], image_tokens=n, max_len=max_len)
        except ConversationError as e:
            skipped.append({"conversation_id": row["conversation_id"], "reason": str(e)})
            continue
        samples.append(Sample(enc, row["image_sha"], row["image_path"], row["conversation_id"]))
    return samples, skipped


def epoch_batches(samples: list[Sample], micro: int, seed: int, epoch: int, world: int) -> list[list[int]]:
    """The batch order of one epoch (same on every rank): shuffled, grouped by length in chunks to cut padding."""
    rng = random.Random(sha256_json([seed, epoch]))
    order = list(range(len(samples)))
    rng.shuffle(order)
    chunk = micro * 16  # group_by_length: sort within chunks of 16 batches, then shuffle the batches
    grouped: list[list[int]] = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i : i + chunk], key=lambda j: len(samples[j].encoded.input_ids))
        grouped += [part[k : k + micro] for k in range(0, len(part), micro)]
    rng.shuffle(grouped)
    if len(grouped) % world:  # every rank takes the same number of batches: wrap around, as DistributedSampler pads
        grouped += grouped[: world - len(grouped) % world]
    return grouped


# ---- image features of the frozen tower ---------------------------------------------------------
def tower_key(built: Built) -> str:
    cfg = built.model.config
    return sha256_json({
        "arch": cfg.model_type, "vision": cfg.vision_config.to_dict(), "layer": getattr(cfg, "vision_feature_layer", -1),
        "select": getattr(cfg, "vision_feature_select_strategy", "full"), "weights": built.sources.get("vision"),
        "image_processor": built.processor.image_processor.to_dict(), "version": RECIPE_VERSION,
    })[:16]


@torch.no_grad()
def tower_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, N, C) features of the frozen tower as the model's own get_image_features selects them, before the projector."""
    cfg = model.config
    tower = model.model.vision_tower
    if cfg.model_type == "fast_vlm":
        return tower(pixel_values, return_dict=True).last_hidden_state.flatten(2).transpose(1, 2)
    hidden = tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states[cfg.vision_feature_layer]
    return hidden[:, 1:] if cfg.vision_feature_select_strategy == "default" else hidden


def image_features(built: Built, images: dict[str, str], cache: Path, dist: Dist, batch: int = 16) -> dict[str, torch.Tensor]:
    """Tower features of every image (sha -> path), computed once per image and tower, shared by all ranks."""
    from PIL import Image

    folder = cache / tower_key(built)
    # each rank owns a fixed share of all the images: splitting only the uncached ones would let a fast rank's new
    # files change a slower rank's list, and an image would be left to no rank
    share = sorted(images)[dist.rank :: dist.world]
    mine = [sha for sha in share if not (folder / f"{sha}.pt").is_file()]
    model = built.model.get_base_model() if hasattr(built.model, "get_base_model") else built.model  # LoRA: under peft's wrapper
    device = next(model.model.vision_tower.parameters()).device
    for i in range(0, len(mine), batch):
        shas = mine[i : i + batch]
        pics = [Image.open(images[s]).convert("RGB") for s in shas]
        px = built.processor.image_processor(pics, return_tensors="pt")["pixel_values"].to(device, next(model.model.vision_tower.parameters()).dtype)
        feats = tower_features(model, px).float().cpu()
        for sha, f in zip(shas, feats):
            buf = io.BytesIO()
            torch.save(f.clone(), buf)
            atomic_write_bytes(folder / f"{sha}.pt", buf.getvalue())
    if mine:
        log.info("image features: %d computed, %d cached (%s)", len(mine), len(share) - len(mine), folder)
    _barrier(dist)
    return {sha: torch.load(folder / f"{sha}.pt", map_location="cpu", weights_only=True) for sha in images}


# ---- loss ---------------------------------------------------------------------------------------
class AnswerLoss(torch.nn.Module):
    """Mean cross-entropy over supervised tokens, from cached tower features (what DDP/FSDP wrap).

    Calls the transformers model's own projector, decoder and head; computes logits only at supervised
    positions (equal to the model's ``labels=`` loss, tested). ``loss_chunk`` (``train.loss_chunk``) goes
    further: the head and the loss run on that many supervised tokens at a time and are recomputed in the
    backward pass, so the (tokens x vocabulary) fp32 logits and their gradient never exist at once.
    A packed batch passes ``position_ids`` and no attention mask (``conversation.pack``).
    """

    def __init__(self, model, *, loss_chunk: int | None = None):
        super().__init__()
        self.model = model  # the transformers model (or its peft wrapper)
        self.loss_chunk = loss_chunk

    def hf(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids, attention_mask, labels, features, position_ids=None):
        hf = self.hf()
        projected = hf.model.multi_modal_projector(features.to(hf.model.multi_modal_projector.linear_1.weight.dtype))
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        pooled = projected if hf.config.model_type == "fast_vlm" else list(projected)  # Llava concatenates a list
        out = hf.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=pooled)}, use_cache=False)
        hidden = out.last_hidden_state[:, :-1]
        target = labels[:, 1:]
        keep = target != IGNORE
        return answer_cross_entropy(hf.lm_head, hidden[keep], target[keep], self.loss_chunk)


def answer_cross_entropy(head: torch.nn.Module, hidden: torch.Tensor, target: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``head(hidden)`` against ``target`` ((N, d) and (N,)), in fp32.

    With ``chunk``, ``chunk`` rows at a time under activation checkpointing: each chunk's logits are
    freed after its loss and made again in the backward pass (one extra head matmul, about 2 % of a
    7B step), so peak memory holds one chunk's logits instead of all of them.
    """
    if not chunk or len(target) <= chunk:
        return F.cross_entropy(head(hidden).float(), target)
    from torch.utils.checkpoint import checkpoint

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), t, reduction="sum")

    total = sum(checkpoint(chunk_loss, h, t, use_reentrant=False) for h, t in zip(hidden.split(chunk), target.split(chunk)))
    return total / len(target)


def enable_checkpointing(model, every_n_layers: int = 1) -> None:
    """Activation checkpointing on every ``every_n_layers``-th decoder layer of the language model (1: all; 0: none).

    Selective rather than all or nothing: a layer that keeps its activations is not recomputed, so
    checkpointing half of them trades half the memory back for a third less recompute. Uses the
    transformers layer flag (``GradientCheckpointingLayer.gradient_checkpointing``), set per layer here so
    it behaves the same on transformers versions with and without ``every_n_layers``.
    """
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    if every_n_layers == 0:  # off: every layer keeps its activations
        for layer in hf.model.language_model.layers:
            layer.gradient_checkpointing = False
        return
    enable = getattr(hf, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for index, layer in enumerate(hf.model.language_model.layers):
        layer.gradient_checkpointing = index % every_n_layers == 0


def compile_layers(model) -> int:
    """``torch.compile`` each decoder layer in place (fuses the norms, rotary embedding, SiLU gate and residual
    adds between the matmuls); the embedding, the head and the loss stay eager. Returns the layer count."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = hf.model.language_model.layers
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


# ---- FLOPs and MFU (notes/training.md §4) ---------------------------------------------------------
def lm_matmul_params(model) -> int:
    """Language-model matmul parameters: everything but the embedding table, the head included."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    lm = hf.model.language_model
    n = sum(p.numel() for name, p in lm.named_parameters() if "embed_tokens" not in name and "norm" not in name)
    return n + hf.lm_head.weight.numel()


def sample_flops(tokens: int, *, n_params: int, layers: int, width: int, trains_lm: bool) -> float:
    """Training FLOPs of one sample of ``tokens`` tokens: c·N·T + c_att·L·d·T² (c=6, 12 full; 4, 8 frozen LM).

    LoRA counts as a frozen LM (notes/training.md §4): the base weights get no gradient, and the adapters'
    matmuls are a rounding error at the ranks used."""
    c, c_att = (6, 12) if trains_lm else (4, 8)
    return c * n_params * tokens + c_att * layers * width * tokens * tokens


def uses_bf16_autocast(device: str, precision: str) -> bool:
    """``train.precision`` on ``device``: auto is bf16 autocast on GPUs and on CPUs with native bf16 matmuls."""
    if precision == "fp32":
        return False
    if precision == "bf16-autocast":
        return True
    return computes_bf16_natively(device)


def device_peak_flops(device: str, bf16: bool = False) -> tuple[float, str]:
    """Peak dense FLOP/s of the device for MFU: the datasheet for known GPUs, a measured matmul on CPU
    (bf16 when training runs under bf16 autocast, else fp32)."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        for key, peak in (("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12)):
            if key in name:
                return peak, f"{name} bf16 datasheet"
        return measured_matmul_flops(device, torch.bfloat16), f"{name} measured bf16 matmul"
    dtype = torch.bfloat16 if bf16 else torch.float32
    return measured_matmul_flops("cpu", dtype), f"measured {'bf16' if bf16 else 'fp32'} matmul on this CPU"


def measured_matmul_flops(device: str, dtype: torch.dtype) -> float:
    """The best of several large matmuls: the rate this device reaches on dense work."""
    cuda = device.startswith("cuda")
    n, reps = (8192, 10) if cuda else (2048, 3)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
    except Exception:  # pragma: no cover - non-POSIX
        return float("nan")


# ---- schedule -----------------------------------------------------------------------------------
def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else max(0.0, 1 - progress)


# ---- checkpoints --------------------------------------------------------------------------------
class Checkpoints:
    """Resumable checkpoints in one folder: ``step-<n>.pt`` plus ``latest.json`` with its sha256.

    Writes are atomic and the previous checkpoint is kept until the new one is in place; a file whose
    sha256 does not match ``latest.json`` (a partial copy, a corrupted disk) is never loaded as if whole.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def save(self, state: dict, step: int) -> Path:
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        path = atomic_write_bytes(self.folder / f"step-{step:07d}.pt", data)
        from glassllava.files import sha256_bytes

        atomic_write_json(self.folder / "latest.json", {"file": path.name, "sha256": sha256_bytes(data), "step": step})
        for old in self.folder.glob("step-*.pt"):
            if old.name != path.name:
                old.unlink(missing_ok=True)
        for old in self.folder.glob("dcp-*"):
            if old.name != state.get("dcp"):
                shutil.rmtree(old, ignore_errors=True)
        return path

    def load(self) -> dict | None:
        index = self.folder / "latest.json"
        if not index.is_file():
            return None
        try:
            meta = json.loads(index.read_text())
            path = self.folder / meta["file"]
            if sha256_file(path) != meta["sha256"]:
                raise ValueError(f"{path.name}: sha256 does not match latest.json (partial or corrupted file)")
            return torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, ValueError, KeyError, RuntimeError, EOFError) as e:
            log.warning("checkpoint in %s not used: %s; training starts from the beginning", self.folder, e)
            return None

    def clear(self) -> None:
        for f in list(self.folder.glob("step-*.pt")) + [self.folder / "latest.json"]:
            f.unlink(missing_ok=True)
        for d in self.folder.glob("dcp-*"):
            shutil.rmtree(d, ignore_errors=True)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the recipe ---------------------------------------------------------------------------------
@dataclass
class StagePlan:
    name: str  # align | instruct
    split: str
    epochs: float
    lr_lm: float | None  # None: the language model stays frozen
    lr_projector: float


@dataclass
class TrainReport:
    preset: str
    trained: bool
    stages: list[dict] = field(default_factory=list)
    loss_curve: list[dict] = field(default_factory=list)  # {stage, epoch, step, loss, lr}
    eval_loss: list[dict] = field(default_factory=list)  # {stage, epoch, eval_loss}
    samples_per_s: float = 0.0
    tokens_per_s: float = 0.0
    mfu: float = 0.0
    peak_flops: float = 0.0
    peak_source: str = ""
    peak_mem_gib: float = 0.0
    wall_s: float = 0.0
    step_s: float = 0.0
    batch: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    device: str = "cpu"
    world: int = 1
    resumed_from_step: int | None = None
    mlflow_run_id: str | None = None
    model_version: int | None = None
    model_dir: str = ""
    samples: list[dict] = field(default_factory=list)


class Recipe:
    """Two-stage LLaVA training of one preset on the dataset stage's conversations."""

    def __init__(self, params: Params, layout: DataLayout, dist: Dist | None = None, *, model_out: Path | None = None,
                 register: bool = True, track: bool = True, stop_after_steps: int | None = None):
        self.params, self.layout = params, layout
        self.dist = dist or Dist()
        self.train = effective_train_params(params)
        self.batch = batch_reading(self.train, self.dist.world)
        self.model_out = model_out or layout.model
        self.register = register and track
        self.track = track  # False: no MLflow run at all (benchmarks)
        self.stop_after_steps = stop_after_steps  # tests: stop (as if killed) after this many optimizer steps
        check_weights(params.model)  # missing paper weights: one clear error before any work
        if self.train.distributed == "fsdp" and PRESETS[params.model.preset].lora:
            raise TrainingError(f"train.distributed=fsdp is for full fine-tunes; {params.model.preset} trains adapters over frozen weights: use ddp")
        for split in ("train",):
            shards = list(layout.dataset.glob(f"{split}-*.parquet"))
            if not shards:
                raise TrainingError(f"no training conversations in {layout.dataset}: run the dataset stage first (dvc repro dataset)")
            if not sum(pq.read_metadata(shard).num_rows for shard in shards):  # else "none of them fits" would be the message
                raise TrainingError(f"no training conversations in {layout.dataset}: its {split} shards are empty; "
                                    "rebuild the dataset (dvc repro dataset)")

    # -- setup --
    def setup(self) -> None:
        t = self.train
        torch.manual_seed(t.seed)
        random.seed(t.seed)
        np.random.seed(t.seed)
        self.built = build_model(self.params.model, seed=t.seed)
        model = self.built.model
        self.autocast = uses_bf16_autocast(self.dist.device, t.precision)
        self.device_type = "cuda" if self.dist.device.startswith("cuda") else "cpu"
        model.to(self.dist.device)
        if t.gradient_checkpointing:
            enable_checkpointing(model, t.gradient_checkpointing_every_n_layers)
        if self.built.preset.lora:
            self.built.model = apply_lora(model, self.params.model)
        if t.compile:
            compile_layers(self.built.model)
        self._setup_data()
        self.plans = self._plan_stages()

    def _setup_data(self) -> None:
        t = self.train
        self.samples: dict[str, list[Sample]] = {}
        self.skipped: list[dict] = []
        for split in ("align", "train", "eval"):
            samples, skipped = encode_split(read_conversations(self.layout, split), self.built, t.max_seq_len)
            self.samples[split] = samples
            self.skipped += [{**s, "split": split} for s in skipped]
        if not self.samples["train"]:
            raise TrainingError(f"none of the training conversations fits (skipped: {self.skipped[:3]}); nothing trained")
        images = {s.image_sha: s.image_path for split in self.samples.values() for s in split}
        self.features = image_features(self.built, images, self.layout.train / "features", self.dist)

    def _plan_stages(self) -> list[StagePlan]:
        t = self.train
        plans = []
        if t.stage1_epochs > 0 and self.samples["align"]:
            plans.append(StagePlan("align", "align", t.stage1_epochs, None, t.stage1_lr))
        plans.append(StagePlan("instruct", "train", t.epochs, t.lr, t.projector_lr))
        return plans

    def _trainable(self, plan: StagePlan) -> list[tuple[str, list]]:
        """(group, params) to optimise in a stage; everything else frozen."""
        model, hf = self.built.model, self.hf
        hf.requires_grad_(False)
        # under LoRA the projector is peft's ModulesToSaveWrapper: train its copy, not the frozen original it also holds
        projector = [p for n, p in hf.model.multi_modal_projector.named_parameters() if "original_module" not in n]
        for p in projector:
            p.requires_grad_(True)
        groups = [("projector", projector)]
        if plan.lr_lm is not None:
            if self.built.preset.lora:
                lm = [p for n, p in model.named_parameters() if "lora_" in n]
            else:
                lm = list(hf.model.language_model.parameters())
                if not hf.config.tie_word_embeddings:
                    lm += list(hf.lm_head.parameters())
            for p in lm:
                p.requires_grad_(True)
            groups.append(("language_model", lm))
        return groups

    def _wrap(self, loss_module: AnswerLoss):
        if self.dist.world == 1:
            return loss_module
        if self.train.distributed == "fsdp":  # FSDP2: shard each decoder layer, then the rest; once per run
            from torch.distributed.fsdp import fully_shard

            if not getattr(self, "_sharded", False):
                for layer in loss_module.hf().model.language_model.layers:
                    fully_shard(layer)
                # the root reshards after forward too: an eval forward (no backward) would otherwise leave the gathered
                # parameters registered, and an optimizer built then would hold them instead of the shards
                fully_shard(loss_module, reshard_after_forward=True)
                self._sharded = True
            return loss_module
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(loss_module, device_ids=[self.dist.local_rank] if self.dist.device.startswith("cuda") else None)

    # -- training --
    def run(self) -> TrainReport:
        started = time.perf_counter()
        last_checkpoint = started
        self.setup()
        t = self.train
        report = TrainReport(preset=self.built.preset.name, trained=False, batch=self.batch, device=self.dist.device, world=self.dist.world,
                             skipped=self.skipped, model_dir=str(self.model_out))
        report.peak_flops, report.peak_source = device_peak_flops(self.dist.device, bf16=self.autocast)
        run_key = sha256_json({"params": self.params.model_dump(mode="json"), "data": self._data_fingerprint(), "recipe": RECIPE_VERSION,
                               "world": self.dist.world})[:16]
        ckpts = Checkpoints(self.layout.train / "checkpoints" / run_key)
        state = ckpts.load()
        resume = state is not None
        if resume:
            report.resumed_from_step = state["global_step"]
            report.loss_curve, report.eval_loss = state["loss_curve"], state["eval_loss"]
            log.info("resuming from step %d (%s)", state["global_step"], ckpts.folder)
        text = self.hf.config.text_config
        n_params = lm_matmul_params(self.built.model)
        totals = {"samples": 0, "tokens": 0, "flops": 0.0, "seconds": 0.0}
        if resume:
            totals = state["totals"]
        global_step = 0
        with self._tracking(report, state) as run:
            for stage_index, plan in enumerate(self.plans):
                if not hasattr(self, "loss_module"):
                    self.loss_module = AnswerLoss(self.built.model, loss_chunk=t.loss_chunk)  # one instance: FSDP shards it once, eval reuses it
                if self.fsdp:
                    wrapped = self._wrap(self.loss_module)  # sharding replaces the parameters: collect them afterwards
                groups = self._trainable(plan)
                if not self.fsdp:
                    wrapped = self._wrap(self.loss_module)  # DDP hooks the parameters that require grad: set them first
                lrs = {"projector": plan.lr_projector, "language_model": plan.lr_lm}
                opt_groups = [{"params": ps, "lr": lrs[name], "name": name} for name, ps in groups]
                # fused on CPU too: 0.07 s a step for the small preset's 135M parameters, against 0.32 s with foreach
                optimizer = torch.optim.AdamW(opt_groups, lr=plan.lr_projector, weight_decay=t.weight_decay, fused=True)
                samples = self.samples[plan.split]
                per_epoch = math.ceil(len(epoch_batches(samples, self.batch["micro_batch"], t.seed, 0, self.dist.world)) / self.dist.world / t.grad_accum)
                total_steps = max(1, math.ceil(per_epoch * plan.epochs))
                warmup = int(t.warmup_ratio * total_steps)
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup, t.schedule))
                stage_step, start_epoch, skip_batches = 0, 0, 0
                if resume and state["stage"] > stage_index:
                    if state["weights"] is not None:  # an earlier, finished stage: its weights are in the checkpoint
                        self._load_trainable(state["weights"])
                    global_step += total_steps
                    continue
                if resume and state["stage"] == stage_index:
                    if state.get("dcp"):
                        self._load_sharded(ckpts.folder / state["dcp"], optimizer)
                    else:
                        self._load_trainable(state["weights"])
                        optimizer.load_state_dict(state["optimizer"])
                    scheduler.load_state_dict(state["scheduler"])
                    stage_step, start_epoch, skip_batches = state["stage_step"], state["epoch"], state["batch_in_epoch"]
                    global_step = state["global_step"]
                    _set_rng_state(state["rng"])
                    resume = False
                stage_info = {"name": plan.name, "split": plan.split, "epochs": plan.epochs, "steps": total_steps, "warmup_steps": warmup,
                              "conversations": len(samples), "trainable_params": sum(p.numel() for _, ps in groups for p in ps),
                              "lr": {k: v for k, v in lrs.items() if v is not None}}
                report.stages.append(stage_info)
                log.info("stage %s: %d conversations, %d steps, %s trainable parameters", plan.name, len(samples), total_steps,
                         f"{stage_info['trainable_params']:,}")
                full_lm = plan.lr_lm is not None and not self.built.preset.lora  # MFU: weight gradients of the whole LM
                epoch = start_epoch
                while stage_step < total_steps:
                    batches = epoch_batches(samples, self.batch["micro_batch"], t.seed + stage_index * 1000, epoch, self.dist.world)
                    mine = batches[self.dist.rank :: self.dist.world]
                    steps = [mine[i : i + t.grad_accum] for i in range(0, len(mine), t.grad_accum)]
                    for b_index in range(skip_batches, len(steps)):
                        if stage_step >= total_steps:
                            break
                        tick = time.perf_counter()
                        loss_sum, n_tok, n_samples = self._step(wrapped, optimizer, samples, steps[b_index], groups)
                        scheduler.step()
                        stage_step += 1
                        global_step += 1
                        # throughput: time steps only (not eval or checkpoints); FLOPs of the work done
                        flops = sum(sample_flops(len(samples[i].encoded.input_ids), n_params=n_params, layers=text.num_hidden_layers,
                                                 width=text.hidden_size, trains_lm=full_lm) for mb in steps[b_index] for i in mb)
                        # rank 0's clock decides a time-based checkpoint, so that every rank takes part in the same one
                        minutes = t.checkpoint_every_minutes
                        clock_due = float(self.dist.main and minutes is not None and time.perf_counter() - last_checkpoint >= 60 * minutes)
                        s, tok, fl, loss, clock_due = _all_sum(self.dist, [n_samples, n_tok, flops, loss_sum, clock_due])  # one collective per step
                        totals["seconds"] += time.perf_counter() - tick
                        totals["samples"] += s
                        totals["tokens"] += tok
                        totals["flops"] += fl
                        loss /= self.dist.world
                        point = {"stage": plan.name, "epoch": epoch, "step": global_step, "loss": round(loss, 5), "lr": scheduler.get_last_lr()[-1]}
                        report.loss_curve.append(point)
                        if global_step % t.log_every_steps == 0 or stage_step == total_steps:
                            rate = self._rates(totals, report)
                            run.log_metrics({f"{plan.name}/loss": loss, "lr": point["lr"], **rate}, step=global_step)
                            log.info("%s epoch %d step %d/%d loss %.4f  %.2f samples/s  %.0f tokens/s  MFU %.1f%%", plan.name, epoch + 1,
                                     stage_step, total_steps, loss, rate["samples_per_s"], rate["tokens_per_s"], 100 * rate["mfu"])
                        steps_due = t.checkpoint_every_steps is not None and global_step % t.checkpoint_every_steps == 0
                        if (steps_due or clock_due > 0) and stage_step < total_steps:
                            self._checkpoint(ckpts, stage_index, stage_step, epoch, b_index + 1, global_step, optimizer, scheduler, report, totals, run)
                            last_checkpoint = time.perf_counter()
                        if self.stop_after_steps and global_step >= self.stop_after_steps:
                            raise KeyboardInterrupt(f"stopped after {global_step} steps (test)")
                    skip_batches = 0
                    epoch += 1
                    eval_loss = self.eval_loss()
                    if eval_loss is not None:
                        report.eval_loss.append({"stage": plan.name, "epoch": epoch, "eval_loss": round(eval_loss, 5)})
                        run.log_metrics({f"{plan.name}/eval_loss": eval_loss}, step=global_step)
                        log.info("%s epoch %d: eval loss %.4f", plan.name, epoch, eval_loss)
            report.trained = True
            self._rates(totals, report)
            report.peak_mem_gib = round(peak_memory_gib(self.dist.device), 3)
            report.wall_s = round(time.perf_counter() - started, 1)
            if self.fsdp:
                self._unshard()  # every rank takes part in gathering the full weights; rank 0 keeps them
            if self.dist.main:
                self._finish(report, run)
            _barrier(self.dist)
        ckpts.clear() if self.dist.main else None
        return report

    def _step(self, wrapped, optimizer, samples: list[Sample], micro_batches: list[list[int]], groups) -> tuple[float, int, int]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss, tokens, samples)."""
        t = self.train
        device = self.dist.device
        loss_total, tokens, n = 0.0, 0, 0
        for k, mb in enumerate(micro_batches):
            batch = self._batch([(samples[i].encoded, samples[i].image_sha) for i in mb]).to(device)
            feats = torch.stack([self.features[sha] for sha in batch.image_shas]).to(device)
            sync = contextlib.nullcontext()
            if hasattr(wrapped, "no_sync") and k < len(micro_batches) - 1:
                sync = wrapped.no_sync()
            with sync, torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
                loss = wrapped(batch.input_ids, batch.attention_mask, batch.labels, feats, batch.position_ids) / len(micro_batches)
                loss.backward()
            loss_total += float(loss.detach())
            tokens += batch.tokens
            n += len(mb)
        params = [p for _, ps in groups for p in ps]
        torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_total, tokens, n

    def _batch(self, items: list[tuple]):
        """A micro-batch as the model takes it: packed rows (``train.packing``) or right-padded rows."""
        if self.train.packing:
            return pack(items, self.built.tokenizer.pad_token_id, self.train.pack_tokens)
        return collate(items, self.built.tokenizer.pad_token_id)

    def _rates(self, totals: dict, report: TrainReport) -> dict:
        sec = max(totals["seconds"], 1e-9)
        report.samples_per_s = round(totals["samples"] / sec, 4)
        report.tokens_per_s = round(totals["tokens"] / sec, 2)
        report.mfu = round(totals["flops"] / (sec * self.dist.world * report.peak_flops), 5)
        report.step_s = round(sec, 2)
        mem = peak_memory_gib(self.dist.device)
        return {"samples_per_s": report.samples_per_s, "tokens_per_s": report.tokens_per_s, "mfu": report.mfu, "peak_mem_gib": round(mem, 3)}

    @torch.no_grad()
    def eval_loss(self) -> float | None:
        samples = self.samples["eval"]
        if not samples:
            return None
        n = self.train.eval_conversations
        if n and len(samples) > n:  # a fixed subset: the same conversations after every epoch
            samples = [samples[i] for i in sorted(random.Random(self.train.seed).sample(range(len(samples)), n))]
        loss_module = self.loss_module
        self.built.model.eval()
        total, count = 0.0, 0
        micro = self.batch["micro_batch"]
        # every rank runs the same number of batches (FSDP gathers weights collectively); padding batches weigh 0
        per_rank = math.ceil(len(samples) / self.dist.world / micro) * micro
        mine = [(j, j < len(samples)) for j in range(self.dist.rank, per_rank * self.dist.world, self.dist.world)]
        for i in range(0, len(mine), micro):
            real = [j for j, is_real in mine[i : i + micro] if is_real]
            idx = real or [0]  # an all-padding batch still runs (same number of forwards on every rank) and counts for nothing
            batch = collate([(samples[j].encoded, samples[j].image_sha) for j in idx], self.built.tokenizer.pad_token_id).to(self.dist.device)
            feats = torch.stack([self.features[s] for s in batch.image_shas]).to(self.dist.device)
            n_sup = int((batch.labels[:, 1:] != IGNORE).sum()) if real else 0
            with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
                total += float(loss_module(batch.input_ids, batch.attention_mask, batch.labels, feats)) * n_sup
            count += n_sup
        self.built.model.train()
        self.hf.model.vision_tower.eval()  # frozen BatchNorm statistics stay as pretrained
        total, count = _all_sum(self.dist, [total, count])
        return total / max(count, 1)

    # -- state --
    @property
    def hf(self):
        """The transformers model itself (under a peft wrapper for LoRA)."""
        model = self.built.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _trainable_state(self) -> dict:
        """Every weight but the frozen tower's (which the preset's pretrained source restores)."""
        return {n: p.detach().cpu().clone() for n, p in self.built.model.named_parameters() if "vision_tower" not in n}

    def _load_trainable(self, weights: dict) -> None:
        named = dict(self.built.model.named_parameters())
        with torch.no_grad():
            for n, w in weights.items():
                named[n].copy_(w.to(named[n].device))

    @property
    def fsdp(self) -> bool:
        return self.dist.world > 1 and self.train.distributed == "fsdp"

    def _load_sharded(self, folder: Path, optimizer) -> None:
        """FSDP: every rank reads its shards of weights and optimizer state (torch.distributed.checkpoint)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.loss_module, optimizer)
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder))
        set_state_dict(self.loss_module, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)

    def _unshard(self) -> None:
        """FSDP: gather the full weights onto rank 0's CPU and rebuild a plain transformers model from them."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.loss_module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.dist.main:
            return
        hf = self.hf
        with torch.device("meta"):
            plain = type(hf)(hf.config)
        plain.load_state_dict({k.removeprefix("model."): v for k, v in full.items()}, strict=False, assign=True)
        for name, buffer in hf.named_buffers():  # non-persistent buffers (rotary inv_freq) are not in a state dict
            owner, _, attr = name.rpartition(".")
            plain.get_submodule(owner)._buffers[attr] = buffer.detach().cpu()  # FSDP2 shards parameters only
        plain.tie_weights()
        left = [n for n, t in list(plain.named_parameters()) + list(plain.named_buffers()) if t.is_meta]
        if left:
            raise TrainingError(f"FSDP gather left weights unset: {left[:5]}")
        self.built.model = plain.eval()

    def _checkpoint(self, ckpts, stage, stage_step, epoch, batch_in_epoch, global_step, optimizer, scheduler, report, totals, run) -> None:
        dcp_name = None
        if self.fsdp:  # sharded: every rank writes its part; rank 0 writes the index that points at it
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_sd, optim_sd = get_state_dict(self.loss_module, optimizer)
            dcp_name = f"dcp-{global_step:07d}"
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(ckpts.folder / dcp_name))
        if not self.dist.main:
            return
        state = {"stage": stage, "stage_step": stage_step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": global_step,
                 "weights": None if self.fsdp else self._trainable_state(), "optimizer": None if self.fsdp else optimizer.state_dict(),
                 "dcp": dcp_name, "scheduler": scheduler.state_dict(),
                 "rng": _rng_state(), "loss_curve": report.loss_curve, "eval_loss": report.eval_loss, "totals": dict(totals),
                 "mlflow_run_id": run.run_id}
        ckpts.save(state, global_step)

    def _data_fingerprint(self) -> str:
        report = self.layout.dataset / "report.json"
        if report.is_file():
            return sha256_file(report)
        return sha256_json(sorted(str(p) for p in self.layout.dataset.glob("*.parquet")))

    # -- tracking and saving (rank 0) --
    def _tracking(self, report: TrainReport, state: dict | None):
        from glassllava import tracking

        params = {"model": self.params.model.model_dump(mode="json"), "train": self.train.model_dump(mode="json"),
                  "dataset": self.params.dataset.model_dump(mode="json")}
        repo = _repo_root(self.layout)
        tags = {"preset": self.built.preset.name, "recipe": self.train.recipe, "git_sha": tracking.git_sha(repo) or "unknown",
                "dataset_hash": tracking.dvc_out_hash(repo, self.layout.dataset) or "unknown",
                "global_batch": (f"{self.batch['per_device']} per device x {self.batch['world']} processes = {self.batch['global']} "
                                 f"(train.batch_size={self.train.batch_size} read {self.batch['reading']}, grad_accum {self.batch['grad_accum']})"),
                "device": self.dist.device, "weights": json.dumps(self.built.sources)}
        run_id = state.get("mlflow_run_id") if state else None
        return tracking.start_run(params, tags, experiment=self.params.tracking.experiment, run_name=f"train-{self.built.preset.name}",
                                  enabled=self.dist.main and self.track, **({"run_id": run_id} if run_id else {}))

    def _finish(self, report: TrainReport, run) -> None:
        from glassllava import tracking

        provenance = {"preset": self.built.preset.name, "weights": self.built.sources, "recipe": self.train.model_dump(mode="json"),
                      "batch": self.batch, "mlflow_run_id": run.run_id, "dataset": self._data_fingerprint()}
        self.built.model.eval()
        save_model(self.built, self.model_out, generation={"max_new_tokens": self.train.max_new_tokens}, provenance=provenance)
        report.samples = self.sample_answers(self.train.sample_answers)
        report.mlflow_run_id = run.run_id
        train_dir = self.layout.train
        rows = "step,stage,epoch,loss,lr\n" + "".join(f"{p['step']},{p['stage']},{p['epoch']},{p['loss']},{p['lr']:.3e}\n" for p in report.loss_curve)
        atomic_write_text(train_dir / "loss.csv", rows)
        metrics = {"samples_per_s": report.samples_per_s, "tokens_per_s": report.tokens_per_s, "mfu": report.mfu, "peak_mem_gib": report.peak_mem_gib,
                   "final_loss": report.loss_curve[-1]["loss"] if report.loss_curve else None,
                   "eval_loss": report.eval_loss[-1]["eval_loss"] if report.eval_loss else None}
        run.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=len(report.loss_curve))
        run.log_table(report.samples, "samples/answers.json")
        run.log_artifact(str(train_dir / "loss.csv"))
        if self.register:
            report.model_version = tracking.register_model(run.run_id, self.model_out, name=self.params.tracking.registered_model,
                                                           alias=self.params.tracking.candidate_alias,
                                                           copy_artifacts=self.params.tracking.log_model_artifacts)
        atomic_write_json(train_dir / "metrics.json", {k: v for k, v in metrics.items() if v is not None})
        atomic_write_json(train_dir / "report.json", asdict(report))
        run.log_dict(asdict(report), "train_report.json")

    @torch.no_grad()
    def sample_answers(self, n: int) -> list[dict]:
        """A few eval questions answered by the trained model through its own processor (a look at what it learnt)."""
        if n <= 0:
            return []
        from glassllava.generate import answer_questions

        rows = read_conversations(self.layout, "eval")[:n]
        items = [{"image": r["image_path"], "question": r["turns"][0]["question"], "reference": r["turns"][0]["answer"]} for r in rows]
        answers = answer_questions(self.hf, self.built.processor, items, max_new_tokens=self.train.max_new_tokens)
        return [{**item, "answer": a.text} for item, a in zip(items, answers)]


def _repo_root(layout: DataLayout) -> Path:
    return layout.root.resolve().parent


# ---- entry point --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the GlassLLaVA model (run under torchrun).")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--no-register", action="store_true", help="do not register the model in MLflow")
    parser.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    params = load_params_or_exit(args.params)  # a bad file: one line per problem, exit 2, before any process group
    dist = init_distributed()
    logging.basicConfig(level=logging.INFO if dist.main else logging.WARNING, format=f"%(asctime)s [rank {dist.rank}] %(levelname)s %(message)s")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))
    try:
        recipe = Recipe(params, DataLayout(args.data), dist, register=not args.no_register, stop_after_steps=args.stop_after_steps)
        report = recipe.run()
        if dump := os.environ.get("GLASSLLAVA_DUMP_WEIGHTS"):  # tests: each rank's final weights, to compare the ranks
            Path(dump).mkdir(parents=True, exist_ok=True)
            torch.save(recipe._trainable_state(), Path(dump) / f"rank-{dist.rank}.pt")
    except (TrainingError, ValueError) as e:
        log.error("train: %s", e)
        print(f"train: {e}", file=sys.stderr)
        return 1
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if dist.main:
        log.info("trained %s in %.0f s: %.2f samples/s, %.0f tokens/s, MFU %.2f%%, model in %s (MLflow run %s, version %s)", report.preset,
                 report.wall_s, report.samples_per_s, report.tokens_per_s, 100 * report.mfu, report.model_dir, report.mlflow_run_id, report.model_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---- launching under torchrun (what the train stage flow calls) -----------------------------------
def torchrun_command(params_path: Path, data: Path, extra: list[str] | None = None) -> list[str]:
    """``torchrun ... -m glassllava.train``; the process and node counts come from the environment.

    torchrun reads ``PET_NPROC_PER_NODE`` (``gpu``, ``auto``, ``cpu`` or a number; default 1), ``PET_NNODES``,
    ``PET_RDZV_ENDPOINT`` ... itself, so a work pool's job variables choose the GPUs and dvc.lock never
    records infrastructure. One node without a rendezvous endpoint runs ``--standalone``.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if os.environ.get("PET_NNODES", "1") in ("1", "1:1") and not os.environ.get("PET_RDZV_ENDPOINT"):
        cmd.append("--standalone")
    return [*cmd, "-m", "glassllava.train", "--params", str(params_path), "--data", str(data), *(extra or [])]


def launch(params_path: Path, data: Path, *, on_line=None, extra: list[str] | None = None, env: dict | None = None) -> dict:
    """Run training under torchrun, streaming its output to ``on_line``; return the report (raise on failure)."""
    import subprocess

    cmd = torchrun_command(params_path, data, extra)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env={**os.environ, **(env or {})})
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail = (tail + [line])[-40:]
        if on_line:
            on_line(line)
    if proc.wait() != 0:
        reason = next((line for line in reversed(tail) if line.startswith("train: ")), "\n".join(tail[-15:]))
        raise TrainingError(f"torchrun exited with {proc.returncode}: {reason}")
    return json.loads((DataLayout(data).train / "report.json").read_text())
