"""The figure gallery: an index of papers, one page per paper, everything from papers escaped; and the same
pages loaded in headless Chromium (skipped where no Chromium is installed)."""

from __future__ import annotations

import io
import os
import re
import time
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from glassllava.files import sha256_bytes
from glassllava.params import DataLayout
from glassllava.report import GALLERY_PAGES, paper_page_name, write_figure_gallery
from glassllava.schemas import (
    FIGURES_SCHEMA,
    PANELS_SCHEMA,
    PAPERS_SCHEMA,
    QA_SCHEMA,
    QUARANTINE_SCHEMA,
    table_from_rows,
    write_table,
)
from tests.browser import _Chromium, _load, chromium_or_skip  # the DevTools-pipe driver, shared with the evaluation report's test

A, B, C = "a1" * 32, "b2" * 32, "c3" * 32  # paper shas
EVIL_TITLE = 'Glass & "ceramics": <b>bold</b> it\'s'
EVIL_CAPTION = "Fig. 1. (a) SEM image <script>alert('x')</script> of <img src=x onerror=alert(1)> glass & more; (b) a plot."
NOW = datetime(2024, 5, 1, tzinfo=timezone.utc)


def _png(layout: DataLayout, shade: int, size=(120, 80)) -> tuple[str, str]:
    buf = io.BytesIO()
    Image.new("L", size, shade).save(buf, format="PNG")
    data = buf.getvalue()
    sha = sha256_bytes(data)
    path = layout.figures / "images" / f"{sha}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path), sha


def _paper(sha: str, source: str, title: str | None, kind: str = "inbox") -> dict:
    return {"paper_sha": sha, "pdf_path": f"data/raw/pdfs/{sha}.pdf", "source": source, "source_kind": kind, "title": title,
            "doi": None, "n_pages": 6, "n_bytes": 1000, "n_columns": 2, "first_seen": NOW, "parser_version": "test"}


def _figure(layout: DataLayout, sha: str, label: str, caption: str, shade: int, *, region: bool = True, context=()) -> dict:
    path, image_sha = _png(layout, shade) if region else (None, None)
    return {"figure_id": f"{sha[:16]}-fig{label}", "paper_sha": sha, "label": label, "page": int(label) + 1,
            "figure_bbox": [10.0, 10.0, 200.0, 150.0] if region else None, "caption": caption, "caption_bbox": [10.0, 160.0, 200.0, 180.0],
            "caption_position": "below" if region else "none", "panel_labels": ["a", "b"], "image_path": path, "image_sha": image_sha,
            "is_sem": region, "sem_score": 0.9 if region else 0.0, "context": list(context), "context_paragraphs": list(range(len(context))),
            "layout_backend": "heuristic", "extractor_version": "test"}


def _panel(layout: DataLayout, figure: dict, index: int, label: str | None, sem: bool) -> dict:
    path, image_sha = _png(layout, 40 + 30 * index, (90, 60))
    return {"panel_id": f"{figure['figure_id']}-{label or index}", "figure_id": figure["figure_id"], "paper_sha": figure["paper_sha"],
            "panel_label": label, "panel_index": index, "page": figure["page"], "bbox": [0.0, 0.0, 1.0, 1.0], "image_path": path,
            "image_sha": image_sha, "width_px": 90, "height_px": 60, "is_sem": sem, "sem_score": 0.93 if sem else 0.04, "context": []}


def _qa(panel: dict, n: int) -> list[dict]:
    return [{"qa_id": f"{panel['panel_id']}-{i}", "split": "train", "paper_sha": panel["paper_sha"], "figure_id": panel["figure_id"],
             "panel_id": panel["panel_id"], "image_path": panel["image_path"], "image_sha": panel["image_sha"], "question": "Q?",
             "answer": "A.", "question_type": "description", "complexity": "simple", "context_level": "none", "context_types": [],
             "features": [], "defect_present": False, "defect_types": [], "evidence": [], "generator": "offline-rules/2",
             "prompt_version": "", "request_key": ""} for i in range(n)]


