"""Panel benchmark: how well the figures stage splits figures into panels and reads their letters.

Two ground truths, one scorer (``score_panels``):

* ``benchdata/panels.json``: panels of multi-panel (and some single-panel) figures in the real
  PDFs of ``../shared``, annotated by hand (boxes in PDF points, pdfplumber's MediaBox frame,
  origin top-left, ``[x0, top, x1, bottom]``; the printed letter or null). ``run_panel_benchmark``.
* the generated corpus's ``manifest.json``, whose figures list the panels the generator drew
  (``glassllava.synth``). ``run_corpus_panel_benchmark``.

Figures are matched by page and label; within a figure, truth and predicted panels are paired
one to one by IoU (Hungarian assignment, a pair counts at IoU >= 0.5; 0.75 is reported too).
Recall counts every truth panel (a figure the extractor missed loses all of its panels);
precision counts the predicted panels of annotated figures only (the hand set annotates some
figures of each PDF, not all). Label accuracy: among the panels matched at 0.5 whose truth
letter is printed, the share whose predicted letter is the same. Each figure gets a diagnosis
(dropped, merged, not split, over-split, cropped, labels missing or wrong, spurious label).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from glassllava.pagegraphics import box_area, box_intersection, box_iou

ANNOTATIONS_PATH = Path(__file__).parent / "benchdata" / "panels.json"
THRESHOLDS = (0.5, 0.75)


def _ratio(num: int, den: int) -> float:
    return round(num / den, 4) if den else 1.0


# ---- matching ---------------------------------------------------------------------------


def match_panels(truth: list, pred: list, threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(truth index, predicted index, IoU)`` with IoU >= threshold, chosen to
    maximise the summed IoU (Hungarian assignment), sorted by truth index."""
    if not truth or not pred:
        return []
    from scipy.optimize import linear_sum_assignment

    iou = np.array([[box_iou(tuple(t), tuple(p)) for p in pred] for t in truth])
    rows, cols = linear_sum_assignment(-iou)
    return sorted((int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols) if iou[r, c] >= threshold)


def _cover(a, b) -> float:
    """Share of box ``a`` that box ``b`` covers."""
    inter = box_intersection(tuple(a), tuple(b))
    area = box_area(tuple(a))
    return box_area(inter) / area if inter is not None and area > 0 else 0.0


def _diagnose(truth: list[dict], pred: list[dict], pairs: list[tuple[int, int, float]], strict: list[tuple[int, int, float]] = ()) -> dict[str, int]:
    """What went wrong with one figure's panels, as counts of truth panels (predicted panels for
    "extra"):

    dropped: no predicted panel covers 10% of it; merged: the predicted panel that covers most
    of it also covers most of another truth panel (several panels came out as one; "not_split"
    when the whole figure came out as one panel); oversized: a predicted panel covers it but
    reaches far beyond it; cropped: one predicted panel lies inside it but misses part of it
    (axes, axis labels, a second image; IoU < 0.5); misplaced: overlapped, none of the above;
    over_split: two or more predicted panels lie inside it (matched or not: fragments);
    tight: matched at IoU 0.5 but not at 0.75 with the prediction inside it (a margin, an axis
    label, a tick row lost); extra: predicted panels lying mostly (half of their area or more)
    outside every truth panel.
    """
    out: dict[str, int] = {}
    matched = {i: j for i, j, _ in pairs}
    matched_strict = {i for i, _, _ in strict}

    def add(key: str, n: int = 1) -> None:
        if n:
            out[key] = out.get(key, 0) + n

    cover_t = [[_cover(t["box"], p["box"]) for p in pred] for t in truth]  # share of truth i that pred j covers
    cover_p = [[_cover(p["box"], t["box"]) for p in pred] for t in truth]  # share of pred j inside truth i
    holds = {j: [i for i in range(len(truth)) if cover_t[i][j] >= 0.6] for j in range(len(pred))}
    for i in range(len(truth)):
        inside = [j for j in range(len(pred)) if cover_p[i][j] >= 0.8]
        if len(inside) >= 2:
            add("over_split")
        if i in matched:
            if i not in matched_strict and len(inside) < 2 and cover_p[i][matched[i]] >= 0.9:
                add("tight")
            continue
        if len(inside) >= 2:
            continue
        best = max(range(len(pred)), key=lambda j: cover_t[i][j], default=None)
        if best is None or cover_t[i][best] < 0.1:
            add("dropped")
        elif cover_t[i][best] >= 0.6 and len(holds[best]) >= 2:
            add("not_split" if len(pred) == 1 else "merged")
        elif cover_t[i][best] >= 0.6:
            add("oversized")
        elif len(inside) == 1:
            add("cropped")
        else:
            add("misplaced")
    for j in range(len(pred)):  # (truth panels do not overlap: the shares add up)
        if sum(cover_p[i][j] for i in range(len(truth))) < 0.5:
            add("extra")
    return out


