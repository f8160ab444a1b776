"""Benchmarks that score the pipeline's stages against ground truth; results are plain dicts.

``score_figures`` follows the pdffigures2 protocol: a figure counts when its page and label
match a ground-truth figure; "strict" adds a figure-box IoU threshold. Only captioned
figures (``kind == "figure"``) count; documents without ground truth are skipped; any
figure predicted in a document that has none is a false figure.
"""

from __future__ import annotations

import difflib
import json
import re
import tempfile
import time
from pathlib import Path

from glassllava.pagegraphics import box_iou


def normalise_caption(text: str) -> str:
    text = re.sub(r"\(cid:\d+\)", "", text or "")
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def caption_similarity(a: str, b: str) -> float:
    a, b = normalise_caption(a), normalise_caption(b)
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _ratio(num: int, den: int) -> float:
    return round(num / den, 4) if den else 1.0


def score_figures(documents: list[dict], predictions: dict[str, list[dict]]) -> dict:
    """Score predicted figures against a manifest's documents.

    ``predictions[pdf_name]`` is a list of ``{"page", "label", "figure_bbox" (or None),
    "caption", "caption_bbox"}``. Returns the benchmark's metric dict plus per-document rows.
    """
    cap_tp = cap_pred = cap_gt = 0
    pair_tp = pair_pred = pair_gt = 0
    strict_tp = strict_pred = strict_gt = 0
    hit80 = 0
    sims: list[float] = []
    negatives_false = 0
    per_doc = []
    for doc in documents:
        gt_kind = str(doc.get("gt_kind", ""))
        if gt_kind.startswith("none"):
            continue
        gt = [f for f in doc.get("figures", []) if f.get("kind", "figure") == "figure"]
        preds = predictions.get(doc["pdf"], [])
        if not gt:
            negatives_false += len(preds)
            per_doc.append({"pdf": doc["pdf"], "negative": True, "false_figures": len(preds)})
            continue
        gt_keys = {(int(f["page"]), str(f["label"])): f for f in gt}
        pred_keys = {(int(p["page"]), str(p["label"])): p for p in preds}
        cap_gt += len(gt_keys)
        cap_pred += len(pred_keys)
        cap_tp += len(gt_keys.keys() & pred_keys.keys())
        paired = {k: p for k, p in pred_keys.items() if p.get("figure_bbox") is not None}
        pair_gt += len(gt_keys)
        pair_pred += len(paired)
        matched = gt_keys.keys() & paired.keys()
        pair_tp += len(matched)
        doc_ious = {}
        for k in matched:
            sims.append(caption_similarity(gt_keys[k].get("caption", ""), paired[k].get("caption", "")))
        boxed = {k: f for k, f in gt_keys.items() if f.get("figure_bbox")}
        strict_gt += len(boxed)
        # predicted figures that can be judged on boxes: those not matched to a box-less GT figure
        strict_pred += sum(1 for k in paired if k in boxed or k not in gt_keys)
        for k, f in boxed.items():
            p = paired.get(k)
            if p is None:
                continue
            iou = box_iou(tuple(f["figure_bbox"]), tuple(p["figure_bbox"]))
            doc_ious[f"{k[0]}:{k[1]}"] = round(iou, 3)
            if iou >= 0.5:
                strict_tp += 1
            if iou >= 0.8:
                hit80 += 1
        per_doc.append(
            {
                "pdf": doc["pdf"],
                "gt": len(gt_keys),
                "predicted": len(pred_keys),
                "paired": len(paired),
                "missing": sorted(f"{p}:{lbl}" for p, lbl in gt_keys.keys() - paired.keys()),
                "extra": sorted(f"{p}:{lbl}" for p, lbl in pred_keys.keys() - gt_keys.keys()),
                "iou": doc_ious,
            }
        )
    sp, sr = _ratio(strict_tp, strict_pred), _ratio(strict_tp, strict_gt)
    sem = _sem_scores(documents, predictions)
    return {
        **sem,
        "caption_precision": _ratio(cap_tp, cap_pred),
        "caption_recall": _ratio(cap_tp, cap_gt),
        "pair_precision": _ratio(pair_tp, pair_pred),
        "pair_recall": _ratio(pair_tp, pair_gt),
        "strict_precision_iou50": sp,
        "strict_recall_iou50": sr,
        "strict_f1_iou50": round(2 * sp * sr / (sp + sr), 4) if sp + sr else 0.0,
        "recall_iou80": _ratio(hit80, strict_gt),
        "caption_text_similarity": round(sum(sims) / len(sims), 4) if sims else 0.0,
        "caption_text_similarity_ge90": _ratio(sum(s >= 0.9 for s in sims), len(sims)),
        "negative_false_figures": negatives_false,
        "n_figures": pair_gt,
        "n_figures_with_box": strict_gt,
        "documents": per_doc,
    }


