"""``glassllava bench learn`` and ``glassllava bench train``: does the model learn, and how fast does it train.

bench learn builds a generated corpus large enough to measure (by default 30 papers with 45 % of the
papers held out: 53 eval images, so one question is worth under 2 points), runs the pipeline on
it (ingest, figures, offline QA, dataset) in a work folder that later runs reuse, trains the preset, and
scores the held-out papers' questions:

- ``defect_accuracy``: the defect claim of each answer (``scoring.defect_claim``) against the gold label,
  for each context level; ``none`` is pixels only, since the question then carries no text about the sample;
- ``blind_defect_accuracy``: the same model with every image replaced by a uniform grey one: if it is no
  better than ``majority_rate`` the model's accuracy comes from the pixels, not from the question;
- ``majority_rate``: the share of the majority label among the eval defect questions;
- ``token_f1``: answers against the reference answers (all question types).

bench train times training steps on synthetic batches of realistic length (image tokens + text) on
whatever device is there: samples/s, tokens/s, MFU (notes/training.md §4) and peak memory.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from glassllava.params import CONTEXT_LEVELS, DataLayout, ModelParams, Params

log = logging.getLogger(__name__)


def build_bench_data(work: Path, papers: int, seed: int, eval_fraction: float, progress=None, dataset=None) -> DataLayout:
    """The pipeline up to the dataset on a generated corpus in ``work`` (incremental: a second call is quick)."""
    from glassllava.dataset import build_dataset
    from glassllava.figures import run_figures
    from glassllava.ingest import run_ingest
    from glassllava.params import CorpusParams, DatasetParams, FiguresParams, GeneratedCorpusParams, IngestParams, QAParams
    from glassllava.qa import run_qa
    from glassllava.synth import generate_corpus

    layout = DataLayout(work / "data")
    corpus = CorpusParams(sources=["generated"], inbox=str(work / "inbox"), generated=GeneratedCorpusParams(papers=papers, seed=seed))
    if not (layout.corpus / "manifest.json").is_file():
        generate_corpus(layout.corpus, papers=papers, seed=seed)
    run_ingest(corpus, IngestParams(), layout, progress=progress)
    run_figures(FiguresParams(), layout, progress=progress)
    run_qa(QAParams(eval_fraction=eval_fraction, generator="offline"), layout, generator="offline", progress=progress)
    build_dataset(dataset or DatasetParams(), layout)
    return layout


def _rate(values: list[bool]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def score_answers(rows: list[dict], answers: list[str]) -> dict:
    """Defect accuracy by context level, token F1, and the counts behind them."""
    from glassllava.scoring import defect_claim, token_f1

    by_level: dict[str, list[bool]] = defaultdict(list)
    unclear = 0
    for row, answer in zip(rows, answers):
        if row["question_type"] != "defect_detection":
            continue
        claim = defect_claim(answer, row.get("question"))  # the question's polarity: "free of defects?" vs "any defects?"
        unclear += claim is None
        by_level[row["context_level"]].append(claim is not None and claim == row["defect_present"])
    f1 = [token_f1(a, r["answer"]) for r, a in zip(rows, answers)]
    return {
        "defect_accuracy": {level: _rate(by_level[level]) for level in CONTEXT_LEVELS},
        "defect_questions": {level: len(by_level[level]) for level in CONTEXT_LEVELS},
        "defect_unclear_answers": unclear,
        "token_f1": round(statistics.mean(f1), 4) if f1 else None,
    }


def run_learn_benchmark(params: Params, work: Path, *, papers: int = 30, seed: int = 7, eval_fraction: float = 0.45, progress=None) -> dict:
    """Train ``params.model.preset`` on a generated corpus and score the held-out papers (see the module docstring)."""
    from glassllava.generate import answer_questions
    from glassllava.train import Recipe, read_conversations

    t0 = time.perf_counter()
    layout = build_bench_data(work, papers, seed, eval_fraction, progress=progress, dataset=params.dataset)
    prep_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    recipe = Recipe(params, layout, model_out=work / "model", register=False, track=False)
    report = recipe.run()
    train_s = time.perf_counter() - t1
    eval_rows = read_conversations(layout, "eval")
    rows = [{**r["turns"][0], "image": r["image_path"]} for r in eval_rows]
    items = [{"image": r["image"], "question": r["question"]} for r in rows]
    t2 = time.perf_counter()
    from glassllava.model import inference_dtype

    device = next(recipe.hf.parameters()).device.type
    model, processor = recipe.hf.to(inference_dtype(device)), recipe.built.processor  # as generate.load serves it
    max_new = params.train.max_new_tokens
    answers = [a.text for a in answer_questions(model, processor, items, max_new_tokens=max_new, progress=progress and (lambda d, n: progress("answering", d, n)))]
    defect_rows = [r for r in rows if r["question_type"] == "defect_detection"]
    blind = [a.text for a in answer_questions(model, processor, [{"image": r["image"], "question": r["question"]} for r in defect_rows],
                                              max_new_tokens=max_new, blank_image=True,
                                              progress=progress and (lambda d, n: progress("answering blind", d, n)))]
    score_s = time.perf_counter() - t2
    scored, blind_scored = score_answers(rows, answers), score_answers(defect_rows, blind)
    labels = [r["defect_present"] for r in defect_rows]
    majority = max(sum(labels), len(labels) - sum(labels)) / len(labels) if labels else None
    n_none = scored["defect_questions"]["none"]
    return {
        "preset": params.model.preset,
        "defect_accuracy": scored["defect_accuracy"],
        "blind_defect_accuracy": blind_scored["defect_accuracy"],
        "majority_rate": round(majority, 4) if majority is not None else None,
        "token_f1": scored["token_f1"],
        "n_eval_questions": len(rows),
        "n_eval_defect_questions": scored["defect_questions"],
        "points_per_question_at_none": round(100 / n_none, 2) if n_none else None,
        "defect_unclear_answers": {"model": scored["defect_unclear_answers"], "blind": blind_scored["defect_unclear_answers"]},
        "n_train_conversations": len(recipe.samples["train"]),
        "n_align_conversations": len(recipe.samples["align"]),
        "loss_curve": [{"step": p["step"], "stage": p["stage"], "loss": p["loss"]} for p in report.loss_curve],
        "eval_loss": report.eval_loss,
        "examples": [{"question": r["question"], "reference": r["answer"], "answer": a} for r, a in list(zip(rows, answers))[:8]],
        "train": {"samples_per_s": report.samples_per_s, "tokens_per_s": report.tokens_per_s, "mfu": report.mfu, "peak_source": report.peak_source,
                  "stages": report.stages, "batch": report.batch},
        "corpus": {"papers": papers, "seed": seed, "eval_fraction": eval_fraction},
        "data_prep_s": round(prep_s, 1),
        "train_s": round(train_s, 1),
        "score_s": round(score_s, 1),
        "wall_s": round(train_s + score_s, 1),  # training and scoring; the corpus build is data_prep_s
        "device": report.device,
        "threads": torch.get_num_threads(),
    }


# ---- bench train --------------------------------------------------------------------------------
def run_train_benchmark(model_params: ModelParams, *, batch: int, steps: int = 10, warmup: int = 2, text_tokens: int = 200,
                        random_init: bool = False, gradient_checkpointing: bool = False, lr: float = 1e-5, precision: str = "auto") -> dict:
    """Time ``steps`` optimizer steps (after ``warmup``) of the recipe's own loss on synthetic batches."""
    from glassllava.model import apply_lora, build_model
    from glassllava.train import AnswerLoss, device_peak_flops, lm_matmul_params, peak_memory_gib, sample_flops, uses_bf16_autocast

    device = "cuda" if torch.cuda.is_available() else "cpu"
    built = build_model(model_params, random_init=random_init)
    model = built.model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if built.preset.lora:
        model = apply_lora(model, model_params)
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    hf.model.vision_tower.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, fused=True)
    cfg = hf.config
    n_img = cfg.image_seq_length
    seq = n_img + text_tokens + 8
    vocab = cfg.text_config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, min(vocab, 30000), (batch, seq), generator=gen)
    ids[:, 4 : 4 + n_img] = cfg.image_token_id
    labels = ids.clone()
    labels[:, : 4 + n_img + text_tokens // 2] = -100  # the prompt and image are not supervised; half the text is the answer
    mask = torch.ones_like(ids)
    with torch.no_grad():
        pixel = torch.randn(batch, 3, built.preset.image_size, built.preset.image_size)
        from glassllava.train import tower_features

        feats = tower_features(hf, pixel.to(device, next(hf.model.vision_tower.parameters()).dtype)).float()
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    loss_fn = AnswerLoss(model)
    autocast = uses_bf16_autocast(device, precision)
    text = cfg.text_config
    n_params = lm_matmul_params(model)
    flops_per_step = batch * sample_flops(seq, n_params=n_params, layers=text.num_hidden_layers, width=text.hidden_size, trains_lm=not built.preset.lora)
    losses = []

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(ids, mask, labels, feats)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(warmup):
        losses.append(step())
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        losses.append(step())
    if device == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t
    peak, source = device_peak_flops(device, bf16=autocast)
    final = float(losses[-1])
    return {
        "preset": model_params.preset, "random_init": random_init, "batch": batch, "seq_len": seq, "image_tokens": n_img, "steps": steps,
        "samples_per_s": round(batch * steps / sec, 3), "tokens_per_s": round(batch * seq * steps / sec, 1),
        "step_s": round(sec / steps, 4), "mfu": round(flops_per_step * steps / sec / peak, 5), "peak_flops": peak, "peak_source": source,
        "peak_mem_gib": round(peak_memory_gib(device), 3), "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads(), "trainable_params": sum(p.numel() for p in trainable), "lm_matmul_params": n_params,
        "gradient_checkpointing": gradient_checkpointing, "precision": "bf16-autocast" if autocast else "fp32", "loss_finite": math.isfinite(final), "final_loss": round(final, 4),
    }