# ---- scoring ----------------------------------------------------------------------------


def score_panels(truth_figures: list[dict], predictions: dict[str, list[dict]], thresholds=THRESHOLDS) -> dict:
    """Score predicted panels against truth.

    ``truth_figures``: ``{"pdf", "page", "label", "panels": [{"box", "label"}]}`` (optionally
    ``"figure_box"``). ``predictions[pdf]``: the extractor's figures of that PDF, each
    ``{"page", "label", "box" (None: caption without a region), "panels": [{"box", "label"}]}``.
    """
    thresholds = tuple(thresholds)
    t0 = thresholds[0]
    n_truth = n_pred = 0
    hits = {t: 0 for t in thresholds}
    label_scored = label_right = label_recall_den = spurious = 0
    count_exact = single_total = single_exact = 0
    ious: list[float] = []
    errors: dict[str, int] = {}
    missing: list[str] = []
    rows = []
    for fig in truth_figures:
        key = f"{fig['pdf']}:p{fig['page']}:fig{fig['label']}"
        truth = fig["panels"]
        cands = [p for p in predictions.get(fig["pdf"], []) if str(p["label"]) == str(fig["label"])]
        same_page = [p for p in cands if int(p["page"]) == int(fig["page"])]
        found = same_page[0] if same_page else None
        pred = list(found["panels"]) if found is not None and found.get("box") is not None else []
        n_truth += len(truth)
        n_pred += len(pred)
        row: dict = {"figure": key, "truth_n": len(truth), "predicted_n": len(pred)}
        if found is None:
            missing.append(key)
            row["missing"] = "not found" + (f" (label found on page {cands[0]['page']})" if cands else "")
        elif found.get("box") is None:
            missing.append(key)
            row["missing"] = "caption without a region"
        elif fig.get("figure_box"):
            row["figure_iou"] = round(box_iou(tuple(fig["figure_box"]), tuple(found["box"])), 3)
        pairs = {}
        for t in thresholds:
            pairs[t] = match_panels([p["box"] for p in truth], [p["box"] for p in pred], t)
            hits[t] += len(pairs[t])
            row[f"matched_iou{int(round(t * 100))}"] = len(pairs[t])
        ious.extend(iou for _, _, iou in pairs[t0])
        scored = right = 0
        wrong_labels = []
        label_errors = {"labels_missing": 0, "labels_wrong": 0, "spurious_label": 0}
        for ti, pi, _ in pairs[t0]:
            want, got = truth[ti].get("label"), pred[pi].get("label")
            if want is None:
                if got is not None:
                    spurious += 1
                    label_errors["spurious_label"] += 1
                    wrong_labels.append(f"-:{got}")
                continue
            scored += 1
            right += got == want
            if got != want:
                label_errors["labels_missing" if got is None else "labels_wrong"] += 1
                wrong_labels.append(f"{want}:{got or '-'}")
        label_scored += scored
        label_right += right
        label_recall_den += sum(1 for p in truth if p.get("label") is not None)
        row["labels_scored"], row["labels_right"] = scored, right
        if wrong_labels:
            row["labels_wrong"] = wrong_labels  # truth:predicted for each matched panel
        count_exact += len(pred) == len(truth)
        if len(truth) == 1:
            single_total += 1
            single_exact += len(pred) == 1
        row["panel_ious"] = [round(iou, 3) for _, _, iou in pairs[t0]]
        if found is not None and found.get("box") is not None:
            diag = _diagnose(truth, pred, pairs[t0], pairs[thresholds[-1]])
            diag.update({k: v for k, v in label_errors.items() if v})
            if diag:
                row["errors"] = diag
                for k, v in diag.items():
                    errors[k] = errors.get(k, 0) + v
        row["predicted_boxes"] = [[round(v, 1) for v in p["box"]] for p in pred]
        row["predicted_labels"] = [p.get("label") for p in pred]
        rows.append(row)
    out: dict = {}
    for t in thresholds:
        tag = f"iou{int(round(t * 100))}"
        r, p = _ratio(hits[t], n_truth), _ratio(hits[t], n_pred)
        out[f"panel_recall_{tag}"] = r
        out[f"panel_precision_{tag}"] = p
        out[f"panel_f1_{tag}"] = round(2 * p * r / (p + r), 4) if p + r else 0.0
    out.update(
        {
            "label_accuracy": _ratio(label_right, label_scored),  # matched panels with a printed letter
            "label_recall": _ratio(label_right, label_recall_den),  # printed letters found on the right panel
            "spurious_labels": spurious,  # matched panels without a printed letter that got one
            "count_exact_rate": _ratio(count_exact, len(truth_figures)),
            "single_panel_exact_rate": _ratio(single_exact, single_total),
            "mean_matched_iou": round(float(np.mean(ious)), 4) if ious else 0.0,
            "n_figures": len(truth_figures),
            "n_single_panel_figures": single_total,
            "n_truth_panels": n_truth,
            "n_predicted_panels": n_pred,
            "n_labelled_truth_panels": label_recall_den,
            "figures_missing": missing,
            "errors": dict(sorted(errors.items())),
            "figures": rows,
        }
    )
    return out


