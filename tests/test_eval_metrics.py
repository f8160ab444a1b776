"""eval_metrics on data with known answers: interval coverage and width, clustering, precision/recall/F1 by hand,
failures left out and counted, breakdowns, comparisons, the headline and the DVC plots table."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from glassllava.eval_metrics import (
    compare,
    comparison,
    defect_claim,
    headline,
    level_table,
    metric_kind,
    summarise,
    table_csv,
)
from glassllava.schemas import EVAL_ANSWERS_SCHEMA, EVAL_JUDGMENTS_SCHEMA, table_from_rows


def answer(row: str, qa_id: str, image: str, *, level="none", qtype="description", complexity="simple", ctypes=(), gold=False) -> dict:
    return {"row": row, "qa_id": qa_id, "paper_sha": "p" * 64, "panel_id": f"panel-{image}", "image_sha": image, "question": "Q?",
            "reference": "R.", "question_type": qtype, "complexity": complexity, "context_level": level, "context_types": list(ctypes),
            "features": [], "defect_present": gold, "defect_types": [], "answer": "A.", "new_tokens": 3, "seconds": 0.1}


def judgment(row: str, qa_id: str, metric: str, score, *, ok: bool = True, detail: dict | None = None, judge: str = "offline") -> dict:
    return {"row": row, "qa_id": qa_id, "metric": metric, "judge": judge, "score": None if not ok else score, "ok": ok,
            "detail": json.dumps(detail or {}), "request_key": ""}


def bernoulli(p: float, n_images: int, per_image: int = 1, *, shared: bool = False, seed: int = 1, row: str = "model",
              metric: str = "proxy_token_f1"):
    """``n_images`` × ``per_image`` questions scored 0/1 with P(1) = p; ``shared``: every question of an image has the same score."""
    rng = np.random.default_rng(seed)
    answers, judgments = [], []
    for i in range(n_images):
        v = float(rng.random() < p)
        for k in range(per_image):
            q = f"q{i}-{k}"
            answers.append(answer(row, q, f"img{i}"))
            judgments.append(judgment(row, q, metric, v if shared else float(rng.random() < p)))
    return answers, judgments


def test_bernoulli_interval_covers_p_with_the_textbook_width():
    answers, judgments = bernoulli(0.7, 400)
    s = summarise(answers, judgments, bootstrap=2000, seed=0)
    c = s["cells"]["model"]["proxy_token_f1"]["all"]
    assert c["n"] == 400 and c["n_images"] == 400 and c["failures"] == 0
    assert c["lo"] <= 0.7 <= c["hi"] and c["lo"] <= c["mean"] <= c["hi"]
    half = (c["hi"] - c["lo"]) / 2
    textbook = 1.96 * np.sqrt(0.7 * 0.3 / 400)  # ≈ 0.045
    assert abs(half - textbook) < 0.006, (half, textbook)


def test_coverage_over_many_draws_is_near_95_percent():
    hits = 0
    for seed in range(60):
        answers, judgments = bernoulli(0.3, 120, seed=seed)
        c = summarise(answers, judgments, bootstrap=400, seed=seed)["cells"]["model"]["proxy_token_f1"]["all"]
        hits += c["lo"] <= 0.3 <= c["hi"]
    assert 50 <= hits <= 60, hits  # 95 % of 60 = 57; binomial spread


def test_clustered_questions_widen_the_interval_over_the_naive_one():
    answers, judgments = bernoulli(0.5, 40, per_image=10, shared=True, seed=3)  # 10 questions per image share a value
    clustered = summarise(answers, judgments, bootstrap=2000, seed=0)["cells"]["model"]["proxy_token_f1"]["all"]
    naive_answers = [dict(a, image_sha=a["qa_id"]) for a in answers]  # the same scores, each question its own "image"
    naive = summarise(naive_answers, judgments, bootstrap=2000, seed=0)["cells"]["model"]["proxy_token_f1"]["all"]
    assert clustered["mean"] == naive["mean"] and clustered["n"] == naive["n"] == 400
    assert clustered["n_images"] == 40 and naive["n_images"] == 400
    width_c, width_n = clustered["hi"] - clustered["lo"], naive["hi"] - naive["lo"]
    assert width_c > 2.2 * width_n, (width_c, width_n)  # √10 ≈ 3.2 in theory
    assert abs(width_c / 2 - 1.96 * np.sqrt(0.25 / 40)) < 0.04


def test_precision_recall_f1_by_hand_and_claims_from_detail():
    # gold:  P P P P P N N N N N  (P = defect present)
    # claim: P P P N N P N N N N  → TP 3, FN 2, FP 1, TN 4
    gold = [True] * 5 + [False] * 5
    claim = [True, True, True, False, False, True, False, False, False, False]
    answers = [answer("model", f"q{i}", f"img{i}", gold=g) for i, g in enumerate(gold)]
    judgments = [judgment("model", f"q{i}", "proxy_defect", float(c == g), detail={"claim": c}) for i, (g, c) in enumerate(zip(gold, claim))]
    c = summarise(answers, judgments, bootstrap=500, seed=0)["cells"]["model"]["proxy_defect"]["all"]
    assert (c["tp"], c["fp"], c["fn"], c["tn"], c["n_claims"]) == (3, 1, 2, 4, 10)
    assert c["accuracy"] == pytest.approx(0.7) and c["mean"] == pytest.approx(0.7)
    assert c["precision"] == pytest.approx(3 / 4)
    assert c["recall"] == pytest.approx(3 / 5)
    assert c["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))
    assert c["accuracy_lo"] <= 0.7 <= c["accuracy_hi"] and c["precision_lo"] <= 0.75 <= c["precision_hi"]


def test_defect_claim_reading():
    assert defect_claim('{"claim": true}', 0.0, False) is True
    assert defect_claim('{"claim": null}', 1.0, True) is None
    assert defect_claim('{"claims_defect": 0, "types": []}', 1.0, False) is False
    assert defect_claim('{"claims_defect": 1}', 0.0, False) is True
    assert defect_claim("{}", 1.0, True) is True  # inferred: correct → the gold label
    assert defect_claim("{}", 0.0, True) is False  # wrong → the opposite
    assert defect_claim("not json", None, True) is None


def test_majority_row_without_positive_claims_has_no_precision():
    answers = [answer("majority", f"q{i}", f"img{i}", gold=i % 3 == 0) for i in range(30)]
    judgments = [judgment("majority", f"q{i}", "defect", float(i % 3 != 0), detail={"claims_defect": 0}, judge="llm:x@y") for i in range(30)]
    c = summarise(answers, judgments, bootstrap=200, seed=0)["cells"]["majority"]["defect"]["all"]
    assert c["precision"] is None and c["recall"] == 0.0 and c["f1"] == 0.0 and c["accuracy"] == pytest.approx(20 / 30)


def test_failures_are_left_out_of_means_and_counted():
    answers = [answer("model", f"q{i}", f"img{i}", level="high" if i >= 3 else "none") for i in range(5)]
    judgments = [judgment("model", "q0", "quality", 80.0), judgment("model", "q1", "quality", 60.0), judgment("model", "q2", "quality", 40.0),
                 judgment("model", "q3", "quality", None, ok=False, detail={"error": "not JSON"}),
                 judgment("model", "q4", "quality", 0.0, ok=False)]  # a failure's stray score is not a zero either
    judgments.append(dict(judgments[0], score=10.0))  # a repeat: the first judgment counts
    judgments.append(judgment("ghost", "q0", "quality", 5.0))  # no answer row
    s = summarise(answers, judgments, bootstrap=200, seed=0)
    c = s["cells"]["model"]["quality"]["all"]
    assert c["mean"] == pytest.approx(60.0) and c["n"] == 3 and c["failures"] == 2
    high = s["cells"]["model"]["quality"]["context_level"]["high"]
    assert high["n"] == 0 and high["failures"] == 2 and high["mean"] is None and high["lo"] is None
    assert s["duplicates"] == 1 and s["unmatched"] == 1
    h = headline(s)
    assert h["model.quality.failures"] == 2 and h["failures"] == 2 and "quality" in h
    json.dumps(s, allow_nan=False)  # no NaN anywhere


def test_breakdowns_by_level_type_complexity_and_context_type():
    spec = [("none", "description", "simple", [], 0.2), ("low", "defect_detection", "simple", ["composition"], 0.4),
            ("moderate", "feature_identification", "complex", ["composition", "imaging"], 0.6),
            ("high", "complex_reasoning", "complex", ["composition", "imaging", "processing"], 0.8)]
    answers, judgments = [], []
    for i in range(40):
        level, qtype, cx, ctypes, v = spec[i % 4]
        answers.append(answer("model", f"q{i}", f"img{i // 2}", level=level, qtype=qtype, complexity=cx, ctypes=ctypes))
        judgments.append(judgment("model", f"q{i}", "proxy_rouge_l", v))
    m = summarise(answers, judgments, bootstrap=200, seed=0)["cells"]["model"]["proxy_rouge_l"]
    assert list(m["context_level"]) == ["none", "low", "moderate", "high"]
    assert [round(c["mean"], 6) for c in m["context_level"].values()] == [0.2, 0.4, 0.6, 0.8]
    assert list(m["question_type"]) == ["description", "feature_identification", "defect_detection", "complex_reasoning"]
    assert m["complexity"]["simple"]["mean"] == pytest.approx(0.3) and m["complexity"]["complex"]["mean"] == pytest.approx(0.7)
    assert m["context_type"]["composition"]["n"] == 30 and m["context_type"]["composition"]["mean"] == pytest.approx(0.6)
    assert m["context_type"]["processing"]["mean"] == pytest.approx(0.8) and m["context_type"]["processing"]["n"] == 10
    assert m["all"]["mean"] == pytest.approx(0.5)


def _two_rows(pa_: float, pb: float, n: int = 200, seed: int = 5):
    a_ans, a_j = bernoulli(pa_, n, seed=seed, row="model", metric="proxy_defect")
    b_ans, b_j = bernoulli(pb, n, seed=seed + 1, row="blind", metric="proxy_defect")
    return a_ans + b_ans, a_j + b_j


def test_compare_calls_a_difference_only_when_intervals_do_not_overlap():
    answers, judgments = _two_rows(0.9, 0.5)
    s = summarise(answers, judgments, bootstrap=1000, seed=0)
    cmp = compare(s, "model", "blind", "proxy_defect")
    assert cmp["different"] and not cmp["intervals_overlap"] and cmp["better"] == "model"
    assert cmp["paired_excludes_zero"] and cmp["diff_lo"] > 0 and cmp["diff_lo"] <= cmp["difference"] <= cmp["diff_hi"]
    assert comparison(s, "model", "blind", "proxy_defect")["different"]
    flipped = comparison(s, "blind", "model", "proxy_defect")
    assert flipped["difference"] == pytest.approx(-cmp["difference"]) and flipped["diff_hi"] < 0 and flipped["better"] == "model"

    answers, judgments = _two_rows(0.7, 0.7)
    same = compare(summarise(answers, judgments, bootstrap=1000, seed=0), "model", "blind", "proxy_defect")
    assert not same["different"] and same["intervals_overlap"] and same["better"] is None


def test_paired_bootstrap_can_see_what_overlapping_intervals_do_not_call():
    # blind = model with 6 % of its wrong answers turned right on the same images: a small, consistent gain
    rng = np.random.default_rng(2)
    answers, judgments = [], []
    for i in range(300):
        v = float(rng.random() < 0.5)
        w = 1.0 if v == 0 and rng.random() < 0.12 else v
        for row, score in (("model", v), ("blind", w)):
            answers.append(answer(row, f"q{i}", f"img{i}"))
            judgments.append(judgment(row, f"q{i}", "proxy_token_f1", score))
    cmp = compare(summarise(answers, judgments, bootstrap=1000, seed=0), "blind", "model", "proxy_token_f1")
    assert cmp["intervals_overlap"] and not cmp["different"] and cmp["better"] is None
    assert cmp["paired_excludes_zero"] and cmp["diff_lo"] > 0


def test_compare_by_level_and_stat():
    answers, judgments = _two_rows(0.9, 0.3)
    answers = [dict(a, defect_present=int(a["image_sha"][3:]) % 2 == 0) for a in answers]  # claims inferred from score and gold
    s = summarise(answers, judgments, bootstrap=300, seed=0)
    cmp = compare(s, "model", "blind", "proxy_defect", by="context_level", level="none")
    assert cmp["different"]
    cmp = compare(s, "model", "blind", "proxy_defect", stat="recall")
    assert cmp["a"]["value"] is not None and cmp["difference"] is not None
    assert compare(s, "model", "nobody", "proxy_defect")["different"] is False


def test_deterministic_given_the_seed():
    answers, judgments = bernoulli(0.6, 80, per_image=2)
    a = summarise(answers, judgments, bootstrap=300, seed=7)
    b = summarise(list(reversed(answers)), list(reversed(judgments)), bootstrap=300, seed=7)
    assert a["cells"] == b["cells"]
    c = summarise(answers, judgments, bootstrap=300, seed=8)
    assert c["cells"]["model"]["proxy_token_f1"]["all"]["lo"] != a["cells"]["model"]["proxy_token_f1"]["all"]["lo"] or \
        c["cells"]["model"]["proxy_token_f1"]["all"]["hi"] != a["cells"]["model"]["proxy_token_f1"]["all"]["hi"]


def test_headline_keys_and_level_table_from_arrow_tables():
    answers, judgments = [], []
    levels = ["none", "low", "moderate", "high"]
    for i in range(80):
        level = levels[i % 4]
        cx = "complex" if level == "high" else "simple"
        gold = i % 2 == 0
        for row in ("model", "vision:gpt-4.1"):
            answers.append(answer(row, f"q{i}", f"img{i // 2}", level=level, complexity=cx, gold=gold))
            right = (i % 5 != 0) if row == "model" else True
            judgments += [judgment(row, f"q{i}", "quality", 70.0 if cx == "simple" else 80.0, judge="llm:m@abc"),
                          judgment(row, f"q{i}", "defect", float(right), detail={"claims_defect": int(gold if right else not gold)}, judge="llm:m@abc"),
                          judgment(row, f"q{i}", "proxy_defect", float(i % 4 != 0), detail={"claim": gold if i % 4 else not gold}),
                          judgment(row, f"q{i}", "proxy_rouge_l", 0.4)]
    s = summarise(table_from_rows(answers, EVAL_ANSWERS_SCHEMA), table_from_rows(judgments, EVAL_JUDGMENTS_SCHEMA), bootstrap=200, seed=0)
    h = headline(s)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in h.values())
    assert h["defect_accuracy"] == h["model.defect.accuracy"] == pytest.approx(0.8) and h["defect_accuracy_is_proxy"] == 0
    assert h["defect_accuracy_lo"] < 0.8 < h["defect_accuracy_hi"]
    assert set(f"defect_accuracy_{lv}" for lv in levels) <= set(h)
    assert h["quality"] == pytest.approx(72.5) and h["quality_simple"] == pytest.approx(70.0) and h["quality_complex"] == pytest.approx(80.0)
    assert h["proxy_quality"] == pytest.approx(40.0)
    assert h["model.proxy_defect.accuracy"] == pytest.approx(0.75) and "model.proxy_defect.precision" in h
    assert "vision:gpt-4_1.quality.mean" in h  # row names made key-safe
    assert h["n_questions"] == 80 and h["n_images"] == 40
    assert metric_kind("proxy_defect") == "proxy" and metric_kind("defect") == "llm"

    table = level_table(s)
    assert table and all(set(r) == {"row", "context_level", "metric", "value", "lo", "hi", "n"} for r in table)
    model_defect = [r for r in table if r["row"] == "model" and r["metric"] == "defect"]
    assert [r["context_level"] for r in model_defect] == levels
    parsed = list(csv.DictReader(io.StringIO(table_csv(table))))
    assert len(parsed) == len(table) and parsed[0].keys() == table[0].keys()

    only_proxy = summarise(answers, [j for j in judgments if j["metric"].startswith("proxy_")], bootstrap=200, seed=0)
    h = headline(only_proxy)
    assert h["defect_accuracy_is_proxy"] == 1 and h["defect_accuracy"] == pytest.approx(0.75) and "quality" not in h


def test_relative_ratio_of_means_where_details_have_both_scores():
    answers = [answer("model", f"q{i}", f"img{i}") for i in range(4)]
    pairs = [(8, 4), (8, 8), (10, 5), (4, 8)]  # (reference, candidate)
    judgments = [judgment("model", f"q{i}", "relative", c / r * 100, detail={"scores": [r, c]}) for i, (r, c) in enumerate(pairs)]
    c = summarise(answers, judgments, bootstrap=200, seed=0)["cells"]["model"]["relative"]["all"]
    assert c["mean"] == pytest.approx((50 + 100 + 50 + 200) / 4)
    assert c["ratio_of_means"] == pytest.approx(25 / 30 * 100) and c["n_pairs"] == 4
