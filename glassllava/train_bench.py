"""``glassllava bench train``: how fast does a training step run, and what limits it.

Times optimizer steps of a preset on synthetic conversations of a chosen length (image block + text,
half of the text supervised, as an answer would be) on whatever device is there, and reports
samples/s, tokens/s, MFU (notes/training.md §4: useful FLOPs of the real tokens only, the same count
for every path, so MFU ratios are speed ratios) and peak memory.

Two paths over the same conversations and the same weights:

- **recipe**: the training stage's own step (``glassllava.train``): the frozen tower's features computed
  once (training caches them per image), logits only at supervised positions, and the levers of
  ``train`` in params.yaml: ``packing``, ``loss_chunk``, ``compile``, ``gradient_checkpointing`` (with
  ``gradient_checkpointing_every_n_layers``), ``grad_accum``;
- **baseline** (``--baseline``): the plain transformers step, ``model(input_ids, pixel_values,
  attention_mask, labels).loss.backward()`` on right-padded rows: the tower runs every step, the full
  logits are made, every decoder layer checkpointed when checkpointing is on.

Both use the same precision (``train.precision``: bf16 autocast over fp32 master weights on GPUs) and
fused AdamW. Before any step both paths compute the loss of the first batch from the same weights:
``loss_agreement`` is their difference (the optimised path must compute the same thing).

``python -m glassllava.train_bench --matrix gpu --out DIR`` runs a list of settings, each in its own
process (so one that runs out of memory costs only itself), writing the JSON after every setting;
``scripts/gpu-bench`` runs it on a GPU machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from glassllava.conversation import IGNORE, Encoded, collate, pack
from glassllava.params import ModelParams, TrainParams

log = logging.getLogger(__name__)


def synthetic_conversations(n: int, *, image_tokens: int, image_token_id: int, text_tokens: int, spread: float, vocab: int,
                            seed: int = 0) -> list[Encoded]:
    """``n`` conversations: 4 prompt tokens, the image block, then ``text_tokens`` (± ``spread`` of it, uniform)
    text tokens whose second half is supervised (the answer)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = max(2, round(text_tokens * (1 + rng.uniform(-spread, spread))))
        words = [rng.randrange(100, min(vocab, 30000)) for _ in range(4 + text)]
        ids = words[:4] + [image_token_id] * image_tokens + words[4:]
        answer_from = 4 + image_tokens + text // 2
        labels = [IGNORE] * answer_from + ids[answer_from:]
        out.append(Encoded(ids, labels, 1, 1))
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _timed(step: Callable[[int], torch.Tensor], *, warmup: int, steps: int, device: str) -> dict:
    """Run ``warmup`` then ``steps`` calls of ``step(i)``; seconds of the timed ones, peak memory, final loss."""
    from glassllava.train import peak_memory_gib

    started = time.perf_counter()
    losses = [step(i) for i in range(warmup)]
    _sync(device)
    warmup_s = time.perf_counter() - started
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    tick = time.perf_counter()
    losses += [step(warmup + i) for i in range(steps)]
    _sync(device)
    sec = time.perf_counter() - tick
    final = float(losses[-1])
    out = {"step_s": sec / steps, "seconds": sec, "warmup_s": round(warmup_s, 2), "final_loss": round(final, 4), "loss_finite": math.isfinite(final),
           "peak_mem_gib": round(peak_memory_gib(device), 3)}
    if device.startswith("cuda"):
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
        out["device_total_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 2)
        out["headroom_gib"] = round(out["device_total_gib"] - out["peak_reserved_gib"], 2)
    return out


def run_train_benchmark(model_params: ModelParams, train: TrainParams, *, batch: int, steps: int = 10, warmup: int = 2,
                        text_tokens: int = 200, spread: float = 0.0, random_init: bool = False, baseline: bool = False,
                        lr: float = 1e-5, device: str | None = None) -> dict:
    """Time the recipe's step (and, with ``baseline``, the plain transformers step) of ``model_params.preset``.

    ``batch`` conversations per micro-batch, ``train.grad_accum`` micro-batches per optimizer step.
    """
    from glassllava.model import apply_lora, build_model
    from glassllava.train import (AnswerLoss, compile_layers, device_peak_flops, enable_checkpointing, lm_matmul_params, sample_flops,
                                  tower_features, uses_bf16_autocast)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    torch.manual_seed(0)
    build_started = time.perf_counter()
    built = build_model(model_params, random_init=random_init, device=device)
    model = built.model.to(device)
    if built.preset.lora:
        model = apply_lora(model, model_params)
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    hf.model.vision_tower.requires_grad_(False)
    hf.model.vision_tower.eval()
    _sync(device)
    build_s = time.perf_counter() - build_started
    trainable = [p for p in model.parameters() if p.requires_grad]
    cfg, text = hf.config, hf.config.text_config
    autocast = uses_bf16_autocast(device, train.precision)
    micro = train.grad_accum
    convs = synthetic_conversations(batch * micro * 4, image_tokens=cfg.image_seq_length, image_token_id=cfg.image_token_id,
                                    text_tokens=text_tokens, spread=spread, vocab=text.vocab_size)
    groups = [convs[i : i + batch] for i in range(0, len(convs), batch)]  # 4 optimizer steps' worth, cycled
    pad = text.pad_token_id if text.pad_token_id is not None else 0
    size = built.preset.image_size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, size, size, generator=gen).to(device, next(hf.model.vision_tower.parameters()).dtype)
    with torch.no_grad():
        features = tower_features(hf, pixels).float()  # what training reads from its per-image cache
    n_params = lm_matmul_params(model)
    trains_lm = not built.preset.lora
    peak, peak_source = device_peak_flops(device, bf16=autocast)

    def padded(group):
        return collate([(e, str(i)) for i, e in enumerate(group)], pad).to(device)

    def recipe_batch(group):
        if train.packing:  # rows may reorder the conversations: image_shas say whose features go where
            return pack([(e, str(i)) for i, e in enumerate(group)], pad, train.pack_tokens).to(device)
        return padded(group)

    def rates(t: dict, accum: int) -> dict:
        """Rates over the conversations the timed steps took (``accum`` micro-batches a step; the plain step takes one)."""
        done = [e for i in range(warmup, warmup + steps) for g in groups[(i % 4) * micro : (i % 4) * micro + accum] for e in g]
        tokens = sum(len(e.input_ids) for e in done)
        flops = sum(sample_flops(len(e.input_ids), n_params=n_params, layers=text.num_hidden_layers, width=text.hidden_size, trains_lm=trains_lm)
                    for e in done)
        return {"samples_per_s": round(len(done) / t["seconds"], 3), "tokens_per_s": round(tokens / t["seconds"], 1),
                "mfu": round(flops / t["seconds"] / peak, 5), "step_s": round(t["step_s"], 4)}

    loss_module = AnswerLoss(model, loss_chunk=train.loss_chunk)

    def plain_loss(group):
        b = padded(group)
        px = pixels[: len(group)]
        return model(input_ids=b.input_ids, pixel_values=px, attention_mask=b.attention_mask, labels=b.labels, use_cache=False).loss

    def recipe_loss(group):
        b = recipe_batch(group)
        order = torch.tensor([int(i) for i in b.image_shas], device=features.device)
        return loss_module(b.input_ids, b.attention_mask, b.labels, features[order], b.position_ids)

    result: dict = {
        "preset": model_params.preset, "random_init": random_init, "batch": batch, "grad_accum": micro, "image_tokens": cfg.image_seq_length,
        "text_tokens": text_tokens, "spread": spread, "mean_seq_len": round(sum(len(e.input_ids) for e in convs) / len(convs), 1),
        "steps": steps, "warmup": warmup, "build_s": round(build_s, 1), "peak_flops": peak, "peak_source": peak_source,
        "precision": "bf16-autocast" if autocast else "fp32", "trainable_params": sum(p.numel() for p in trainable), "lm_matmul_params": n_params,
        "levers": {"packing": train.packing, "pack_tokens": train.pack_tokens if train.packing else None, "loss_chunk": train.loss_chunk,
                   "compile": train.compile, "gradient_checkpointing": train.gradient_checkpointing,
                   "every_n_layers": train.gradient_checkpointing_every_n_layers if train.gradient_checkpointing else None},
        "device": torch.cuda.get_device_name() if device_type == "cuda" else f"cpu ({os.cpu_count()} cores)", "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    import transformers

    result["transformers"] = transformers.__version__
    # both paths on the same first batch, from the same weights, before any step
    enable_checkpointing(model, 0)
    with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        plain0, recipe0 = float(plain_loss(groups[0])), float(recipe_loss(groups[0]))
    result["loss_agreement"] = {"plain": round(plain0, 5), "recipe": round(recipe0, 5), "abs_diff": abs(plain0 - recipe0)}

    def stepper(loss_of, accum: int, optimizer):
        def step(i: int) -> torch.Tensor:
            k = i % 4
            total = None
            for group in groups[k * micro : k * micro + accum]:
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
                    loss = loss_of(group) / accum
                loss.backward()
                total = loss.detach() if total is None else total + loss.detach()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return total

        return step

    def breakdown(loss_of, accum: int, optimizer) -> dict:
        """One more optimizer step with the device synchronised between its parts: where the time goes."""
        parts = {"forward_s": 0.0, "backward_s": 0.0}
        for group in groups[:accum]:
            _sync(device)
            tick = time.perf_counter()
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
                loss = loss_of(group) / accum
            _sync(device)
            parts["forward_s"] += time.perf_counter() - tick
            tick = time.perf_counter()
            loss.backward()
            _sync(device)
            parts["backward_s"] += time.perf_counter() - tick
        tick = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        parts["optimizer_s"] = time.perf_counter() - tick
        return {k: round(v, 4) for k, v in parts.items()}

    def phase(loss_of, accum: int) -> dict:
        optimizer = torch.optim.AdamW(trainable, lr=lr, fused=True)
        try:
            t = _timed(stepper(loss_of, accum, optimizer), warmup=warmup, steps=steps, device=device)
            t["breakdown"] = breakdown(loss_of, accum, optimizer)
            return {**t, **rates(t, accum)}
        except torch.OutOfMemoryError as e:
            return {"oom": True, "error": str(e).splitlines()[0][:300]}
        finally:
            for p in trainable:
                p.grad = None
            del optimizer
            _free(device)

    if baseline:
        enable_checkpointing(model, 1 if train.gradient_checkpointing else 0)
        result["baseline"] = phase(plain_loss, 1)
    enable_checkpointing(model, train.gradient_checkpointing_every_n_layers if train.gradient_checkpointing else 0)
    if train.compile:
        compile_layers(model)
    result["recipe"] = phase(recipe_loss, micro)
    for key in ("samples_per_s", "tokens_per_s", "mfu", "step_s", "peak_mem_gib", "final_loss", "loss_finite"):  # the recipe's, as before
        if key in result["recipe"]:
            result[key] = result["recipe"][key]
    if baseline and "samples_per_s" in result["baseline"] and "samples_per_s" in result["recipe"]:
        result["speedup"] = round(result["recipe"]["samples_per_s"] / result["baseline"]["samples_per_s"], 3)
    return result


# ---- the GPU matrix -----------------------------------------------------------------------------
# Each entry: (name, preset, batch, overrides of params' train section (``model.*``: of its model section; ``spread``: the
# text-length spread), with baseline). Cheapest and most informative first, so a
# run cut short by its time limit still has the headline; about 7 minutes on one H200 (notes/training.md §5).
GPU_MATRIX: list[tuple[str, str, int, dict, bool]] = [
    ("7b-full-b8", "paper", 8, {}, True),
    ("7b-full-b8-chunk", "paper", 8, {"loss_chunk": 1024}, False),
    ("7b-full-b16-gc", "paper", 16, {"gradient_checkpointing": True, "loss_chunk": 1024}, True),
    ("7b-full-b16-gc-half", "paper", 16, {"gradient_checkpointing": True, "gradient_checkpointing_every_n_layers": 2, "loss_chunk": 1024}, False),
    ("7b-full-b8x4-accum", "paper", 8, {"grad_accum": 4, "loss_chunk": 1024}, False),
    ("7b-full-b8-spread-packed", "paper", 8, {"packing": True, "pack_tokens": 2048, "loss_chunk": 1024, "spread": 0.5}, False),
    ("7b-full-b8-spread-padded", "paper", 8, {"loss_chunk": 1024, "spread": 0.5}, False),
    ("7b-lora-b16-gc", "paper-lora", 16, {"gradient_checkpointing": True, "loss_chunk": 1024}, True),
    ("7b-lora-b16", "paper-lora", 16, {"loss_chunk": 1024}, False),  # no weight gradients or optimizer state: room without checkpointing
    ("7b-lora-b16-no-dropout", "paper-lora", 16, {"loss_chunk": 1024, "model.lora_dropout": 0.0}, False),  # peft skips the dropout of every input
    ("7b-full-b8-compile", "paper", 8, {"compile": True, "loss_chunk": 1024}, False),
]
CPU_MATRIX: list[tuple[str, str, int, dict, bool]] = [  # the same code paths at the tiny preset, for tests and a dry run
    ("tiny-b4", "tiny", 4, {}, True),
    ("tiny-b4-packed", "tiny", 4, {"packing": True, "pack_tokens": 256, "loss_chunk": 16, "spread": 0.5}, True),
    ("tiny-b4-gc-half", "tiny", 4, {"gradient_checkpointing": True, "gradient_checkpointing_every_n_layers": 2, "grad_accum": 2}, True),
]


def run_matrix(entries: list[tuple[str, str, int, dict, bool]], out: Path, *, steps: int, warmup: int, text_tokens: int, timeout_s: float) -> dict:
    """Each setting in a child process (``--one``); the JSON is rewritten after every setting."""
    results: dict = {"settings": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    measured = None
    if torch.cuda.is_available():
        from glassllava.train import measured_matmul_flops

        results["device"] = torch.cuda.get_device_name()
        measured = results["measured_bf16_matmul_flops"] = measured_matmul_flops("cuda", torch.bfloat16)  # 8192^3, best of 10
        torch.cuda.empty_cache()
    name_of = (results.get("device") or "cpu").replace(" ", "-")
    path = out / f"train-{name_of}.json"
    out.mkdir(parents=True, exist_ok=True)
    for name, preset, batch, overrides, baseline in entries:
        spec = {"preset": preset, "batch": batch, "overrides": overrides, "baseline": baseline, "steps": steps, "warmup": warmup, "text_tokens": text_tokens}
        cmd = [sys.executable, "-m", "glassllava.train_bench", "--one", json.dumps(spec)]
        started = time.perf_counter()
        try:
            limit = timeout_s * (2 if overrides.get("compile") else 1)  # compiling the layers takes its own minute
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            entry = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"error": (proc.stderr or proc.stdout)[-1500:], "rc": proc.returncode}
        except subprocess.TimeoutExpired:
            entry = {"error": f"timed out after {limit:.0f} s"}
        entry["wall_s"] = round(time.perf_counter() - started, 1)
        if measured:  # MFU against what this GPU's matmuls reach, beside the datasheet figure
            for part in (entry.get("baseline"), entry.get("recipe")):
                if part and "mfu" in part:
                    part["mfu_vs_measured_matmul"] = round(part["mfu"] * entry["peak_flops"] / measured, 5)
        results["settings"][name] = entry
        path.write_text(json.dumps(results, indent=2))
        summary = {k: entry.get(k) for k in ("samples_per_s", "mfu", "peak_mem_gib", "speedup", "error")}
        print(f"{name}: {summary}", flush=True)
    return results


def _run_one(spec: dict) -> dict:
    overrides = dict(spec["overrides"])
    spread = overrides.pop("spread", 0.0)
    model = {k.removeprefix("model."): overrides.pop(k) for k in list(overrides) if k.startswith("model.")}
    train = TrainParams(**overrides)
    random_init = spec["preset"] != "tiny"
    return run_train_benchmark(ModelParams(preset=spec["preset"], **model), train, batch=spec["batch"], steps=spec["steps"], warmup=spec["warmup"],
                               text_tokens=spec["text_tokens"], spread=spread, random_init=random_init, baseline=spec["baseline"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matrix", choices=["gpu", "cpu"], help="run every setting of GPU_MATRIX or CPU_MATRIX")
    parser.add_argument("--one", help="one setting as JSON (used by --matrix)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/gpu"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--text-tokens", type=int, default=200)  # 256 image tokens + 200 = the notes' 456
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per setting")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_run_one(json.loads(args.one))), flush=True)
        return 0
    entries = GPU_MATRIX if args.matrix == "gpu" else CPU_MATRIX
    run_matrix(entries, args.out, steps=args.steps, warmup=args.warmup, text_tokens=args.text_tokens, timeout_s=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
