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
    page = layout.gallery / "index.html"
    if page.exists():
        n = len(list((layout.gallery / GALLERY_PAGES).glob("*.html")))
        rows.append(("gallery", f"gallery of figures and panels: an index and {n} paper pages", str(page)))
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
    rows += evaluation_status(layout)
    return rows


def evaluation_status(layout: DataLayout) -> list[tuple[str, str, str]]:
    """The evaluation's headline numbers with their intervals, the report, and the last promotion decision."""
    reports = layout.root.resolve().parent / "reports"
    head_path = reports / "eval.json"
    if not head_path.exists():
        return []
    head = json.loads(head_path.read_text())

    def number(key: str, fmt: str) -> str:
        lo, hi = head.get(f"{key}_lo"), head.get(f"{key}_hi")
        span = f" [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None and hi is not None else ""
        return f"{head[key]:{fmt}}{span}"

    rows = []
    if "defect_accuracy" in head:
        kind = "offline proxy" if head.get("defect_accuracy_is_proxy") else "LLM judge"
        by_level = ", ".join(f"{lv} {head[f'defect_accuracy_{lv}']:.2f}" for lv in ("none", "low", "moderate", "high") if f"defect_accuracy_{lv}" in head)
        rows.append(("evaluate", f"defect accuracy {number('defect_accuracy', '.3f')} ({kind}); by context: {by_level}", str(head_path)))
    for key, label in (("quality", "overall quality (LLM judge)"), ("proxy_quality", "overall quality proxy, 100 x ROUGE-L")):
        if key in head:
            rows.append(("evaluate", f"{label} {number(key, '.1f')}", str(head_path)))
    if (reports / "eval.html").exists():
        rows.append(("evaluate", f"report: every row, metric and context level on {head.get('eval_questions', '?')} questions", str(reports / "eval.html")))
    promotion = reports / "promotion.json"
    if promotion.exists():
        record = json.loads(promotion.read_text())
        rows.append(("promote", f"{record.get('action')}: {record.get('reason')}", str(promotion)))
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


