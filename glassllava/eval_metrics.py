"""Evaluation numbers: every system row's mean (or rate) per metric, with 95 % intervals from a bootstrap over
IMAGES, broken down the way the paper reports them; defect-detection accuracy, precision, recall and F1; which
differences between rows are real; the headline for ``reports/eval.json`` and per-level tables for DVC plots.

Inputs are the evaluate stage's two tables (``schemas.EVAL_ANSWERS_SCHEMA``, ``schemas.EVAL_JUDGMENTS_SCHEMA``),
as ``pyarrow.Table``, pandas ``DataFrame`` or lists of dicts.

Rules
-----
- The unit of resampling is the image (``image_sha``): all questions about one image are drawn together, so
  questions about the same image, which share their errors, do not pass for independent evidence. Every row,
  metric and cell is resampled with the *same* image draws (``rng = numpy.random.default_rng(seed)``, one
  multinomial draw of image counts per resample), so two rows can be compared pairwise.
- A cell's estimate is the pooled mean over its questions, ``sum(score) / n``; in a resample each image's sum
  and count are weighted by how often it was drawn. The interval is the 2.5 and 97.5 percentiles of the
  resampled estimates (resamples with no question of the cell are left out); a cell with fewer than two images
  has no interval (None), and so is never called different from another.
- A judgment with ``ok = false`` (or, defensively, a null score) is a failure of the judge: counted in
  ``failures`` and left out of every mean, never scored as 0. A row that gave no answer is the row's failure,
  not the judge's: it is scored at the bottom of the scale and counted in ``empty_answers`` (the judge's
  ``{"empty_answer": true}``). A judgment whose (row, qa_id) has no answer row is counted in
  ``unmatched`` and ignored; a repeated (row, qa_id, metric) keeps its first judgment (``duplicates``
  counts the rest; the judge-variance repeats belong in their own table).
- Breakdowns: ``context_level`` (none, low, moderate, high), ``question_type``, ``complexity`` (simple,
  complex) and ``context_type`` (a question counts in each of its context types; questions without context
  types are in no context_type cell).
- Defect metrics (``defect``, ``proxy_defect``): ``accuracy`` is the rate of correct judgments (the metric's
  mean: score 1 = correct). Precision, recall and F1 (positive = a defect is present) compare each answer's
  *claim* with the gold ``defect_present``. **Assumption about the claim:** it is read from the judgment's
  ``detail`` JSON, key ``"claim"`` (true / false / null), else ``"claims_defect"`` (1 / 0 / true / false /
  null, the LLM judge's field); a null claim is unreadable and left out of the confusion counts
  (``n_claims`` counts the readable ones). Where detail has neither key, the claim is inferred from a 0/1
  score and the gold label (correct: claim = gold; wrong: claim = not gold).
- ``relative`` (candidate / reference × 100 per question) is averaged per question like any metric; where
  the details carry both 1-10 scores (keys ``candidate_score`` / ``reference_score``, or ``candidate`` /
  ``reference``, or ``scores: [reference, candidate]`` as LLaVA orders them) the cell also has LLaVA's
  ``ratio_of_means`` = mean(candidate) / mean(reference) × 100, with its interval.
- Metric names starting ``proxy_`` are offline proxies (``metric_kind`` says ``proxy``), not the LLM judge.

Everything ``summarise`` returns is JSON-serialisable (``None`` where a number is undefined, never NaN).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

CONFIDENCE = 0.95
ROW_ORDER = ("model", "blind", "base", "majority")  # then vision:<id> rows, then any other, by name
CONTEXT_LEVELS = ("none", "low", "moderate", "high")
QUESTION_TYPES = ("description", "feature_identification", "defect_detection", "complex_reasoning")
COMPLEXITIES = ("simple", "complex")
BREAKDOWNS = ("context_level", "question_type", "complexity", "context_type")
LLM_METRICS = ("quality", "relative", "features", "defect")
PROXY_METRICS = ("proxy_token_f1", "proxy_rouge_l", "proxy_feature_recall", "proxy_feature_score", "proxy_hallucination", "proxy_defect")
DEFECT_METRICS = ("defect", "proxy_defect")
_METRIC_ORDER = LLM_METRICS + PROXY_METRICS
_LEVEL_ORDER = {"context_level": CONTEXT_LEVELS, "question_type": QUESTION_TYPES, "complexity": COMPLEXITIES}

# What a metric is and how it reads; used by the report too.
METRIC_INFO: dict[str, dict[str, Any]] = {
    "quality": {"label": "Overall quality", "scale": "0-100", "lo": 0.0, "hi": 100.0},
    "relative": {"label": "Relative score (candidate / reference × 100)", "scale": "0-100+", "lo": 0.0, "hi": None},
    "features": {"label": "Feature identification", "scale": "1-4", "lo": 1.0, "hi": 4.0},
    "defect": {"label": "Defect detection (correct rate)", "scale": "0/1", "lo": 0.0, "hi": 1.0},
    "proxy_token_f1": {"label": "Token F1 vs reference", "scale": "0-1", "lo": 0.0, "hi": 1.0},
    "proxy_rouge_l": {"label": "ROUGE-L F vs reference", "scale": "0-1", "lo": 0.0, "hi": 1.0},
    "proxy_feature_recall": {"label": "Recall of gold features", "scale": "0-1", "lo": 0.0, "hi": 1.0},
    "proxy_feature_score": {"label": "Feature score (binned recall)", "scale": "1-4", "lo": 1.0, "hi": 4.0},
    "proxy_hallucination": {"label": "Hallucinated features (lower is better)", "scale": "count", "lo": 0.0, "hi": None},
    "proxy_defect": {"label": "Defect detection, rule-based claim (correct rate)", "scale": "0/1", "lo": 0.0, "hi": 1.0},
}
LOWER_IS_BETTER = frozenset({"proxy_hallucination"})


def metric_kind(metric: str) -> str:
    """``proxy`` (offline proxies, ``proxy_*``), ``truth`` (``truth_*``) or ``llm`` (the LLM judge's metrics)."""
    if metric.startswith("proxy_"):
        return "proxy"
    if metric.startswith("truth_"):
        return "truth"
    return "llm"


def row_sort_key(row: str) -> tuple:
    if row in ROW_ORDER:
        return (0, ROW_ORDER.index(row), "")
    return (1, 0, row) if row.startswith("vision:") else (2, 0, row)


def metric_sort_key(metric: str) -> tuple:
    return (_METRIC_ORDER.index(metric), "") if metric in _METRIC_ORDER else (len(_METRIC_ORDER), metric)


def level_sort_key(by: str, level: str) -> tuple:
    order = _LEVEL_ORDER.get(by, ())
    return (order.index(level), "") if level in order else (len(order), level)


def records(table: Any) -> list[dict]:
    """Rows of a pyarrow Table, pandas DataFrame or iterable of dicts, as a list of dicts."""
    if table is None:
        return []
    if hasattr(table, "to_pylist"):
        return table.to_pylist()
    if hasattr(table, "to_dict") and hasattr(table, "columns"):
        return table.to_dict("records")
    return [dict(r) for r in table]


def parse_detail(detail: Any) -> dict:
    """A judgment's detail JSON as a dict ({} when empty or not a JSON object)."""
    if isinstance(detail, dict):
        return detail
    if not detail:
        return {}
    try:
        value = json.loads(detail)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _as_bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return bool(value) if value in (0, 1) else None
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "yes", "1", "present", "defect"):
            return True
        if v in ("false", "no", "0", "absent", "none"):
            return False
    return None


