"""``glassllava bench qa``: the QA stage scored against a generated corpus's ground truth.

It runs the stage twice into a scratch folder (the figures and ingest outputs are linked, never
copied or changed): a cold run, then a re-run with nothing new, which must make no request. Then
each record's defect label and feature list is compared with the micrograph truth of its panel
(page, figure label and panel letter matched through the papers table's source file name).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from glassllava.files import read_json
from glassllava.params import DataLayout, QAParams
from glassllava.qa import run_qa

# generated-corpus phenomena -> the QA vocabulary (glassllava.qa_rules.FEATURES)
TRUTH_FEATURES = {
    "clean_glass": "homogeneous_glass",
    "cracks": "crack",
    "crack_network": "crack_network",
    "pores": "pore",
    "bubbles": "bubble",
    "unmolten_grains": "unmolten_grain",
    "crystalline_inclusions": "crystalline_inclusion",
    "surface_crystallisation": "surface_crystallisation",
    "bulk_crystallisation": "bulk_crystallisation",
    "dendrites": "dendrite",
    "phase_separation_droplet": "phase_separation_droplet",
    "phase_separation_interconnected": "phase_separation_interconnected",
    "leached_layer": "leached_layer",
    "scratches": "scratch",
    "fracture_surface": "fracture_markings",
}


def truth_panels(manifest_path: Path) -> dict[tuple[str, str, str | None], dict]:
    """(pdf file name, figure label, panel label or None) -> micrograph truth, for SEM panels."""
    manifest = read_json(manifest_path)
    out = {}
    for doc in manifest["documents"]:
        for fig in doc.get("figures", []):
            panels = fig.get("panels") or []
            for p in panels:
                if p.get("micrograph"):
                    label = p.get("label") if len(panels) > 1 else None
                    out[(doc["pdf"], str(fig["label"]), label)] = p["micrograph"]
    return out


def _f1(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    tp = len(a & b)
    return 0.0 if tp == 0 else 2 * tp / (len(a) + len(b))


def run_qa_benchmark(data: Path, manifest: Path, params: QAParams, *, generator: str | None = None) -> dict:
    data = Path(data)
    for sub in ("ingest", "figures"):
        if not (data / sub).exists():
            raise FileNotFoundError(f"{data / sub} not found: run the pipeline first (dvc repro figures)")
    with tempfile.TemporaryDirectory(prefix="glassllava-bench-qa-") as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        for sub in ("ingest", "figures"):
            os.symlink((data / sub).resolve(), root / sub)
        layout = DataLayout(root)
        t0 = time.monotonic()
        cold = run_qa(params, layout, generator=generator)
        cold_s = time.monotonic() - t0
        t0 = time.monotonic()
        rerun = run_qa(params, layout, generator=generator)
        rerun_s = time.monotonic() - t0
        rows = []
        for split in ("train", "eval"):
            rows += pq.read_table(root / "qa" / f"{split}.parquet").to_pylist()
    sources = {p["paper_sha"]: Path(p["source"]).name for p in pq.read_table(data / "ingest" / "papers.parquet").to_pylist()}
    panels = {p["panel_id"]: p for p in pq.read_table(data / "figures" / "panels.parquet").to_pylist()}
    figures = {f["figure_id"]: f for f in pq.read_table(data / "figures" / "figures.parquet").to_pylist()}
    truth = truth_panels(manifest)

    def truth_key(panel_id: str) -> tuple | None:
        panel = panels[panel_id]
        pdf, label = sources.get(panel["paper_sha"], ""), figures[panel["figure_id"]]["label"]
        for key in ((pdf, label, panel["panel_label"]), (pdf, label, None)):
            if key in truth:
                return key
        return None

    defect_hits = defaultdict(list)  # context level -> [agree]
    feature_f1, feature_exact, panels_matched, unmatched = [], [], set(), set()
    for r in rows:
        key = truth_key(r["panel_id"])
        if key is None:
            unmatched.add(r["panel_id"])
            continue
        t = truth[key]
        panels_matched.add(key)
        defect_hits[r["context_level"]].append(bool(r["defect_present"]) == bool(t["defect"]))
        want = {TRUTH_FEATURES[p] for p in t["phenomena"]}
        got = set(r["features"])
        feature_f1.append(_f1(got, want))
        feature_exact.append(got == want)
    all_hits = [h for hits in defect_hits.values() for h in hits]
    return {
        "generator": cold.generator,
        "panels": cold.panels,
        "records": cold.records,
        "records_per_sem_panel": round(cold.records / max(1, cold.panels), 3),
        "truth_sem_panels": len(truth),
        "truth_sem_panels_with_records": len(panels_matched),
        "record_valid_rate": cold.record_valid_rate,
        "rejected_by_reason": cold.rejected_by_reason,
        "records_matched_to_truth": len(all_hits),
        "panels_unmatched_to_truth": len(unmatched),
        "defect_agreement": round(sum(all_hits) / max(1, len(all_hits)), 4),
        "defect_agreement_by_context_level": {k: round(sum(v) / len(v), 4) for k, v in sorted(defect_hits.items())},
        "feature_f1_mean": round(sum(feature_f1) / max(1, len(feature_f1)), 4),
        "feature_exact_match": round(sum(feature_exact) / max(1, len(feature_exact)), 4),
        "requests": cold.requests,
        "prompt_tokens": cold.prompt_tokens,
        "completion_tokens": cold.completion_tokens,
        "cost_usd": cold.cost_usd,
        "rerun_requests": rerun.requests,
        "rerun_panels_from_cache": rerun.panels_from_cache,
        "cold_seconds": round(cold_s, 2),
        "rerun_seconds": round(rerun_s, 2),
    }
