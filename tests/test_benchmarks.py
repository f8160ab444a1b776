"""The figures benchmark's scoring (pdffigures2 protocol) and, where ../shared exists, its targets."""

from __future__ import annotations

import pytest

from glassllava.benchmarks import caption_similarity, run_figures_benchmark, score_figures

DOCS = [
    {
        "pdf": "a.pdf",
        "gt_kind": "hand",
        "figures": [
            {"kind": "figure", "label": "1", "page": 1, "caption": "Fig. 1. Cracks.", "figure_bbox": [0, 0, 100, 100]},
            {"kind": "figure", "label": "2", "page": 2, "caption": "Fig. 2. Pores.", "figure_bbox": [0, 0, 100, 100]},
            {"kind": "figure", "label": "3", "page": 2, "caption": "Fig. 3. Bubbles."},
            {"kind": "table", "label": "1", "page": 3, "caption": "Table 1."},
        ],
    },
    {"pdf": "neg.pdf", "gt_kind": "hand", "figures": []},
    {"pdf": "nogt.pdf", "gt_kind": "none (to annotate)", "figures": []},
]


def test_score_figures_counts():
    preds = {
        "a.pdf": [
            {"page": 1, "label": "1", "figure_bbox": [0, 0, 100, 90], "caption": "Fig. 1. Cracks."},  # IoU 0.9
            {"page": 2, "label": "2", "figure_bbox": [0, 0, 100, 60], "caption": "Fig. 2. Pores"},  # IoU 0.6
            {"page": 2, "label": "3", "figure_bbox": None, "caption": "Fig. 3. Bubbles."},  # caption only
            {"page": 4, "label": "9", "figure_bbox": [0, 0, 5, 5], "caption": "Fig. 9."},  # false
        ],
        "neg.pdf": [{"page": 1, "label": "1", "figure_bbox": [0, 0, 1, 1], "caption": "x"}],
        "nogt.pdf": [{"page": 1, "label": "1", "figure_bbox": [0, 0, 1, 1], "caption": "x"}],
    }
    s = score_figures(DOCS, preds)
    assert s["caption_precision"] == 0.75 and s["caption_recall"] == 1.0
    assert s["pair_precision"] == round(2 / 3, 4) and s["pair_recall"] == round(2 / 3, 4)
    assert s["strict_precision_iou50"] == round(2 / 3, 4) and s["strict_recall_iou50"] == 1.0
    assert s["recall_iou80"] == 0.5
    assert s["negative_false_figures"] == 1
    assert s["n_figures"] == 3 and s["n_figures_with_box"] == 2


def test_sem_scores_over_matched_figures_with_sem_truth():
    docs = [
        {
            "pdf": "s.pdf",
            "gt_kind": "synthetic",
            "figures": [
                {"kind": "figure", "label": "1", "page": 1, "caption": "a", "is_sem": True},
                {"kind": "figure", "label": "2", "page": 1, "caption": "b", "is_sem": True},
                {"kind": "figure", "label": "3", "page": 2, "caption": "c", "is_sem": False},
                {"kind": "figure", "label": "4", "page": 2, "caption": "d", "is_sem": False},
                {"kind": "figure", "label": "5", "page": 3, "caption": "e", "is_sem": True},
            ],
        }
    ]
    box = [0, 0, 10, 10]
    preds = {
        "s.pdf": [
            {"page": 1, "label": "1", "figure_bbox": box, "caption": "a", "is_sem": True},  # tp
            {"page": 1, "label": "2", "figure_bbox": box, "caption": "b", "is_sem": False},  # fn
            {"page": 2, "label": "3", "figure_bbox": box, "caption": "c", "is_sem": True},  # fp
            {"page": 2, "label": "4", "figure_bbox": box, "caption": "d", "is_sem": False},  # tn
            {"page": 3, "label": "5", "figure_bbox": None, "caption": "e", "is_sem": True},  # no region: not scored
            {"page": 3, "label": "9", "figure_bbox": box, "caption": "x", "is_sem": True},  # unmatched: not scored
        ]
    }
    s = score_figures(docs, preds)
    assert s["sem_figures"] == 4
    assert s["sem_accuracy"] == 0.5 and s["sem_precision"] == 0.5 and s["sem_recall"] == 0.5
    assert s["sem_errors"] == ["s.pdf:1:2:fn", "s.pdf:2:3:fp"]
    # no SEM truth (the shared real set): no SEM keys
    assert "sem_accuracy" not in score_figures(DOCS, {"a.pdf": []})


def test_figures_benchmark_on_a_small_generated_corpus(tmp_path):
    from glassllava.synth import generate_corpus

    manifest = generate_corpus(tmp_path / "corpus", papers=2, seed=3)
    result = run_figures_benchmark(manifest, dpi=72)
    assert result["pair_precision"] >= 0.99 and result["pair_recall"] >= 0.99
    assert result["strict_f1_iou50"] >= 0.97
    assert result["sem_figures"] == result["n_figures"]
    assert result["sem_accuracy"] >= 0.9


def test_caption_similarity_ignores_case_punctuation_and_cid():
    assert caption_similarity("FIG. 1. (cid:2)Color online(cid:3) TEM", "Fig 1 Color online TEM") == 1.0
    assert caption_similarity("Fig. 1. Cracks", "Fig. 2. Something else entirely") < 0.6


@pytest.mark.shared
def test_shared_figures_benchmark_meets_targets(shared_dir):
    result = run_figures_benchmark(shared_dir / "bench" / "figures" / "manifest.json", dpi=72)
    assert result["caption_precision"] >= 0.98 and result["caption_recall"] >= 0.98
    assert result["pair_precision"] >= 0.95 and result["pair_recall"] >= 0.95
    assert result["strict_f1_iou50"] >= 0.85
    assert result["recall_iou80"] >= 0.70
    assert result["negative_false_figures"] == 0