def defect_claim(detail: Any, score: float | None, gold: bool) -> bool | None:
    """What an answer claims about defects, from its judgment: detail ``claim``, else ``claims_defect``, else
    inferred from a 0/1 score against the gold label; None when unreadable."""
    d = parse_detail(detail)
    for key in ("claim", "claims_defect"):
        if key in d:
            return _as_bool(d[key])
    if score is None or (isinstance(score, float) and math.isnan(score)) or score not in (0, 1):
        return None
    return bool(gold) if score == 1 else not bool(gold)


def _is_empty_answer(detail: Any) -> bool:
    """The row gave no answer (the judge's ``{"empty_answer": true}``: scored at the bottom of the scale)."""
    d = parse_detail(detail)
    return bool(d.get("empty_answer")) or str(d.get("error") or "").startswith("empty_answer")


def _relative_pair(detail: Any) -> tuple[float, float] | None:
    """(candidate, reference) 1-10 scores of a relative judgment, where the detail carries them."""
    d = parse_detail(detail)
    for cand, ref in (("candidate_score", "reference_score"), ("candidate", "reference")):
        c, r = d.get(cand), d.get(ref)
        if isinstance(c, (int, float)) and isinstance(r, (int, float)) and not isinstance(c, bool) and not isinstance(r, bool):
            return float(c), float(r)
    s = d.get("scores")
    if isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in s):
        return float(s[1]), float(s[0])
    return None