def _sem_scores(documents: list[dict], predictions: dict[str, list[dict]]) -> dict:
    """SEM classification of the matched figures (page + label, with a region) whose ground
    truth says whether they are SEM figures (``is_sem``) and whose prediction has a verdict.
    Empty when the manifest has no SEM truth."""
    tp = fp = fn = tn = 0
    wrong: list[str] = []
    for doc in documents:
        if str(doc.get("gt_kind", "")).startswith("none"):
            continue
        gt = {(int(f["page"]), str(f["label"])): f for f in doc.get("figures", []) if f.get("kind", "figure") == "figure"}
        for p in predictions.get(doc["pdf"], []):
            f = gt.get((int(p["page"]), str(p["label"])))
            if f is None or p.get("figure_bbox") is None or not isinstance(f.get("is_sem"), bool) or p.get("is_sem") is None:
                continue
            truth, said = f["is_sem"], bool(p["is_sem"])
            tp += truth and said
            fp += said and not truth
            fn += truth and not said
            tn += not truth and not said
            if truth != said:
                wrong.append(f"{doc['pdf']}:{p['page']}:{p['label']}:{'fn' if truth else 'fp'}")
    n = tp + fp + fn + tn
    if not n:
        return {}
    return {
        "sem_accuracy": _ratio(tp + tn, n),
        "sem_precision": _ratio(tp, tp + fp),
        "sem_recall": _ratio(tp, tp + fn),
        "sem_figures": n,
        "sem_errors": sorted(wrong),
    }


def _has_sem_truth(documents: list[dict]) -> bool:
    return any(isinstance(f.get("is_sem"), bool) for d in documents for f in d.get("figures", []))


def run_figures_benchmark(manifest: Path, *, dpi: int = 150, layout_backend: str = "heuristic", sem_threshold: float = 0.5) -> dict:
    """Run the figures stage (extraction and rendering) on every scored PDF of a manifest.

    Where the manifest says which figures are SEM figures (``is_sem``, as the generated
    corpus does), the matched figures are also classified and scored (``sem_accuracy``,
    ``sem_precision``, ``sem_recall``; the classifier's time is not counted in pages/s)."""
    from glassllava.figures import extract_paper_figures, figure_sem_verdicts

    manifest = Path(manifest)
    data = json.loads(manifest.read_text())
    documents = data["documents"]
    pdf_dir = manifest.parent / "pdfs"
    predictions: dict[str, list[dict]] = {}
    with_sem = _has_sem_truth(documents)
    pages = 0
    elapsed = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for doc in documents:
            if str(doc.get("gt_kind", "")).startswith("none"):
                continue
            path = pdf_dir / doc["pdf"]
            t0 = time.perf_counter()
            result = extract_paper_figures(path, Path(tmp), dpi=dpi, layout_backend=layout_backend)
            elapsed += time.perf_counter() - t0
            pages += result.n_pages
            predictions[doc["pdf"]] = [
                {
                    "page": f.page,
                    "label": f.label,
                    "figure_bbox": list(f.box) if f.box else None,
                    "caption": f.caption,
                    "caption_bbox": list(f.caption_box),
                }
                for f in result.figures
            ]
            if with_sem:  # the classifier's verdicts, as the figures stage gives them (not timed)
                for f, pred in zip(result.figures, predictions[doc["pdf"]]):
                    if f.box is not None:
                        pred["is_sem"] = max((v.score for v in figure_sem_verdicts(f, result, sem_threshold)), default=0.0) >= sem_threshold
    scores = score_figures(documents, predictions)
    scores.update(
        {
            "pages": pages,
            "seconds": round(elapsed, 3),
            "pages_per_second": round(pages / elapsed, 2) if elapsed else 0.0,
            "dpi": dpi,
            "layout_backend": layout_backend,
            "manifest": str(manifest),
        }
    )
    return scores