def prediction_rows(result) -> list[dict]:
    """The extractor's figures (``figures.PaperFigures``) as plain rows for ``score_panels``."""
    return [
        {
            "page": f.page,
            "label": f.label,
            "box": list(f.box) if f.box is not None else None,
            "panels": [{"box": list(p.box), "label": p.label} for p in f.panels],
        }
        for f in result.figures
    ]


def _extract(paths: dict[str, Path], dpi: int, layout_backend: str) -> tuple[dict[str, list[dict]], int, float]:
    extractor_fingerprint()
    from glassllava.figures import extract_paper_figures

    predictions: dict[str, list[dict]] = {}
    pages, elapsed = 0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in paths.items():
            t0 = time.perf_counter()
            result = extract_paper_figures(path, Path(tmp), dpi=dpi, layout_backend=layout_backend)
            elapsed += time.perf_counter() - t0
            pages += result.n_pages
            predictions[name] = prediction_rows(result)
    return predictions, pages, elapsed


_FINGERPRINT: dict[str, str] = {}


def extractor_fingerprint() -> dict[str, str]:
    """Short SHA-256 of the panel finder's source files: which extractor the numbers are of. Taken
    once per process, before the extractor is first imported (the code a run uses is the code it
    imported, whatever the files say later)."""
    if not _FINGERPRINT:
        root = Path(__file__).parent
        names = ("figures.py", "regions.py", "pagegraphics.py", "pdflines.py")
        _FINGERPRINT.update({n: hashlib.sha256((root / n).read_bytes()).hexdigest()[:12] for n in names if (root / n).exists()})
    return dict(_FINGERPRINT)


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def load_annotations(path: Path | None = None) -> dict:
    return json.loads(Path(path or ANNOTATIONS_PATH).read_text())