def _num(x: Any, digits: int = 6) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, digits)


def _weights(n_images: int, bootstrap: int, seed: int) -> np.ndarray:
    """(bootstrap × n_images) image counts: each resample draws n_images images with replacement."""
    rng = np.random.default_rng(seed)
    if n_images == 0:
        return np.zeros((bootstrap, 0))
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=bootstrap).astype(np.float64)


def _ci(draws: np.ndarray) -> tuple[float | None, float | None]:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return None, None
    alpha = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(draws, [alpha, 100 - alpha])
    return _num(lo), _num(hi)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


class _Judged:
    """One (row, metric): arrays over its judgments and the cell masks."""

    def __init__(self, metric: str, entries: list[dict], n_images: int):
        self.metric = metric
        self.n_images = n_images
        self.img = np.array([e["img"] for e in entries], dtype=np.int64)
        self.ok = np.array([e["ok"] for e in entries], dtype=bool)
        self.score = np.array([e["score"] if e["ok"] else np.nan for e in entries], dtype=np.float64)
        self.empty = np.array([_is_empty_answer(e["detail"]) for e in entries], dtype=bool)
        self.entries = entries
        self.is_defect = metric in DEFECT_METRICS
        if self.is_defect:
            claims = [e["claim"] for e in entries]
            self.claim_ok = self.ok & np.array([c is not None for c in claims], dtype=bool)
            self.claim = np.array([bool(c) for c in claims], dtype=bool)
            self.gold = np.array([e["gold"] for e in entries], dtype=bool)
        self.pairs = None
        if metric == "relative":
            pairs = [_relative_pair(e["detail"]) if e["ok"] else None for e in entries]
            if any(p is not None for p in pairs):
                self.pair_ok = np.array([p is not None for p in pairs], dtype=bool)
                self.pairs = np.array([p if p is not None else (0.0, 0.0) for p in pairs], dtype=np.float64)

    def vectors(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Per-image sums of the cell ``mask``: n (count), sum (scores), and tp/fp/fn/tn or cand/ref where they apply."""
        n = self.n_images
        sel = mask & self.ok
        out = {"n": np.bincount(self.img[sel], minlength=n).astype(np.float64),
               "sum": np.bincount(self.img[sel], weights=self.score[sel], minlength=n)}
        if self.is_defect:
            c = mask & self.claim_ok
            for key, hit in (("tp", self.claim & self.gold), ("fp", self.claim & ~self.gold),
                             ("fn", ~self.claim & self.gold), ("tn", ~self.claim & ~self.gold)):
                out[key] = np.bincount(self.img[c & hit], minlength=n).astype(np.float64)
        if self.pairs is not None:
            p = mask & self.pair_ok
            out["cand"] = np.bincount(self.img[p], weights=self.pairs[p, 0], minlength=n)
            out["ref"] = np.bincount(self.img[p], weights=self.pairs[p, 1], minlength=n)
        return out


def _stats(v: dict[str, np.ndarray]) -> dict[str, np.ndarray | float]:
    """The statistics of per-image sums ``v``: arrays work too (rows = resamples)."""
    out: dict[str, Any] = {"mean": _ratio(v["sum"], v["n"])}
    if "tp" in v:
        tp, fp, fn, tn = v["tp"], v["fp"], v["fn"], v["tn"]
        out["accuracy"] = out["mean"]
        out["precision"] = _ratio(tp, tp + fp)
        out["recall"] = _ratio(tp, tp + fn)
        out["f1"] = _ratio(2 * tp, 2 * tp + fp + fn)
        out["claim_accuracy"] = _ratio(tp + tn, tp + fp + fn + tn)
    if "cand" in v:
        out["ratio_of_means"] = _ratio(v["cand"] * 100, v["ref"])
    return out


_SUM_KEYS = ("n", "sum", "tp", "fp", "fn", "tn", "cand", "ref")


def _cell(judged: _Judged, mask: np.ndarray, W: np.ndarray) -> tuple[dict, dict]:
    """A cell's numbers (mean, lo, hi, n, n_images, failures and the defect / relative extras) and its
    per-image sums (sparse, for ``compare``)."""
    v = judged.vectors(mask)
    keys = [k for k in _SUM_KEYS if k in v]
    point = _stats({k: v[k].sum() for k in keys})
    boot = _stats(dict(zip(keys, (W @ np.stack([v[k] for k in keys], axis=1)).T)))
    cell: dict[str, Any] = {"n": int(v["n"].sum()), "n_images": int((v["n"] > 0).sum()), "failures": int((mask & ~judged.ok).sum()),
                            "empty_answers": int((mask & judged.empty).sum())}
    for stat in point:
        value = _num(point[stat])
        # one image says nothing about the spread between images: no interval rather than a zero-width one
        lo, hi = _ci(boot[stat]) if value is not None and cell["n_images"] >= 2 else (None, None)
        prefix = "" if stat == "mean" else f"{stat}_"
        cell[stat] = value
        cell[f"{prefix}lo"], cell[f"{prefix}hi"] = lo, hi
    if "tp" in v:
        cell.update({k: int(v[k].sum()) for k in ("tp", "fp", "fn", "tn")})
        cell["n_claims"] = cell["tp"] + cell["fp"] + cell["fn"] + cell["tn"]
    if "cand" in v:
        cell["n_pairs"] = int((mask & judged.pair_ok).sum())
    idx = np.flatnonzero(v["n"] + sum(v[k] for k in keys if k not in ("n", "sum")))
    sparse = {"img": idx.tolist(), **{k: [_num(x) for x in v[k][idx]] for k in keys}}
    return cell, sparse


def summarise(answers: Any, judgments: Any, *, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Every row × metric: mean (or rate), 95 % image-bootstrap interval, n, failures; per context level,
    question type, complexity and context type; defect accuracy / precision / recall / F1; every pair of rows
    compared per metric (``compare``). See the module docstring for the rules. Returns::

        {"version", "bootstrap", "seed", "confidence", "images": [image_sha, ...] (the resampling order),
         "n_images", "n_questions", "rows": [...], "metrics": [...], "kinds": {metric: llm|proxy|truth},
         "judges": {metric: {judge: count}}, "unmatched", "duplicates",
         "cells": {row: {metric: {"all": cell, "context_level": {level: cell}, "question_type": {...},
                                  "complexity": {...}, "context_type": {...}}}},
         "clusters": {row: {metric: {cell key ("all", "context_level=none", ...): per-image sums}}},
         "comparisons": [compare(...) for every metric and pair of rows, overall]}

    A cell: ``mean, lo, hi, n, n_images, failures, empty_answers``; defect metrics add ``accuracy`` (= mean),
    ``precision, recall, f1, claim_accuracy`` each with ``<stat>_lo/_hi``, and ``tp, fp, fn, tn, n_claims``;
    ``relative`` adds ``ratio_of_means`` (+ ``_lo/_hi``, ``n_pairs``) where the details have both scores."""
    answer_rows = records(answers)
    images = sorted({a["image_sha"] for a in answer_rows})
    img_index = {s: i for i, s in enumerate(images)}
    questions = {a["qa_id"] for a in answer_rows}
    by_answer = {(a["row"], a["qa_id"]): a for a in answer_rows}
    groups: dict[tuple[str, str], list[dict]] = {}
    seen: set[tuple[str, str, str]] = set()
    judges: dict[str, dict[str, int]] = {}
    unmatched = duplicates = 0
    for j in records(judgments):
        a = by_answer.get((j["row"], j["qa_id"]))
        if a is None:
            unmatched += 1
            continue
        key = (j["row"], j["qa_id"], j["metric"])
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        score = j.get("score")
        ok = bool(j.get("ok")) and score is not None and not (isinstance(score, float) and math.isnan(score))
        entry = {"img": img_index[a["image_sha"]], "ok": ok, "score": float(score) if ok else None, "detail": j.get("detail") or "",
                 "gold": bool(a["defect_present"]), "answer": a, "qa_id": j["qa_id"]}
        if j["metric"] in DEFECT_METRICS:
            entry["claim"] = defect_claim(entry["detail"], entry["score"], entry["gold"]) if ok else None
        groups.setdefault((j["row"], j["metric"]), []).append(entry)
        judges.setdefault(j["metric"], {}).setdefault(j.get("judge") or "", 0)
        judges[j["metric"]][j.get("judge") or ""] += 1

    rows = sorted({a["row"] for a in answer_rows}, key=row_sort_key)
    metrics = sorted({m for _, m in groups}, key=metric_sort_key)
    W = _weights(len(images), bootstrap, seed)
    cells: dict[str, dict] = {}
    clusters: dict[str, dict] = {}
    for (row, metric), entries in sorted(groups.items(), key=lambda kv: (row_sort_key(kv[0][0]), metric_sort_key(kv[0][1]))):
        judged = _Judged(metric, entries, len(images))
        everything = np.ones(len(entries), dtype=bool)
        out: dict[str, Any] = {}
        sums: dict[str, dict] = {}
        out["all"], sums["all"] = _cell(judged, everything, W)
        for by in BREAKDOWNS:
            if by == "context_type":
                levels = {t for e in entries for t in (e["answer"]["context_types"] or [])}
            else:
                levels = {e["answer"][by] for e in entries}
            out[by] = {}
            for level in sorted(levels, key=lambda lv: level_sort_key(by, lv)):
                if by == "context_type":
                    mask = np.array([level in (e["answer"]["context_types"] or []) for e in entries], dtype=bool)
                else:
                    mask = np.array([e["answer"][by] == level for e in entries], dtype=bool)
                out[by][level], sums[f"{by}={level}"] = _cell(judged, mask, W)
        cells.setdefault(row, {})[metric] = out
        clusters.setdefault(row, {})[metric] = sums

    summary = {
        "version": 1, "bootstrap": int(bootstrap), "seed": int(seed), "confidence": CONFIDENCE, "images": images,
        "n_images": len(images), "n_questions": len(questions), "rows": rows, "metrics": metrics,
        "kinds": {m: metric_kind(m) for m in metrics}, "judges": judges, "unmatched": unmatched, "duplicates": duplicates,
        "cells": cells, "clusters": clusters,
    }
    comparisons = []
    for metric in metrics:
        have = [r for r in rows if metric in cells.get(r, {})]
        for i, a in enumerate(have):
            for b in have[i + 1:]:
                comparisons.append(compare(summary, a, b, metric, _weights_cache=W))
    summary["comparisons"] = comparisons
    return summary


def _dense(sparse: dict, n_images: int) -> dict[str, np.ndarray]:
    idx = np.asarray(sparse["img"], dtype=np.int64)
    out = {}
    for k in _SUM_KEYS:
        if k in sparse:
            v = np.zeros(n_images)
            v[idx] = np.asarray([x or 0.0 for x in sparse[k]], dtype=np.float64)
            out[k] = v
    return out


def cell(summary: dict, row: str, metric: str, by: str | None = None, level: str | None = None) -> dict | None:
    """One cell of a summary (None where the row has no such metric or level)."""
    m = summary["cells"].get(row, {}).get(metric)
    if m is None:
        return None
    return m["all"] if by is None else m.get(by, {}).get(level)


def compare(summary: dict, row_a: str, row_b: str, metric: str, *, stat: str = "mean", by: str | None = None,
            level: str | None = None, _weights_cache: np.ndarray | None = None) -> dict:
    """Whether ``row_a`` and ``row_b`` differ on ``metric`` (``stat``: mean, or a defect metric's accuracy,
    precision, recall, f1; ``by``/``level``: one cell of a breakdown, default all questions).

    ``different`` is True only when the two 95 % intervals do not overlap: the conservative rule the report
    uses to call a difference a difference. Beside it, a paired bootstrap over images (the same image draws
    for both rows): ``difference`` = a − b with its 95 % interval ``diff_lo, diff_hi``, and
    ``paired_excludes_zero``. ``better`` names the better row when ``different`` (lower is better for
    ``proxy_hallucination``), else None."""
    key = "all" if by is None else f"{by}={level}"
    stat_key = "mean" if stat == "mean" or (stat == "accuracy" and metric in DEFECT_METRICS) else stat
    result: dict[str, Any] = {"row_a": row_a, "row_b": row_b, "metric": metric, "stat": stat, "by": by, "level": level,
                              "a": None, "b": None, "difference": None, "diff_lo": None, "diff_hi": None,
                              "intervals_overlap": None, "paired_excludes_zero": None, "different": False, "better": None}
    ca, cb = cell(summary, row_a, metric, by, level), cell(summary, row_b, metric, by, level)
    if ca is None or cb is None:
        return result
    lo_key, hi_key = ("lo", "hi") if stat_key == "mean" else (f"{stat_key}_lo", f"{stat_key}_hi")
    a = {"value": ca.get(stat_key), "lo": ca.get(lo_key), "hi": ca.get(hi_key), "n": ca["n"]}
    b = {"value": cb.get(stat_key), "lo": cb.get(lo_key), "hi": cb.get(hi_key), "n": cb["n"]}
    result["a"], result["b"] = a, b
    if a["value"] is None or b["value"] is None:
        return result
    n = summary["n_images"]
    W = _weights_cache if _weights_cache is not None else _weights(n, summary["bootstrap"], summary["seed"])
    va = _dense(summary["clusters"][row_a][metric][key], n)
    vb = _dense(summary["clusters"][row_b][metric][key], n)

    def boot(v):
        keys = list(v)
        return _stats(dict(zip(keys, (W @ np.stack([v[k] for k in keys], axis=1)).T)))[stat_key]

    diff = boot(va) - boot(vb)
    result["difference"] = _num(a["value"] - b["value"])
    result["diff_lo"], result["diff_hi"] = _ci(diff)
    if None not in (a["lo"], a["hi"], b["lo"], b["hi"]):
        overlap = a["lo"] <= b["hi"] and b["lo"] <= a["hi"]
        result["intervals_overlap"] = overlap
        result["different"] = not overlap
    if result["diff_lo"] is not None:
        result["paired_excludes_zero"] = result["diff_lo"] > 0 or result["diff_hi"] < 0
    if result["different"]:
        higher = row_a if a["value"] > b["value"] else row_b
        lower = row_b if higher == row_a else row_a
        result["better"] = lower if metric in LOWER_IS_BETTER else higher
    return result


def comparison(summary: dict, row_a: str, row_b: str, metric: str) -> dict | None:
    """The overall comparison of two rows that ``summarise`` made (either order), as (row_a, row_b) asked."""
    for c in summary.get("comparisons", []):
        if c["metric"] != metric:
            continue
        if (c["row_a"], c["row_b"]) == (row_a, row_b):
            return c
        if (c["row_a"], c["row_b"]) == (row_b, row_a):
            flip = dict(c, row_a=row_a, row_b=row_b, a=c["b"], b=c["a"])
            for k in ("difference", "diff_lo", "diff_hi"):
                flip[k] = None if c[k] is None else _num(-c[k])
            flip["diff_lo"], flip["diff_hi"] = flip["diff_hi"], flip["diff_lo"]
            return flip
    return None


# ---- reports/eval.json and the DVC plots --------------------------------------------------------------
MODEL_ROW = "model"
_HEADLINE_STATS = ("mean", "lo", "hi", "n", "failures")
_DEFECT_STATS = ("accuracy", "accuracy_lo", "accuracy_hi", "precision", "recall", "f1", "n_claims")


def headline_key(row: str) -> str:
    """A row name fit for a flat metrics key (dots and other punctuation → ``_``): vision:gpt-4.1 → vision:gpt-4_1."""
    return re.sub(r"[^A-Za-z0-9_:\-]", "_", row)


def defect_metric(summary: dict, row: str = MODEL_ROW) -> str | None:
    """The defect metric the headline uses: the LLM judge's ``defect`` where it has judgments, else ``proxy_defect``."""
    for metric in DEFECT_METRICS:
        c = cell(summary, row, metric)
        if c is not None and c["n"]:
            return metric
    return None


def headline(summary: dict) -> dict[str, float | int]:
    """Flat numbers for ``reports/eval.json`` (DVC metrics; keys with no number are left out):

    - ``<row>.<metric>.{mean,lo,hi,n,failures}`` for every row and metric (row names through ``headline_key``);
      defect metrics add ``.{accuracy,accuracy_lo,accuracy_hi,precision,recall,f1,n_claims}``;
    - the trained model's (row ``model``): ``defect_accuracy`` (+ ``_lo``, ``_hi``; from ``defect``, else
      ``proxy_defect``; ``defect_accuracy_is_proxy`` 1/0 says which), ``defect_accuracy_<level>`` per context
      level; ``quality`` (+ ``_lo``, ``_hi``, ``_simple``, ``_complex``: the LLM judge's 0-100) and
      ``proxy_quality`` (the same from 100 × ``proxy_rouge_l``, an offline proxy); ``features`` /
      ``proxy_feature_score`` (1-4);
    - ``n_questions``, ``n_images``, ``failures`` (all rows and metrics), ``bootstrap``."""
    out: dict[str, float | int] = {}

    def put(key: str, value) -> None:
        if value is not None:
            out[key] = value

    for row in summary["rows"]:
        for metric, m in summary["cells"].get(row, {}).items():
            c = m["all"]
            base = f"{headline_key(row)}.{metric}"
            for stat in _HEADLINE_STATS:
                put(f"{base}.{stat}", c.get(stat))
            if metric in DEFECT_METRICS:
                for stat in _DEFECT_STATS:
                    put(f"{base}.{stat}", c.get(stat))
            if c.get("ratio_of_means") is not None:
                put(f"{base}.ratio_of_means", c["ratio_of_means"])
    dm = defect_metric(summary)
    if dm is not None:
        c = cell(summary, MODEL_ROW, dm)
        put("defect_accuracy", c["accuracy"])
        put("defect_accuracy_lo", c["accuracy_lo"])
        put("defect_accuracy_hi", c["accuracy_hi"])
        out["defect_accuracy_is_proxy"] = int(dm == "proxy_defect")
        for level, lc in summary["cells"][MODEL_ROW][dm]["context_level"].items():
            put(f"defect_accuracy_{headline_key(level)}", lc["accuracy"])
    for name, metric, scale in (("quality", "quality", 1.0), ("proxy_quality", "proxy_rouge_l", 100.0),
                                ("features", "features", 1.0), ("proxy_feature_score", "proxy_feature_score", 1.0)):
        c = cell(summary, MODEL_ROW, metric)
        if c is None or c["mean"] is None:
            continue
        for suffix, stat in (("", "mean"), ("_lo", "lo"), ("_hi", "hi")):
            put(name + suffix, None if c[stat] is None else _num(c[stat] * scale))
        for level, lc in summary["cells"][MODEL_ROW][metric]["complexity"].items():
            put(f"{name}_{headline_key(level)}", None if lc["mean"] is None else _num(lc["mean"] * scale))
    out["n_questions"] = summary["n_questions"]
    out["n_images"] = summary["n_images"]
    out["failures"] = sum(m["all"]["failures"] for r in summary["cells"].values() for m in r.values())
    out["bootstrap"] = summary["bootstrap"]
    return out


def level_table(summary: dict, by: str = "context_level", metrics: Iterable[str] | None = None) -> list[dict]:
    """A DVC-plots table (a list of flat dicts, CSV-ready): one line per row × metric × level of ``by``, in
    order: ``{"row", by, "metric", "value", "lo", "hi", "n"}``; value is the mean (a defect metric's accuracy).
    Levels with no judgment are left out; the all-questions value is not a level and is not in it."""
    wanted = None if metrics is None else set(metrics)
    out = []
    for metric in summary["metrics"]:
        if wanted is not None and metric not in wanted:
            continue
        for row in summary["rows"]:
            m = summary["cells"].get(row, {}).get(metric)
            if m is None:
                continue
            for level, c in m[by].items():
                if c["mean"] is None:
                    continue
                out.append({"row": row, by: level, "metric": metric, "value": c["mean"], "lo": c["lo"], "hi": c["hi"], "n": c["n"]})
    return out


def table_csv(rows: list[dict]) -> str:
    """A list of flat dicts as CSV text (columns of the first line; empty cells for None)."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return buf.getvalue()