def make_gallery_data(root: Path, *, qa_records: int = 3, with_c: bool = True) -> DataLayout:
    """Three papers: A with a hostile title and caption (two figures, one without a region), B untitled from a URL
    with five citing paragraphs, C whose figure extraction failed; one quarantined ingest input."""
    layout = DataLayout(root)
    papers = [_paper(A, "/inbox/Smith et al. 2021 & co.pdf", EVIL_TITLE),
              _paper(B, "https://example.org/papers/Jones%202020.pdf?download=1", None, kind="url")]
    if with_c:
        papers.append(_paper(C, "/inbox/zz broken figures.pdf", "A paper whose figures failed"))
    f1 = _figure(layout, A, "1", EVIL_CAPTION, 200, context=["Fig. 1a shows <em>bubbles</em> & cracks."])
    f2 = _figure(layout, A, "2", "Fig. 2. A caption whose figure was not found.", 0, region=False)
    f3 = _figure(layout, B, "3", "Fig. 3. Crystals.", 120, context=[f"Paragraph {i} cites Fig. 3." for i in range(5)])
    panels = [_panel(layout, f1, 0, "a", True), _panel(layout, f1, 1, "b", False), _panel(layout, f3, 0, None, True)]
    write_table(table_from_rows(papers, PAPERS_SCHEMA), layout.ingest / "papers.parquet", PAPERS_SCHEMA)
    write_table(table_from_rows([f1, f2, f3], FIGURES_SCHEMA), layout.figures / "figures.parquet", FIGURES_SCHEMA)
    write_table(table_from_rows(panels, PANELS_SCHEMA), layout.figures / "panels.parquet", PANELS_SCHEMA)
    bad = {"source_sha": "d4" * 32, "source": "/inbox/<evil> & \"bad\".pdf", "source_kind": "inbox", "reason": "truncated",
           "detail": "no %%EOF marker", "kept_at": None, "seen_at": NOW, "present": True}
    write_table(table_from_rows([bad], QUARANTINE_SCHEMA), layout.ingest / "quarantine.parquet", QUARANTINE_SCHEMA)
    failed = [{"source_sha": C, "source": "/inbox/zz broken figures.pdf", "source_kind": "figures", "reason": "figure_extraction_failed",
               "detail": "boom <b>", "kept_at": None, "seen_at": NOW, "present": None}] if with_c else []
    write_table(table_from_rows(failed, QUARANTINE_SCHEMA), layout.figures / "quarantine.parquet", QUARANTINE_SCHEMA)
    if qa_records:
        time.sleep(0.01)  # the QA tables are newer than the figures table: current counts
        write_table(table_from_rows(_qa(panels[0], qa_records), QA_SCHEMA), layout.qa / "train.parquet", QA_SCHEMA)
    return layout