def resolve_pdf(pdf_dir: Path, rel: str) -> Path:
    """An annotated PDF: ``rel`` is relative to the shared root; a flat folder of PDFs works too."""
    pdf_dir = Path(pdf_dir)
    for cand in (pdf_dir / rel, pdf_dir / Path(rel).name):
        if cand.is_file():
            return cand
    return pdf_dir / rel


def run_panel_benchmark(annotations_path: Path | None, pdf_dir: Path, *, dpi: int = 150, layout_backend: str = "heuristic") -> dict:
    """Run the figures stage on every PDF of the hand-annotated panel set and score its panels.

    ``pdf_dir``: the shared folder (``../shared``; annotations name PDFs relative to it) or a
    folder holding the PDFs themselves. A missing folder or PDF raises ``FileNotFoundError``;
    a PDF whose SHA-1 differs from the annotated one is scored but listed in ``sha1_mismatch``.
    """
    annotations_path = Path(annotations_path or ANNOTATIONS_PATH)
    pdf_dir = Path(pdf_dir)
    if not pdf_dir.is_dir():
        raise FileNotFoundError(
            f"{pdf_dir} not found: the panel benchmark reads its PDFs from the shared folder "
            "(../shared beside the repository: bench/figures/pdfs/, data/papers/); pass --shared DIR"
        )
    ann = load_annotations(annotations_path)
    figures = ann["figures"]
    paths: dict[str, Path] = {}
    absent, mismatch = [], []
    for fig in figures:
        if fig["pdf"] in paths:
            continue
        path = resolve_pdf(pdf_dir, fig["pdf"])
        if not path.is_file():
            absent.append(fig["pdf"])
            continue
        paths[fig["pdf"]] = path
        if fig.get("sha1") and _sha1(path) != fig["sha1"]:
            mismatch.append(fig["pdf"])
    if absent:
        raise FileNotFoundError(f"annotated PDFs not found under {pdf_dir}: {', '.join(absent)}")
    predictions, pages, elapsed = _extract(paths, dpi, layout_backend)
    scores = score_panels(figures, predictions)
    scores.update(
        {
            "set": "hand-annotated (shared PDFs)",
            "annotations": str(annotations_path),
            "pdf_dir": str(pdf_dir),
            "pdfs": len(paths),
            "sha1_mismatch": mismatch,
            "pages": pages,
            "seconds": round(elapsed, 3),
            "dpi": dpi,
            "layout_backend": layout_backend,
            "extractor": extractor_fingerprint(),
        }
    )
    return scores


def corpus_truth(manifest: Path) -> list[dict]:
    """The generated corpus's figures with the panels the generator drew (``glassllava.synth``)."""
    data = json.loads(Path(manifest).read_text())
    out = []
    for doc in data["documents"]:
        if str(doc.get("gt_kind", "")).startswith("none"):
            continue
        for f in doc.get("figures", []):
            if f.get("kind", "figure") != "figure" or not f.get("panels"):
                continue
            out.append(
                {
                    "pdf": doc["pdf"],
                    "page": int(f["page"]),
                    "label": str(f["label"]),
                    "figure_box": f.get("figure_bbox"),
                    "panels": [{"box": p["bbox"], "label": p.get("label")} for p in f["panels"]],
                    "single_image": bool(f.get("single_image")),
                }
            )
    return out


