"""Human-facing views of the pipeline's outputs: a one-screen status and an HTML figure gallery.

Text from papers is untrusted: every caption and paragraph is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import pyarrow.parquet as pq

from glassllava.files import atomic_write_text
from glassllava.params import DataLayout


def quarantine_records(layout: DataLayout) -> list[dict]:
    """Every quarantined input of ingest and figures, oldest first: its name, reason, detail, date, whether it is
    still among the sources, and where its bytes are kept."""
    records = []
    for stage, path in (("ingest", layout.ingest / "quarantine.parquet"), ("figures", layout.figures / "quarantine.parquet")):
        if not path.exists():
            continue
        for r in pq.read_table(path).to_pylist():
            present = r.get("present")
            records.append({"stage": stage, "name": Path(r["source"]).name or r["source"], "source": r["source"], "reason": r["reason"],
                            "detail": r["detail"], "seen_at": r["seen_at"].isoformat(timespec="seconds") if r["seen_at"] else None,
                            "present": True if present is None else bool(present), "kept_at": r["kept_at"]})
    return sorted(records, key=lambda r: (r["seen_at"] or "", r["name"]))


def pipeline_status(layout: DataLayout) -> list[tuple[str, str, str]]:
    """(stage, what, where) for every table that exists."""
    rows = []
    tables = [
        ("ingest", "papers", layout.ingest / "papers.parquet"),
        ("ingest", "paragraphs", layout.ingest / "paragraphs.parquet"),
        ("ingest", "figure citations", layout.ingest / "citations.parquet"),
        ("ingest", "quarantined inputs", layout.ingest / "quarantine.parquet"),
        ("figures", "figures", layout.figures / "figures.parquet"),
        ("figures", "panels", layout.figures / "panels.parquet"),
        ("qa", "train QA records", layout.qa / "train.parquet"),
        ("qa", "eval QA records", layout.qa / "eval.parquet"),
        ("qa", "rejected QA records", layout.qa / "rejected.parquet"),
    ]
    for stage, what, path in tables:
        if path.exists():
            n = pq.read_metadata(path).num_rows
            extra, where = "", str(path)
            if what == "panels" and n:
                sem = sum(pq.read_table(path, columns=["is_sem"]).column("is_sem").to_pylist())
                extra = f" ({sem} SEM)"
            if what == "quarantined inputs" and n:
                gone = sum(not r["present"] for r in quarantine_records(layout) if r["stage"] == "ingest")
                extra = f" ({gone} no longer among the sources)" if gone else ""
                where = f"{path}; glassllava quarantine lists them"
            rows.append((stage, f"{n} {what}{extra}", where))
    page = layout.figures / "index.html"
    if page.exists():
        rows.append(("figures", "gallery of figures and panels", str(page)))
    report = layout.qa / "report.json"
    if report.exists():
        generator = json.loads(report.read_text())["generator"]
        note = " (offline rule-based generator, no LLM)" if generator.startswith("offline") else f" ({generator})"
        rows.append(("qa", "QA examples beside their panels" + note, str(layout.qa / "index.html")))
    dataset_report = layout.dataset / "report.json"
    if dataset_report.exists():
        splits = json.loads(dataset_report.read_text())["splits"]
        for split, c in sorted(splits.items(), key=lambda kv: ("train", "eval", "align").index(kv[0])):
            what = f"{c['conversations']} {split} conversations ({c['turns']} turns, {c['images']} images, {c['papers']} papers)"
            rows.append(("dataset", what, f"{layout.dataset / split}-*.parquet, {layout.dataset / 'llava' / split}.json"))
        skipped = layout.dataset / "skipped.parquet"
        if skipped.exists():
            rows.append(("dataset", f"{pq.read_metadata(skipped).num_rows} QA records and panels left out", str(skipped)))
    rows += model_status(layout)
    return rows


def model_status(layout: DataLayout) -> list[tuple[str, str, str]]:
    """The trained model: preset, size on disk, loss, throughput, its MLflow run and registered version."""
    report_path = layout.train / "report.json"
    if not (layout.model / "config.json").exists() or not report_path.exists():
        return []
    report = json.loads(report_path.read_text())
    size = sum(f.stat().st_size for f in layout.model.rglob("*") if f.is_file())
    curve, evals = report.get("loss_curve") or [], report.get("eval_loss") or []
    loss = f"loss {curve[-1]['loss']:.3f}" if curve else "no steps"
    if evals:
        loss += f", eval loss {evals[-1]['eval_loss']:.3f}"
    params = sum(s.get("trainable_params", 0) for s in report.get("stages", [])[-1:])
    rows = [
        ("train", f"model {report['preset']} ({size / 2**20:.0f} MiB, {params:,} trained parameters; {loss})", str(layout.model)),
        ("train", f"{report['samples_per_s']:.2f} samples/s, {report['tokens_per_s']:.0f} tokens/s, MFU {100 * report['mfu']:.2f} % "
                  f"on {report['device']}; {report['wall_s']:.0f} s", str(report_path)),
    ]
    if report.get("mlflow_run_id"):
        version = f", registered as glassllava v{report['model_version']} (alias candidate)" if report.get("model_version") else ""
        rows.append(("train", f"MLflow run {report['mlflow_run_id']}{version}", "mlflow ui --backend-store-uri sqlite:///mlflow.db"))
    return rows


def write_figure_gallery(layout: DataLayout, max_figures: int = 500) -> Path:
    """An HTML page with every figure crop, its caption, panels with SEM scores, and context."""
    figures_path, panels_path = layout.figures / "figures.parquet", layout.figures / "panels.parquet"
    figures = pq.read_table(figures_path).to_pylist() if figures_path.exists() else []
    panels = pq.read_table(panels_path).to_pylist() if panels_path.exists() else []
    by_figure: dict[str, list[dict]] = {}
    for p in panels:
        by_figure.setdefault(p["figure_id"], []).append(p)
    out = layout.figures / "index.html"
    esc = html.escape

    def rel(path: str | None) -> str:
        return esc(os.path.relpath(path, out.parent)) if path else ""

    parts = [
        "<!doctype html><meta charset='utf-8'><title>GlassLLaVA figures</title>",
        "<style>body{font:14px sans-serif;margin:2em;max-width:1200px}"
        ".fig{border-top:1px solid #ccc;padding:1em 0}.fig img{max-height:320px;max-width:100%}"
        ".panels img{height:140px;margin:2px;border:3px solid #ddd}.panels .sem{border-color:#2a7}"
        ".meta{color:#555}.ctx{color:#333;font-size:13px;margin:.3em 0 .3em 1em}</style>",
        f"<h1>Figures ({len(figures)})</h1>",
        f"<p class=meta>{sum(p['is_sem'] for p in panels)} of {len(panels)} panels marked SEM (green border).</p>",
    ]
    for f in figures[:max_figures]:
        parts.append("<div class=fig>")
        parts.append(
            f"<div class=meta>paper {esc(f['paper_sha'][:12])} &middot; page {f['page']} &middot; Fig. {esc(f['label'])}"
            f" &middot; caption {esc(f['caption_position'])} &middot; SEM score {f['sem_score']:.2f}</div>"
        )
        if f["image_path"]:
            parts.append(f"<img src='{rel(f['image_path'])}' alt='figure {esc(f['label'])}'>")
        parts.append(f"<p>{esc(f['caption'])}</p><div class=panels>")
        for p in by_figure.get(f["figure_id"], []):
            cls = "sem" if p["is_sem"] else ""
            title = f"panel {p['panel_label'] or p['panel_index']}: SEM score {p['sem_score']:.2f}"
            parts.append(f"<img class='{cls}' src='{rel(p['image_path'])}' title='{esc(title)}' alt='{esc(title)}'>")
        parts.append("</div>")
        for c in f["context"][:3]:
            parts.append(f"<p class=ctx>&ldquo;{esc(c[:600])}&rdquo;</p>")
        parts.append("</div>")
    atomic_write_text(out, "\n".join(parts) + "\n")
    return out