class _Page(HTMLParser):
    """Tags, links, image sources and text of a page, as a browser's parser sees them."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.links: list[str] = []
        self.images: list[str] = []
        self.chunks: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "br":
            self.chunks.append(" ")

    def handle_data(self, data):
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", "".join(self.chunks))


def _resolve(page: Path, href: str) -> Path:
    return (page.parent / unquote(href.split("#")[0])).resolve()


@pytest.fixture
def gallery(tmp_path) -> tuple[DataLayout, Path]:
    layout = make_gallery_data(tmp_path / "data")
    return layout, write_figure_gallery(layout)


def _pages(layout: DataLayout) -> dict[str, Path]:
    return {p.name: p for p in (layout.gallery / GALLERY_PAGES).glob("*.html")}


def test_index_lists_each_paper_with_title_file_name_and_counts(gallery):
    layout, index = gallery
    page = _Page(index.read_text())
    assert page.text.count("Glass & \"ceramics\": <b>bold</b> it's") == 1  # the title, shown as text
    assert "Smith et al. 2021 & co.pdf" in page.text and "Jones 2020.pdf" in page.text  # file names, the URL's unquoted
    assert "Jones 2020.pdf (no title found)" in page.text
    assert "3 papers · 3 figures (2 with a region) · 3 panels, 2 of them SEM micrographs · 3 QA records" in page.text
    rows = re.findall(r"<tr><td class=n>(\d)</td>(.*?)</tr>", index.read_text())
    cells = [re.findall(r"<td class='n[^']*'>([^<]*)</td>", r) for _, r in rows]
    # pages, figures, panels, SEM panels, QA records, quarantined; papers in file-name order
    assert cells == [["6", "1", "1", "1", "0", "0"], ["6", "2", "2", "1", "3", "0"], ["6", "0", "0", "0", "0", "1"]]
    assert "Quarantined inputs (2)" in page.text and '<evil> & "bad".pdf' in page.text


def test_every_link_and_image_resolves_from_disk(gallery):
    layout, index = gallery
    pages = _pages(layout)
    assert len(pages) == 3
    links = [_resolve(index, h) for h in _Page(index.read_text()).links]
    assert sorted(p.resolve() for p in pages.values()) == sorted(p for p in links if p.suffix == ".html")
    for page_path in [index, *pages.values()]:
        page = _Page(page_path.read_text())
        for href in page.links + page.images:
            assert not href.startswith(("/", "file:", "http")), href  # relative: the folder can move
            assert _resolve(page_path, href).exists(), (page_path.name, href)


def test_paper_pages_navigate_back_and_forth(gallery):
    layout, index = gallery
    order = [re.search(r"href=\"gallery/([^\"]+)\"", row).group(1) for row in re.findall(r"<tr><td class=n>.*?</tr>", index.read_text())]
    for i, name in enumerate(order):
        text = (layout.gallery / GALLERY_PAGES / name).read_text()
        assert text.count('href="../index.html"') == 2  # top and bottom
        assert f"paper {i + 1} of 3" in text
        prev = re.findall(r'rel=prev href="([^"]+)"', text)
        nxt = re.findall(r'rel=next href="([^"]+)"', text)
        assert prev == ([order[i - 1]] * 2 if i else [])
        assert nxt == ([order[i + 1]] * 2 if i + 1 < len(order) else [])


def test_paper_page_shows_captions_panels_verdicts_and_escapes_everything(gallery):
    layout, _ = gallery
    entry = {"paper_sha": A, "file_name": "Smith et al. 2021 & co.pdf", "title": EVIL_TITLE}
    raw = (layout.gallery / GALLERY_PAGES / paper_page_name(entry)).read_text()
    page = _Page(raw)
    assert "script" not in page.tags and page.tags.count("img") == 3 and "b" in page.tags  # 1 crop + 2 panels; <b> only ours
    assert "<script>" not in raw and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in raw
    assert "onerror=alert" not in raw.replace("onerror=alert(1)&gt;", "")  # only as escaped text
    assert EVIL_CAPTION in page.text  # the caption reads as written
    assert f"<title>{EVIL_TITLE.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;').replace(chr(34), '&quot;').replace(chr(39), '&#x27;')}" in raw
    assert f"<h1>{EVIL_TITLE}</h1>" not in raw
    assert "file Smith et al. 2021 & co.pdf" in page.text
    assert "(a) SEM score 0.93 90×60 px · 3 QA records" in page.text
    assert "(b) not SEM score 0.04" in page.text
    assert "No region was found for this caption" in page.text  # Fig. 2
    assert "Fig. 1a shows <em>bubbles</em> & cracks." in page.text
    assert "Content-Security-Policy" in raw and "default-src 'none'" in raw  # no script could run even if one slipped in


def test_subsets_say_so(tmp_path):
    layout = make_gallery_data(tmp_path / "data")
    write_figure_gallery(layout, max_figures=1)
    pages = {n: _Page(p.read_text()).text for n, p in _pages(layout).items()}
    a = pages[paper_page_name({"paper_sha": A, "file_name": "Smith et al. 2021 & co.pdf", "title": None})]
    b = pages[paper_page_name({"paper_sha": B, "file_name": "Jones 2020.pdf", "title": None})]
    assert "Showing the first 1 of 2 figures." in a
    assert "Showing the first" not in b
    assert "Cited in 5 paragraphs, showing 3 of 5" in b
    c = pages[paper_page_name({"paper_sha": C, "file_name": "zz broken figures.pdf", "title": None})]
    assert "Quarantined at figures: figure_extraction_failed — boom <b>" in c


def test_qa_counts_say_where_they_come_from(tmp_path):
    layout = make_gallery_data(tmp_path / "none", qa_records=0)
    index = _Page(write_figure_gallery(layout).read_text()).text
    assert "No QA records when this gallery was written" in index and "glassllava gallery writes this gallery again" in index and "QA records ·" not in index
    layout = make_gallery_data(tmp_path / "stale")
    figures = layout.figures / "figures.parquet"
    qa = layout.qa / "train.parquet"
    os.utime(figures, (qa.stat().st_mtime + 10, qa.stat().st_mtime + 10))  # figures re-extracted after the QA run
    index = _Page(write_figure_gallery(layout).read_text()).text
    assert "QA counts are from a QA run older than these figures" in index


def test_rerun_overwrites_and_removes_stale_pages(tmp_path):
    layout = make_gallery_data(tmp_path / "data")
    index = write_figure_gallery(layout)
    first = {n: p.read_bytes() for n, p in _pages(layout).items()}
    first_index = index.read_bytes()
    write_figure_gallery(layout)
    assert {n: p.read_bytes() for n, p in _pages(layout).items()} == first and index.read_bytes() == first_index  # deterministic
    c_page = paper_page_name({"paper_sha": C, "file_name": "zz broken figures.pdf", "title": None})
    assert c_page in first
    make_gallery_data(layout.root, with_c=False)  # paper C is gone
    write_figure_gallery(layout)
    assert set(_pages(layout)) == set(first) - {c_page}
    assert c_page not in index.read_text()
    leftovers = [p for p in layout.gallery.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert not leftovers


def test_gallery_into_another_folder_links_images_relatively(tmp_path):
    layout = make_gallery_data(tmp_path / "data")
    out = tmp_path / "elsewhere" / "gallery-out"
    index = write_figure_gallery(layout, out)
    assert index == out / "index.html"
    for page_path in [index, *(out / GALLERY_PAGES).glob("*.html")]:
        page = _Page(page_path.read_text())
        for href in page.links + page.images:
            assert _resolve(page_path, href).exists(), (page_path.name, href)


def test_cli_gallery_command(tmp_path):
    from typer.testing import CliRunner

    from glassllava.cli import app

    layout = make_gallery_data(tmp_path / "data")
    result = CliRunner().invoke(app, ["gallery", "--data", str(layout.root), "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g" / "index.html").exists() and len(list((tmp_path / "g" / GALLERY_PAGES).glob("*.html"))) == 3
    result = CliRunner().invoke(app, ["gallery", "--data", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no papers" in result.output


# ---- in a real browser ---------------------------------------------------------------------

@pytest.mark.slow
def test_index_and_paper_page_in_headless_chromium(tmp_path):
    exe = chromium_or_skip()
    layout = make_gallery_data(tmp_path / "data")
    index = write_figure_gallery(layout)
    shots = Path(os.environ.get("GLASSLLAVA_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    browser = _Chromium(exe, tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            browser.send(method, session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session)

        facts = _load(browser, session, index.as_uri(), shots / "gallery-index.png")
        assert facts["errors"] == [] and facts["broken"] == [] and facts["scripts"] == 0
        assert facts["title"] == "GlassLLaVA figure gallery: 3 papers"
        assert EVIL_TITLE in facts["text"] and "Jones 2020.pdf" in facts["text"]
        paper_links = [u for u in facts["links"] if f"/{GALLERY_PAGES}/" in u]
        assert len(paper_links) == 3
        first = next(u for u in paper_links if A[:12] in u)

        facts = _load(browser, session, first, shots / "gallery-paper.png")
        assert facts["errors"] == [] and facts["broken"] == [] and facts["scripts"] == 0
        assert facts["images"] == 3
        assert facts["h1"] == EVIL_TITLE and facts["title"].startswith(EVIL_TITLE)
        assert EVIL_CAPTION in facts["text"]
        assert index.as_uri() in facts["links"]  # back to the index

        # a missing image is caught: the check is not vacuous
        page = Path(unquote(first.removeprefix("file://")))
        _resolve(page, _Page(page.read_text()).images[-1]).unlink()
        facts = _load(browser, session, first)
        assert facts["broken"] or any("ERR_FILE_NOT_FOUND" in e for e in facts["errors"])
    finally:
        browser.close()


def test_qa_page_says_when_it_shows_a_subset(tmp_path):
    from glassllava.qa import QAReport, write_qa_page

    layout = DataLayout(root=tmp_path)
    layout.qa.mkdir(parents=True)
    rows = [
        {
            "panel_id": f"p{i}", "image_path": str(tmp_path / f"p{i}.png"), "split": "train", "features": ["pores"],
            "question_type": "description", "context_level": "none", "question": f"What is in panel {i}? <b>",
            "answer": "Pores & cracks.",
        }
        for i in range(3)
        for _ in range(2)
    ]
    report = QAReport(
        generator="offline-rules@x", prompt_version="qa_v1", panels=3, panels_done=3, panels_pending=0, records=6,
        train_records=6, eval_records=0, train_papers=1, eval_papers=0, rejected=0, rejected_by_reason={},
        record_valid_rate=1.0, by_type={}, by_context_level={},
        spent={"replies": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd_at_list_price": 0.0},
    )
    page = write_qa_page(layout, rows, report, max_panels=2).read_text()
    assert "Showing the first 2 of 3 panels (4 of 6 records)" in page
    assert "p2.png" not in page and "What is in panel 0? &lt;b&gt;" in page and "Pores &amp; cracks." in page
    page = write_qa_page(layout, rows, report, max_panels=60).read_text()
    assert "All 3 panels with records are shown." in page