def run_corpus_panel_benchmark(manifest: Path, *, dpi: int = 150, layout_backend: str = "heuristic") -> dict:
    """The same scores on the generated corpus (PDFs in ``pdfs/`` beside its manifest).

    Adds the scores of the figures whose panels were drawn as one raster image
    (``single_image``: the extractor must split the picture itself) under ``single_image``."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: generate the corpus first (glassllava synth --out {manifest.parent})")
    truth = corpus_truth(manifest)
    pdf_dir = manifest.parent / "pdfs"
    paths = {name: pdf_dir / name for name in dict.fromkeys(f["pdf"] for f in truth)}
    absent = [n for n, p in paths.items() if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"corpus PDFs not found in {pdf_dir}: {', '.join(absent)}")
    predictions, pages, elapsed = _extract(paths, dpi, layout_backend)
    scores = score_panels(truth, predictions)
    raster = [f for f in truth if f["single_image"]]
    if raster:
        sub = score_panels(raster, predictions)
        scores["single_image"] = {k: v for k, v in sub.items() if k not in ("figures", "errors")}
    scores.update(
        {
            "set": "generated corpus",
            "manifest": str(manifest),
            "pdfs": len(paths),
            "pages": pages,
            "seconds": round(elapsed, 3),
            "dpi": dpi,
            "layout_backend": layout_backend,
            "extractor": extractor_fingerprint(),
        }
    )
    return scores


_HEADLINE = ("panel_recall_iou50", "panel_precision_iou50", "panel_recall_iou75", "label_accuracy", "count_exact_rate")


def compare_dpis(runs: dict[int, dict]) -> dict:
    """Several runs of one benchmark at different render resolutions: the headline numbers per dpi
    and the figures whose predicted panels (count or letters) differ between resolutions."""
    dpis = sorted(runs)
    headline = {str(d): {k: runs[d][k] for k in _HEADLINE} for d in dpis}
    changes = []
    for i, row in enumerate(runs[dpis[0]]["figures"]):
        per = {str(d): (runs[d]["figures"][i]["predicted_n"], runs[d]["figures"][i]["predicted_labels"]) for d in dpis}
        if len({json.dumps(v) for v in per.values()}) > 1:
            changes.append({"figure": row["figure"], **{d: {"n": n, "labels": lab} for d, (n, lab) in per.items()}})
    return {"dpis": dpis, "headline": headline, "panels_change_with_dpi": changes, "by_dpi": {str(d): runs[d] for d in dpis}}


def run_panel_benchmarks(
    *,
    annotations: Path | None = None,
    shared: Path | None = None,
    corpus: Path | None = None,
    dpis: list[int] | tuple[int, ...] = (150,),
    layout_backend: str = "heuristic",
) -> dict:
    """What ``glassllava bench panels`` runs: the hand set (when ``shared`` is given) and the
    generated corpus (when ``corpus`` is given), at each render resolution.

    One set at one dpi gives that run's flat dict, like the other benchmarks. Otherwise:
    ``{"dpis", "summary": {set: {dpi: headline}}, "panels_change_with_dpi": {set: [...]},
    set: {dpi: full run}}`` with set ``hand`` or ``corpus``."""
    dpis = sorted(dict.fromkeys(int(d) for d in dpis))
    if not dpis:
        raise ValueError("no dpi given")
    sets: dict[str, dict[int, dict]] = {}
    if shared is not None:
        sets["hand"] = {d: run_panel_benchmark(annotations, Path(shared), dpi=d, layout_backend=layout_backend) for d in dpis}
    if corpus is not None:
        sets["corpus"] = {d: run_corpus_panel_benchmark(Path(corpus), dpi=d, layout_backend=layout_backend) for d in dpis}
    if not sets:
        raise ValueError("nothing to run: give the shared folder, a corpus manifest, or both")
    if len(sets) == 1 and len(dpis) == 1:
        return next(iter(sets.values()))[dpis[0]]
    out: dict = {"dpis": dpis, "summary": {}, "panels_change_with_dpi": {}}
    for name, runs in sets.items():
        cmp = compare_dpis(runs)
        out["summary"][name] = cmp["headline"]
        out["panels_change_with_dpi"][name] = cmp["panels_change_with_dpi"]
        out[name] = cmp["by_dpi"]
    return out
