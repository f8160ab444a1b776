"""``glassllava bench learn``: does the model learn (``glassllava.train_bench`` times the steps).

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
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from glassllava.params import CONTEXT_LEVELS, DataLayout, Params

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