# ---- the figure gallery --------------------------------------------------------------------
# An index page (``index.html``) listing every paper, and one page per paper under ``gallery/``.
# Every string that came from a paper or an input file name is escaped; the pages carry a
# Content-Security-Policy that allows no script at all, so an escaping slip cannot run code.
GALLERY_PAGES = "gallery"  # the per-paper pages' folder, beside index.html
_CSP = "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'"
_CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;background:#f4f4f1}
main{max-width:1240px;margin:0 auto;padding:.5em 1.5em 2em}
a{color:#1558b0}
h1{font-size:1.6em;margin:.6em 0 .2em;overflow-wrap:anywhere}
h2{font-size:1.15em;margin:0 0 .5em}
nav.bar{position:sticky;top:0;z-index:1;background:#fff;border-bottom:1px solid #ccc;padding:.5em 1.5em;
 display:flex;gap:1.2em;align-items:baseline}
nav.bar:last-child{position:static;border-top:1px solid #ccc}
nav.bar .pos{color:#666;white-space:nowrap;flex:none}
nav.bar .home{flex:none}
nav.bar .next{margin-left:auto}
nav.bar a{max-width:26em;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;display:inline-block;vertical-align:bottom}
.meta{color:#555;font-size:13px}
.meta code{font-size:12px;overflow-wrap:anywhere}
.note{background:#fff3cd;border:1px solid #e8d48a;padding:.4em .7em;border-radius:4px}
.file{font-family:ui-monospace,Menlo,monospace;font-size:13px;overflow-wrap:anywhere}
td.file{min-width:12em}
table.papers td:nth-child(2){min-width:20em}
.untitled{color:#777;font-style:italic}
table{border-collapse:collapse;background:#fff;width:100%;margin:.6em 0 1.2em}
th,td{border:1px solid #d6d6d6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#ecece8}
thead th{position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.zero{color:#999}
tr:nth-child(even) td{background:#fafaf8}
.toc{display:flex;flex-wrap:wrap;gap:.3em .8em;margin:.5em 0}
.fig{background:#fff;border:1px solid #d6d6d6;border-radius:6px;padding:1em 1.2em;margin:1em 0}
.fig h2 .meta{font-weight:normal;margin-left:.6em}
.crop{display:block;max-width:100%;max-height:440px;border:1px solid #e4e4e4;margin:.3em 0}
.caption{margin:.5em 0;max-width:60em}
.panels{display:flex;flex-wrap:wrap;gap:.7em;margin:.6em 0}
.panel{margin:0;border:3px solid #d6d6d6;border-radius:5px;padding:3px;background:#fafafa;width:min-content;min-width:172px}
.panel.sem{border-color:#2a9d6a}
.panel img{display:block;height:150px;width:auto;max-width:260px;object-fit:contain;background:#fff}
.panel figcaption{font-size:12.5px;padding:3px 2px 0}
.verdict{display:inline-block;padding:0 .4em;border-radius:3px;background:#e2e2e2;color:#333;font-size:12px}
.verdict.sem{background:#2a9d6a;color:#fff}
details{margin-top:.4em}
summary{cursor:pointer;color:#444}
blockquote{margin:.4em 0 .4em 1em;padding-left:.8em;border-left:3px solid #ddd;color:#333;font-size:14px;max-width:60em}
.warn{color:#8a4b00}
"""


def _file_name(source: str) -> str:
    """The original file name of an input: the last part of its path, or of its URL's path."""
    from urllib.parse import unquote, urlparse

    if "://" in source:
        url = urlparse(source)
        return unquote(url.path.rstrip("/").rsplit("/", 1)[-1]) or url.netloc or source
    return Path(source).name or source


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-") or "paper"


def _read(path: Path, columns: list[str] | None = None) -> list[dict]:
    return pq.read_table(path, columns=columns).to_pylist() if path.exists() else []


def gallery_papers(layout: DataLayout) -> list[dict]:
    """Every paper of the ingest and figures tables with what the gallery shows of it, in file-name order:
    sha, title (None where ingest found none), file name, source, figures with their panels (each with its
    QA record count), and counts of panels, SEM panels, QA records (train and eval), rejected QA records and
    quarantine records."""
    papers = {r["paper_sha"]: r for r in _read(layout.ingest / "papers.parquet")}
    figures = _read(layout.figures / "figures.parquet")
    panels = _read(layout.figures / "panels.parquet")
    qa = {split: _read(layout.qa / f"{split}.parquet", ["paper_sha", "panel_id"]) for split in ("train", "eval", "rejected")}
    quarantined: dict[str, list[dict]] = {}
    for stage, path in (("ingest", layout.ingest / "quarantine.parquet"), ("figures", layout.figures / "quarantine.parquet")):
        for r in _read(path):
            quarantined.setdefault(r["source_sha"], []).append({**r, "stage": stage})
    qa_per_panel: dict[str, int] = {}
    for r in qa["train"] + qa["eval"]:
        qa_per_panel[r["panel_id"]] = qa_per_panel.get(r["panel_id"], 0) + 1
    by_figure: dict[str, list[dict]] = {}
    for p in panels:
        by_figure.setdefault(p["figure_id"], []).append({**p, "qa_records": qa_per_panel.get(p["panel_id"], 0)})
    out: dict[str, dict] = {}

    def paper(sha: str) -> dict:
        if sha not in out:
            row = papers.get(sha) or {}
            source = row.get("source") or ""
            out[sha] = {
                "paper_sha": sha, "title": (row.get("title") or "").strip() or None, "file_name": _file_name(source) if source else None,
                "source": source, "source_kind": row.get("source_kind"), "doi": row.get("doi"), "n_pages": row.get("n_pages"),
                "in_ingest": bool(row), "figures": [], "panels": 0, "sem_panels": 0, "qa_records": 0, "qa_rejected": 0,
                "quarantined": quarantined.get(sha, []),
            }
        return out[sha]

    for sha in papers:
        paper(sha)
    for f in figures:
        fp = sorted(by_figure.get(f["figure_id"], []), key=lambda p: p["panel_index"])
        entry = paper(f["paper_sha"])
        entry["figures"].append({**f, "panels": fp})
        entry["panels"] += len(fp)
        entry["sem_panels"] += sum(bool(p["is_sem"]) for p in fp)
    for key, rows in (("qa_records", qa["train"] + qa["eval"]), ("qa_rejected", qa["rejected"])):
        for r in rows:  # records of a paper no longer in the tables are not shown
            if r["paper_sha"] in out:
                out[r["paper_sha"]][key] += 1
    for entry in out.values():
        entry["figures"].sort(key=lambda f: (f["page"], _label_key(f["label"])))
    return sorted(out.values(), key=lambda e: ((e["file_name"] or "~").casefold(), e["paper_sha"]))


def _label_key(label: str) -> tuple:
    import re

    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", label))


def paper_page_name(entry: dict) -> str:
    """The per-paper page's file name: a slug of the file name (or title) and the first 12 hex of the sha."""
    stem = Path(entry["file_name"]).stem if entry["file_name"] else (entry["title"] or "")
    return f"{_slug(stem)}-{entry['paper_sha'][:12]}.html"


def write_figure_gallery(layout: DataLayout, out_dir: Path | None = None, max_figures: int = 500) -> Path:
    """The figure gallery: ``index.html`` listing every paper (title, file name, counts of figures, panels,
    SEM panels, QA records and quarantined inputs) and one page per paper in ``gallery/`` with each figure's
    crop, caption, panels with their labels and SEM verdicts, and the paragraphs that cite it.

    Writes into ``out_dir`` (default ``layout.gallery``: the DVC stage ``gallery``, after qa), every page atomically, the per-paper pages before
    the index that links them; pages of papers no longer in the tables are removed. Image links are
    relative, so the folder works opened from disk. QA counts come from whatever ``layout.qa`` holds now;
    the index says so when those tables are older than the figures. Returns the index's path."""
    out_dir = Path(out_dir) if out_dir is not None else layout.gallery
    pages_dir = out_dir / GALLERY_PAGES
    entries = gallery_papers(layout)
    names = [paper_page_name(e) for e in entries]
    qa_state = _qa_state(layout)
    for i, (entry, name) in enumerate(zip(entries, names)):
        prev = (entries[i - 1], names[i - 1]) if i > 0 else None
        nxt = (entries[i + 1], names[i + 1]) if i + 1 < len(entries) else None
        page = pages_dir / name
        text = _paper_page(layout, entry, page, i, len(entries), prev, nxt, qa_state, max_figures)
        atomic_write_text(page, text)
    index = out_dir / "index.html"
    atomic_write_text(index, _index_page(layout, entries, names, index, qa_state))
    keep = set(names)
    for stale in pages_dir.glob("*.html") if pages_dir.is_dir() else []:
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    return index


def _qa_state(layout: DataLayout) -> dict:
    """Whether QA tables exist, and whether they predate the figures table (counts from an earlier run)."""
    tables = [layout.qa / f"{s}.parquet" for s in ("train", "eval")]
    if not any(t.exists() for t in tables):
        return {"present": False, "stale": False}
    figures = layout.figures / "figures.parquet"
    qa_time = max(t.stat().st_mtime for t in tables if t.exists())
    return {"present": True, "stale": figures.exists() and qa_time < figures.stat().st_mtime}


def _href(target: Path, page: Path) -> str:
    """A relative, URL-quoted and HTML-escaped link from ``page`` to ``target``."""
    from urllib.parse import quote

    return html.escape(quote(os.path.relpath(target, page.parent).replace(os.sep, "/")))


def _image(layout: DataLayout, image_path: str | None) -> Path | None:
    """Where an image is now: stored by content hash in the figures' images folder (the path in the table is
    relative to wherever the stage ran, so the name is what counts)."""
    if not image_path:
        return None
    here = layout.figures / "images" / Path(image_path).name
    return here if here.exists() or not Path(image_path).exists() else Path(image_path)


def _head(title: str) -> str:
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>\n"
            f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">\n"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style></head><body>")


def _title_html(entry: dict) -> str:
    if entry["title"]:
        return html.escape(entry["title"])
    return f"<span class=untitled>{html.escape(entry['file_name'] or entry['paper_sha'][:12])} (no title found)</span>"


def _title_text(entry: dict) -> str:
    return entry["title"] or entry["file_name"] or entry["paper_sha"][:12]


def _qa_note(qa_state: dict, qa_page: Path, page: Path) -> str:
    link = f" (<a href=\"{_href(qa_page, page)}\">QA page</a>)" if qa_page.exists() else ""
    again = "<code>glassllava gallery</code> writes this gallery again with the current counts."
    if not qa_state["present"]:
        return f"<p class=note>No QA records when this gallery was written; {again}</p>"
    if qa_state["stale"]:
        return (f"<p class=note>QA counts are from a QA run older than these figures{link}: papers and panels added since "
                f"show none; {again}</p>")
    return f"<p class=meta>QA counts are the train and eval records of the last QA run{link}.</p>"


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _breakable(name: str) -> str:
    """A file name, escaped, that may wrap after its separators rather than anywhere."""
    import re

    return re.sub(r"([_\-.])", r"\1<wbr>", html.escape(name))


def _num(n: int | None, suffix: str = "") -> str:
    if n is None:
        return "<td class='n zero'>&ndash;</td>"
    return f"<td class='n{' zero' if not n else ''}'>{n}{suffix}</td>"


def _index_page(layout: DataLayout, entries: list[dict], names: list[str], index: Path, qa_state: dict) -> str:
    esc = html.escape
    n_fig = sum(len(e["figures"]) for e in entries)
    n_region = sum(1 for e in entries for f in e["figures"] if f["figure_bbox"] is not None)
    n_pan, n_sem = sum(e["panels"] for e in entries), sum(e["sem_panels"] for e in entries)
    n_qa = sum(e["qa_records"] for e in entries)
    parts = [
        _head(f"GlassLLaVA figure gallery: {len(entries)} papers"),
        "<main>",
        "<h1>GlassLLaVA figure gallery</h1>",
        f"<p>{len(entries)} papers &middot; {n_fig} figures ({n_region} with a region) &middot; {n_pan} panels, "
        f"{n_sem} of them SEM micrographs" + (f" &middot; {n_qa} QA records" if qa_state["present"] else "") + "</p>",
        _qa_note(qa_state, layout.qa / "index.html", index),
    ]
    if entries:
        parts.append(
            "<table class=papers><thead><tr><th>#</th><th>title</th><th>file</th><th>pages</th><th>figures</th>"
            "<th>panels</th><th>SEM panels</th><th>QA records</th><th>quarantined</th></tr></thead><tbody>"
        )
        for i, (e, name) in enumerate(zip(entries, names), 1):
            quarantined = len(e["quarantined"])
            parts.append(
                f"<tr><td class=n>{i}</td><td><a href=\"{_href(index.parent / GALLERY_PAGES / name, index)}\">{_title_html(e)}</a></td>"
                f"<td class=file>{_breakable(e['file_name'] or '(not in the ingest table)')}</td>{_num(e['n_pages'])}"
                f"{_num(len(e['figures']))}{_num(e['panels'])}{_num(e['sem_panels'])}"
                f"{_num(e['qa_records'] if qa_state['present'] else None)}"
                f"<td class='n{' zero' if not quarantined else ''}'>{quarantined}</td></tr>"
            )
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No papers yet: run the ingest and figures stages.</p>")
    records = quarantine_records(layout)
    if records:
        parts.append(f"<h2>Quarantined inputs ({len(records)})</h2>"
                     "<p class=meta>Inputs left out, with the reason; <code>glassllava quarantine</code> lists them too.</p>"
                     "<table><thead><tr><th>file</th><th>stage</th><th>reason</th><th>detail</th><th>seen</th>"
                     "<th>still a source</th></tr></thead><tbody>")
        for r in records:
            parts.append(
                f"<tr><td class=file>{esc(r['name'])}</td><td>{esc(r['stage'])}</td><td>{esc(r['reason'])}</td>"
                f"<td>{esc(r['detail'])}</td><td>{esc(r['seen_at'] or '')}</td><td>{'yes' if r['present'] else 'no (removed)'}</td></tr>"
            )
        parts.append("</tbody></table>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _nav(index: Path, page: Path, i: int, total: int, prev: tuple | None, nxt: tuple | None) -> str:
    link = f"<a class=home href=\"{_href(index, page)}\">&larr; All papers</a><span class=pos>paper {i + 1} of {total}</span>"
    for rel, cls, arrow, other in (("prev", "prev", "&lsaquo; previous: ", prev), ("next", "next", "next: ", nxt)):
        if other:
            entry, name = other
            title = html.escape(_title_text(entry))
            label = f"{arrow}{title}" if rel == "prev" else f"{arrow}{title} &rsaquo;"
            link += f"<a class={cls} rel={rel} href=\"{html.escape(name)}\" title=\"{title}\">{label}</a>"
    return f"<nav class=bar>{link}</nav>"


def _paper_page(layout: DataLayout, entry: dict, page: Path, i: int, total: int, prev: tuple | None, nxt: tuple | None,
                qa_state: dict, max_figures: int) -> str:
    esc = html.escape
    index = page.parent.parent / "index.html"
    figures = entry["figures"]
    shown = figures[:max_figures]
    nav = _nav(index, page, i, total, prev, nxt)
    parts = [_head(f"{_title_text(entry)} - GlassLLaVA figures"), nav, "<main>", f"<h1>{_title_html(entry)}</h1>"]
    meta = [f"file <span class=file>{esc(entry['file_name'])}</span>" if entry["file_name"] else "not in the ingest table"]
    if entry["source_kind"]:
        meta.append(esc(entry["source_kind"]))
    if entry["source"] and entry["source_kind"] == "url":
        meta.append(f"from <span class=file>{esc(entry['source'])}</span>")
    if entry["n_pages"]:
        meta.append(f"{entry['n_pages']} pages")
    if entry["doi"]:
        meta.append(f"DOI {esc(entry['doi'])}")
    pdf = layout.raw_pdfs / f"{entry['paper_sha']}.pdf"
    if pdf.exists():
        meta.append(f"<a href=\"{_href(pdf, page)}\">PDF</a>")
    meta.append(f"sha256 <code>{esc(entry['paper_sha'])}</code>")
    parts.append(f"<p class=meta>{' &middot; '.join(meta)}</p>")
    counts = f"{_n(len(figures), 'figure')} &middot; {_n(entry['panels'], 'panel')}, {entry['sem_panels']} SEM"
    if qa_state["present"]:
        counts += f" &middot; {_n(entry['qa_records'], 'QA record')}" + (f" ({entry['qa_rejected']} rejected)" if entry["qa_rejected"] else "")
    parts.append(f"<p>{counts}</p>")
    if qa_state["stale"]:
        parts.append("<p class=note>QA counts are from a QA run older than these figures.</p>")
    for r in entry["quarantined"]:
        parts.append(f"<p class=note>Quarantined at {esc(r['stage'])}: {esc(r['reason'])} &mdash; {esc(r['detail'])}</p>")
    if len(shown) < len(figures):
        parts.append(f"<p class=note>Showing the first {len(shown)} of {len(figures)} figures.</p>")
    if shown:
        parts.append("<div class=toc>" + "".join(f"<a href='#fig-{k}'>Fig.&nbsp;{esc(f['label'])}</a>" for k, f in enumerate(shown)) + "</div>")
    elif not entry["quarantined"]:
        parts.append("<p>No figure captions were found in this paper.</p>")
    for k, f in enumerate(shown):
        parts.append(_figure_card(layout, f, k, page))
    parts.append(f"</main>{nav}</body></html>")
    return "\n".join(parts) + "\n"


def _figure_card(layout: DataLayout, f: dict, k: int, page: Path) -> str:
    esc = html.escape
    panels = f["panels"]
    sem = sum(bool(p["is_sem"]) for p in panels)
    meta = [f"page {f['page']}", f"caption {esc(f['caption_position'])}", f"SEM score {f['sem_score']:.2f}",
            f"{len(panels)} panel{'' if len(panels) == 1 else 's'}" + (f", {sem} SEM" if panels else "")]
    parts = [f"<section class=fig id='fig-{k}'>", f"<h2>Fig. {esc(f['label'])}<span class=meta>{' &middot; '.join(meta)}</span></h2>"]
    image = _image(layout, f["image_path"])
    if image is not None:
        src = _href(image, page)
        parts.append(f"<a href=\"{src}\"><img class=crop loading=lazy src=\"{src}\" alt=\"Fig. {esc(f['label'])}\"></a>")
    else:
        parts.append("<p class=warn>No region was found for this caption, so there is no crop.</p>")
    parts.append(f"<p class=caption>{esc(f['caption'])}</p>")
    if panels:
        parts.append("<div class=panels>")
        for p in panels:
            label = f"({p['panel_label']})" if p["panel_label"] else f"panel {p['panel_index'] + 1}"
            verdict = "<span class='verdict sem'>SEM</span>" if p["is_sem"] else "<span class=verdict>not SEM</span>"
            qa = f" &middot; {p['qa_records']} QA record{'' if p['qa_records'] == 1 else 's'}" if p["qa_records"] else ""
            src = _href(_image(layout, p["image_path"]), page)
            alt = f"Fig. {f['label']} {label}"
            parts.append(
                f"<figure class='panel{' sem' if p['is_sem'] else ''}'><a href=\"{src}\"><img loading=lazy src=\"{src}\" alt=\"{esc(alt)}\" "
                f"width={p['width_px']} height={p['height_px']}></a>"
                f"<figcaption><b>{esc(label)}</b> {verdict} score {p['sem_score']:.2f}<br><span class=meta>{p['width_px']}&times;{p['height_px']} px{qa}</span>"
                f"</figcaption></figure>"
            )
        parts.append("</div>")
    context = [c for c in f["context"] if c]
    if context:
        shown = context[:3]
        more = f", showing {len(shown)} of {len(context)}" if len(shown) < len(context) else ""
        parts.append(f"<details><summary>Cited in {len(context)} paragraph{'' if len(context) == 1 else 's'}{more}</summary>")
        for c in shown:
            text = esc(c[:600]) + ("&hellip;" if len(c) > 600 else "")
            parts.append(f"<blockquote>{text}</blockquote>")
        parts.append("</details>")
    parts.append("</section>")
    return "\n".join(parts)
