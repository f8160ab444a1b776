"""The panel benchmark: matching and metrics on hand-made inputs, the packaged annotations'
well-formedness, and (where ../shared exists) a run on the shared PDFs."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from typer.testing import CliRunner

from glassllava.cli import app
from glassllava.pagegraphics import box_iou
from glassllava.panel_bench import (
    ANNOTATIONS_PATH,
    _diagnose,
    compare_dpis,
    corpus_truth,
    load_annotations,
    match_panels,
    resolve_pdf,
    run_panel_benchmark,
    score_panels,
)

A, B = [0, 0, 100, 100], [110, 0, 210, 100]
C, D = [0, 110, 100, 210], [110, 110, 210, 210]


def _fig(panels, pdf="x.pdf", page=1, label="1"):
    return {"pdf": pdf, "page": page, "label": label, "panels": [{"box": b, "label": lab} for b, lab in panels]}


def _pred(panels, page=1, label="1", box=(0, 0, 210, 210)):
    return {"page": page, "label": label, "box": list(box) if box else None, "panels": [{"box": b, "label": lab} for b, lab in panels]}


# ---- matching ----------------------------------------------------------------------------


def test_match_is_one_to_one():
    # one predicted box over two truth panels can match at most one of them
    assert len(match_panels([A, [0, 0, 100, 90]], [A])) == 1
    # two identical predictions of one panel: one match, the other is left over
    assert [(t, p) for t, p, _ in match_panels([A], [A, A])] == [(0, 0)]
    assert match_panels([], [A]) == [] and match_panels([A], []) == []


def test_match_maximises_total_iou_not_greedy():
    # greedy by IoU pairs truth 0 with prediction 0 (IoU 0.9) and leaves truth 1 with prediction 1
    # (IoU 0.45, no match); the assignment pairs 0-1 (0.65) and 1-0 (0.89): two matches
    t0, t1 = [0, 0, 100, 100], [20, 0, 100, 100]
    p0, p1 = [10, 0, 100, 100], [0, 0, 65, 100]
    assert box_iou(t0, p0) > box_iou(t1, p0) > box_iou(t0, p1) > 0.5 > box_iou(t1, p1)
    pairs = match_panels([t0, t1], [p0, p1], threshold=0.5)
    assert {(t, p) for t, p, _ in pairs} == {(0, 1), (1, 0)}


def test_match_threshold():
    half = [0, 0, 100, 60]  # IoU 0.6 with A
    assert len(match_panels([A], [half], 0.5)) == 1
    assert match_panels([A], [half], 0.75) == []


# ---- metrics -----------------------------------------------------------------------------


def test_recall_precision_and_labels():
    truth = [
        _fig([(A, "a"), (B, "b"), (C, "c"), (D, "d")], label="1"),
        _fig([(A, None)], label="2"),
        _fig([(A, "a"), (B, "b")], label="3"),  # the extractor misses this figure
    ]
    preds = {
        "x.pdf": [
            # a right, b unlabelled, c wrong letter, d merged with nothing: dropped; one extra box
            _pred([(A, "a"), (B, None), (C, "d"), ([300, 300, 400, 400], None)], label="1"),
            _pred([(A, "z")], label="2"),  # a single panel must not get a letter
        ]
    }
    s = score_panels(truth, preds)
    assert s["n_truth_panels"] == 7 and s["n_predicted_panels"] == 5
    assert s["panel_recall_iou50"] == round(4 / 7, 4)
    assert s["panel_precision_iou50"] == round(4 / 5, 4)
    assert s["label_accuracy"] == round(1 / 3, 4)  # a right; b missing, c wrong (the no-letter panel is not scored)
    assert s["label_recall"] == round(1 / 6, 4)
    assert s["spurious_labels"] == 1
    assert s["count_exact_rate"] == round(2 / 3, 4)  # figures 1 and 2 have the right count, figure 3 none
    assert s["single_panel_exact_rate"] == 1.0
    assert s["figures_missing"] == ["x.pdf:p1:fig3"]
    rows = {r["figure"]: r for r in s["figures"]}
    first = rows["x.pdf:p1:fig1"]
    assert (first["truth_n"], first["predicted_n"], first["matched_iou50"], first["labels_right"]) == (4, 4, 3, 1)
    assert first["errors"] == {"dropped": 1, "extra": 1, "labels_missing": 1, "labels_wrong": 1}
    assert first["labels_wrong"] == ["b:-", "c:d"]
    assert rows["x.pdf:p1:fig3"]["missing"] == "not found"


def test_figures_match_by_page_and_label():
    truth = [_fig([(A, None)], page=2, label="1")]
    s = score_panels(truth, {"x.pdf": [_pred([(A, None)], page=1, label="1")]})
    assert s["panel_recall_iou50"] == 0.0 and s["figures"][0]["missing"] == "not found (label found on page 1)"
    s = score_panels(truth, {"x.pdf": [_pred([], page=2, label="1", box=None)]})
    assert s["figures"][0]["missing"] == "caption without a region"
    s = score_panels(truth, {"x.pdf": [_pred([(A, None)], page=2, label="1")]})
    assert s["panel_recall_iou50"] == 1.0 and s["panel_recall_iou75"] == 1.0 and s["count_exact_rate"] == 1.0


def test_diagnosis_names_the_failure():
    truth = [{"box": b} for b in (A, B, C, D)]
    whole = [{"box": [0, 0, 210, 210]}]
    assert _diagnose(truth, whole, match_panels([A, B, C, D], [whole[0]["box"]])) == {"not_split": 4}
    rows = [{"box": [0, 0, 210, 100]}, {"box": [0, 110, 210, 210]}]
    assert _diagnose(truth, rows, match_panels([A, B, C, D], [r["box"] for r in rows])) == {"merged": 4}
    halves = [{"box": [0, 0, 100, 50]}, {"box": [0, 50, 100, 100]}]
    assert _diagnose([{"box": A}], halves, match_panels([A], [h["box"] for h in halves])) == {"over_split": 1}
    inner = [{"box": [20, 0, 100, 40]}]  # inside the panel, its axes lost
    assert _diagnose([{"box": A}], inner, match_panels([A], [inner[0]["box"]])) == {"cropped": 1}
    assert _diagnose([{"box": A}], [{"box": [500, 500, 600, 600]}], []) == {"dropped": 1, "extra": 1}
    snug = [{"box": [15, 0, 100, 80]}]  # IoU 0.68: matched at 0.5, not at 0.75, an axis lost
    assert _diagnose([{"box": A}], snug, match_panels([A], [snug[0]["box"]]), match_panels([A], [snug[0]["box"]], 0.75)) == {"tight": 1}


def test_compare_dpis_lists_figures_whose_panels_change():
    truth = [_fig([(A, "a"), (B, "b")])]
    one = score_panels(truth, {"x.pdf": [_pred([([0, 0, 210, 100], None)])]})
    two = score_panels(truth, {"x.pdf": [_pred([(A, "a"), (B, "b")])]})
    cmp = compare_dpis({300: two, 100: one})
    assert cmp["dpis"] == [100, 300]
    assert cmp["headline"]["100"]["panel_recall_iou50"] == 0.0 and cmp["headline"]["300"]["panel_recall_iou50"] == 1.0
    assert cmp["panels_change_with_dpi"] == [{"figure": "x.pdf:p1:fig1", "100": {"n": 1, "labels": [None]}, "300": {"n": 2, "labels": ["a", "b"]}}]


def test_corpus_truth_reads_generated_panels(tmp_path):
    manifest = tmp_path / "manifest.json"
    fig = {"kind": "figure", "label": "1", "page": 2, "figure_bbox": [0, 0, 10, 10], "single_image": True,
           "panels": [{"bbox": [0, 0, 5, 10], "label": "a"}, {"bbox": [5, 0, 10, 10], "label": "b"}]}
    table = {"kind": "table", "label": "1", "page": 3, "panels": []}
    manifest.write_text(json.dumps({"documents": [{"pdf": "s.pdf", "figures": [fig, table]}, {"pdf": "n.pdf", "gt_kind": "none", "figures": [fig]}]}))
    truth = corpus_truth(manifest)
    assert len(truth) == 1
    assert truth[0]["panels"] == [{"box": [0, 0, 5, 10], "label": "a"}, {"box": [5, 0, 10, 10], "label": "b"}]
    assert truth[0]["single_image"] and truth[0]["page"] == 2


# ---- the annotations ---------------------------------------------------------------------


def _near_inside(inner, outer, tol=3.0) -> bool:
    return inner[0] >= outer[0] - tol and inner[1] >= outer[1] - tol and inner[2] <= outer[2] + tol and inner[3] <= outer[3] + tol


def test_annotations_are_well_formed():
    ann = load_annotations()
    figures = ann["figures"]
    assert 12 <= len(figures) <= 30
    keys = [(f["pdf"], f["page"], f["label"]) for f in figures]
    assert len(set(keys)) == len(keys)
    for f in figures:
        where = f"{f['pdf']} p{f['page']} fig {f['label']}"
        assert re.fullmatch(r"[0-9a-f]{40}", f["sha1"]), where
        assert f["checked"], where
        assert f["n_panels"] == len(f["panels"]) >= 1, where
        page = f["page_bbox"]
        for box in [f["figure_box"]] + [p["box"] for p in f["panels"]]:
            assert len(box) == 4 and box[0] < box[2] and box[1] < box[3], where
            assert _near_inside(box, page, tol=0.5), f"{where}: {box} outside the page {page}"
        labels = [p["label"] for p in f["panels"] if p["label"] is not None]
        assert len(labels) == len(set(labels)), f"{where}: repeated panel letters {labels}"
        assert all(re.fullmatch(r"[a-z]", lab) for lab in labels), where
        if len(f["panels"]) == 1:
            assert f["panels"][0]["label"] is None, f"{where}: a single panel has no letter"
        for p in f["panels"]:
            assert _near_inside(p["box"], f["figure_box"]), f"{where}: panel {p} outside the figure box"
        boxes = [p["box"] for p in f["panels"]]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                assert box_iou(boxes[i], boxes[j]) < 0.1, f"{where}: panels {i} and {j} overlap"


def test_annotations_hold_the_required_figures():
    by = {(f["pdf"].rsplit("/", 1)[-1], f["label"]): f for f in load_annotations()["figures"]}
    kintsugi = "kintsugi_imaging_battery_electrodes_JES2022.pdf"
    assert [p["label"] for p in by[(kintsugi, "4")]["panels"]] == list("abcdefgh")
    assert len(by[(kintsugi, "3")]["panels"]) >= 2  # SEM image and EDS maps are separate panels
    assert len(by[(kintsugi, "2")]["panels"]) >= 2
    assert [p["label"] for p in by[("pdffigures2_f63cb207.pdf", "1")]["panels"]] == list("abcde")
    assert ("pdffigures2_f63cb207.pdf", "2") in by
    assert [p["label"] for p in by[("grobid_ApplPhysLett_98_082505.pdf", "3")]["panels"]] == list("abcd")
    assert sum(len(f["panels"]) == 1 for f in by.values()) >= 3


def test_annotations_ship_with_the_package():
    import tomllib
    from pathlib import Path

    assert ANNOTATIONS_PATH.is_file()
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "benchdata/*.json" in pyproject["tool"]["setuptools"]["package-data"]["glassllava"]


def test_missing_shared_folder_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="shared folder"):
        run_panel_benchmark(None, tmp_path / "absent")
    result = CliRunner().invoke(app, ["bench", "panels", "--shared", str(tmp_path / "absent")])
    assert result.exit_code == 1 and "not found" in result.output
    result = CliRunner().invoke(app, ["bench", "panels", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output


# ---- on the shared PDFs ------------------------------------------------------------------


@pytest.mark.shared
def test_annotated_pdfs_match_their_sha1_and_pages(shared_dir):
    import pdfplumber

    for f in load_annotations()["figures"]:
        path = resolve_pdf(shared_dir, f["pdf"])
        assert path.is_file(), f"{path} missing"
        assert hashlib.sha1(path.read_bytes()).hexdigest() == f["sha1"], f["pdf"]
        with pdfplumber.open(path) as pdf:
            assert [round(float(v), 3) for v in pdf.pages[f["page"] - 1].bbox] == f["page_bbox"], f["pdf"]


@pytest.mark.shared
@pytest.mark.slow
def test_panel_benchmark_runs_on_shared_pdfs(shared_dir, tmp_path):
    ann = load_annotations()
    apl = [f for f in ann["figures"] if "ApplPhysLett" in f["pdf"]]  # 3 figures on 3 pages: a quick run
    sub = tmp_path / "panels.json"
    sub.write_text(json.dumps({**ann, "figures": apl}))
    s = run_panel_benchmark(sub, shared_dir, dpi=72)
    assert s["n_figures"] == 3 and s["n_truth_panels"] == 8 and s["pdfs"] == 1 and not s["sha1_mismatch"]
    for k in ("panel_recall_iou50", "panel_precision_iou50", "panel_recall_iou75", "label_accuracy", "count_exact_rate"):
        assert 0.0 <= s[k] <= 1.0, k
    assert len(s["figures"]) == 3 and all("truth_n" in r and "predicted_n" in r for r in s["figures"])
