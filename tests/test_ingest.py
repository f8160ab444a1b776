from __future__ import annotations

import http.server
import json
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pyarrow.parquet as pq
import pytest
from .pdfgen import (
    LOREM,
    Caption,
    ColumnBreak,
    Figure,
    Heading,
    Paragraph,
    encrypted_paper,
    image_only_pdf,
    make_paper,
    sample_blocks,
    truncated,
)

from glassllava import download, ingest
from glassllava.ingest import PaperRecord, Quarantined, ingest_pdf, run_ingest
from glassllava.params import CorpusParams, DataLayout, IngestParams

PARAMS = IngestParams()


def _two_column_paper(**kw) -> bytes:
    blocks = [
        Heading("1. Introduction"),
        Paragraph("Left paragraph cites Fig. 1b and c. " + LOREM + " " + LOREM),
        Heading("2. Methods"),
        Paragraph("Second left paragraph. " + LOREM),
        ColumnBreak(),
        Paragraph("Right paragraph starts level with the left one and cites Figs. 1-2. " + LOREM),
        Figure(),
        Caption("Fig. 1. SEM image of the fracture surface after 24 h in humid air."),
        Heading("3. Results"),
        Paragraph("Results paragraph. " + LOREM),
    ]
    return make_paper(blocks, doi="10.1111/jace.18234", **kw)


def _inbox(tmp_path: Path) -> tuple[CorpusParams, DataLayout, Path]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    corpus = CorpusParams(sources=["inbox"], inbox=str(inbox), urls_file=str(inbox / "urls.txt"))
    return corpus, DataLayout(tmp_path / "data"), inbox


def _count_parses(monkeypatch) -> Counter:
    calls: Counter = Counter()
    real = ingest.ingest_pdf

    def counting(pdf, params, **kw):
        calls[Path(pdf).name] += 1
        return real(pdf, params, **kw)

    monkeypatch.setattr(ingest, "ingest_pdf", counting)
    return calls


def test_two_columns_read_left_then_right_with_sections_and_caption():
    record = ingest_pdf(_two_column_paper(), PARAMS)
    assert isinstance(record, PaperRecord)
    rows = record.paragraphs
    texts = [r["text"] for r in rows]
    left = next(i for i, t in enumerate(texts) if t.startswith("Left paragraph"))
    right = next(i for i, t in enumerate(texts) if t.startswith("Right paragraph"))
    assert left < right
    # the right paragraph starts on a row of the left one: it must not be glued to it
    assert "Right paragraph" not in texts[left] and "Left paragraph" not in texts[right]
    assert rows[left]["column"] == 1 and rows[right]["column"] == 2
    assert rows[left]["section"] == "1. Introduction"
    assert rows[right]["section"] == "2. Methods"  # sections carry over into the right column
    captions = [r for r in rows if r["kind"] == "caption"]
    assert [c["text"][:6] for c in captions] == ["Fig. 1"]
    assert next(r for r in rows if r["text"].startswith("Results"))["section"] == "3. Results"
    # text on the raster image, panel letters and axis ticks are not paragraphs
    assert not any("scale bar" in t or t in {"a", "b", "0", "10", "20", "30"} for t in texts)
    assert record.n_columns == 2
    cites = {(c["paragraph_index"], c["figure_label"]): c["panel_labels"] for c in record.citations}
    assert cites == {(left, "1"): ["b", "c"], (right, "1"): [], (right, "2"): []}
    assert record.doi == "10.1111/jace.18234"
    assert record.title == "Crack growth in soda-lime glass under humid air"


def test_title_from_metadata_when_sensible_and_doi_from_metadata():
    data = make_paper(
        sample_blocks(1, 1),
        title="Crack growth in soda-lime glass under humid air",
        metadata_title="Crack growth in soda-lime glass under humid air",
        metadata_subject="J. Glass Sci. 12 (2024). doi:10.5555/glass.2024.001).",
        columns=1,
    )
    record = ingest_pdf(data, PARAMS)
    assert record.title == "Crack growth in soda-lime glass under humid air"
    assert record.doi == "10.5555/glass.2024.001"
    junk = make_paper(
        sample_blocks(1, 1), title="A study of glass fracture", metadata_title="Microsoft Word - draft3.docx"
    )
    assert ingest_pdf(junk, PARAMS).title == "A study of glass fracture"


def test_parse_exception_is_quarantined(monkeypatch):
    def boom(doc):
        raise ValueError("broken content stream")

    monkeypatch.setattr(ingest, "extract_pages", boom)
    result = ingest_pdf(make_paper(sample_blocks(1, 1)), PARAMS)
    assert result == Quarantined("parse_error", "ValueError: broken content stream")


def test_bad_inputs_quarantined_while_good_papers_ingest(tmp_path, caplog):
    corpus, layout, inbox = _inbox(tmp_path)
    good = _two_column_paper()
    (inbox / "good.pdf").write_bytes(good)
    (inbox / "empty.pdf").write_bytes(b"")
    (inbox / "cut.pdf").write_bytes(truncated(make_paper(sample_blocks(3, 3))))
    encrypted_paper(inbox / "locked.pdf")
    (inbox / "notes.txt").write_text("not a paper")
    (inbox / "fake.pdf").write_bytes(b"<html>404</html>")
    image_only_pdf(inbox / "scan.pdf", pages=1)
    make_paper(sample_blocks(3, 6), inbox / "long.pdf", columns=1)  # 2+ pages
    (inbox / "zzz_copy_of_empty.pdf").write_bytes(b"")
    params = IngestParams(max_pages=1)
    report = run_ingest(corpus, params, layout)

    rows = pq.read_table(layout.ingest / "quarantine.parquet").to_pylist()
    reasons = {Path(r["source"]).name: r["reason"] for r in rows}
    assert reasons == {
        "empty.pdf": "empty",
        "zzz_copy_of_empty.pdf": "empty",  # a copy of a bad file still gets its own row
        "cut.pdf": "truncated",
        "locked.pdf": "encrypted",
        "notes.txt": "not_pdf",
        "fake.pdf": "not_pdf",
        "scan.pdf": "no_text",
        "long.pdf": "too_large",
    }
    assert set(reasons.values()) <= set(ingest.QUARANTINE_REASONS)
    for r in rows:  # inputs untouched, bytes kept in quarantine
        assert (inbox / Path(r["source"]).name).exists()
        assert Path(r["kept_at"]).read_bytes() == (inbox / Path(r["source"]).name).read_bytes()
        assert Path(r["kept_at"]).parent == layout.quarantine
    papers = pq.read_table(layout.ingest / "papers.parquet").to_pylist()
    assert [Path(p["source"]).name for p in papers] == ["good.pdf"]
    assert Path(papers[0]["pdf_path"]).read_bytes() == good
    assert report.new == 1 and report.quarantined == 8 and report.duplicates == 1
    assert sum("quarantined" in r.message for r in caplog.records if r.levelname == "WARNING") == 7


def test_a_pdf_without_pages_says_so(tmp_path):
    import io

    import pypdfium2 as pdfium

    buf = io.BytesIO()
    pdfium.PdfDocument.new().save(buf)  # a valid file whose page tree is empty: PDFium refuses it with "Success"
    result = ingest_pdf(buf.getvalue(), PARAMS)
    assert result == Quarantined("parse_error", "the document has no pages (its page tree is empty)")
    assert "Success" not in result.detail


def test_new_papers_are_the_inbox_files_ingest_has_not_seen(tmp_path):
    corpus, layout, inbox = _inbox(tmp_path)
    (inbox / "README.md").write_text("drop PDFs here")
    (inbox / "a.pdf").write_bytes(_two_column_paper())
    (inbox / "copy-of-a.pdf").write_bytes(_two_column_paper())
    (inbox / "notes.txt").write_text("not a paper")
    found = ingest.new_papers(corpus, IngestParams(), layout)
    assert sorted(Path(n["source"]).name for n in found) == ["a.pdf", "notes.txt"], "duplicates once, the README never"
    run_ingest(corpus, IngestParams(), layout)
    assert ingest.new_papers(corpus, IngestParams(), layout) == [], "ingested and quarantined inputs are both known"
    (inbox / "b.pdf").write_bytes(_two_column_paper(title="Another glass"))
    assert [Path(n["source"]).name for n in ingest.new_papers(corpus, IngestParams(), layout)] == ["b.pdf"]


def test_the_inbox_readme_is_not_an_input_but_other_non_pdfs_are(tmp_path):
    corpus, layout, inbox = _inbox(tmp_path)
    (inbox / "README.md").write_text("# Inbox\n\nDrop PDFs here.\n")
    (inbox / "notes.md").write_text("my reading notes")
    (inbox / "sub").mkdir()
    (inbox / "sub" / "README.md").write_text("a README inside a folder of papers is a stray file like any other")
    sources = sorted(Path(s.location).relative_to(inbox).as_posix() for s in ingest.collect_sources(corpus, layout))
    assert sources == ["notes.md", "sub/README.md"]  # the inbox's own README is not an input
    run_ingest(corpus, IngestParams(), layout)
    quarantined = {Path(r["source"]).relative_to(inbox).as_posix() for r in pq.read_table(layout.ingest / "quarantine.parquet").to_pylist()}
    assert quarantined == {"notes.md", "sub/README.md"}


def test_too_large_by_bytes_is_not_read(tmp_path):
    path = tmp_path / "big.pdf"
    path.write_bytes(make_paper(sample_blocks(1, 1)))
    result = ingest_pdf(path, IngestParams(max_bytes=100))
    assert result.reason == "too_large"


def test_duplicates_collapse_and_runs_are_incremental(tmp_path, monkeypatch):
    corpus, layout, inbox = _inbox(tmp_path)
    corpus = corpus.model_copy(update={"sources": ["generated", "inbox"]})
    generated = tmp_path / "generated"
    generated.mkdir()
    paper = _two_column_paper()
    (generated / "p1.pdf").write_bytes(paper)
    (inbox / "same_bytes.pdf").write_bytes(paper)
    (inbox / "empty.pdf").write_bytes(b"")
    calls = _count_parses(monkeypatch)
    progress: list[tuple[str, int, int]] = []

    first = run_ingest(corpus, PARAMS, layout, generated_dir=generated, progress=lambda *a: progress.append(a))
    assert (first.new, first.duplicates, first.parsed) == (1, 1, 2)
    assert progress[-1] == ("ingest: parsing", 2, 2)
    papers = pq.read_table(first.tables["papers"]).to_pylist()
    assert len(papers) == 1 and papers[0]["source_kind"] == "generated"  # the first source is kept
    assert sorted(p.name for p in (layout.ingest / "papers").iterdir()) == sorted(
        f"{sha}.{ingest.PARSER_VERSION}.json" for sha in (papers[0]["paper_sha"], ingest.sha256_bytes(b""))
    )

    time.sleep(1.1)  # first_seen has one-second resolution
    second = run_ingest(corpus, PARAMS, layout, generated_dir=generated)
    assert (second.parsed, second.new, second.known, second.quarantined) == (0, 0, 1, 1)
    again = pq.read_table(second.tables["papers"]).to_pylist()
    assert again == papers  # first_seen kept
    assert pq.read_table(second.tables["paragraphs"]).num_rows > 0

    make_paper(sample_blocks(1, 1), inbox / "new.pdf", title="Another glass paper")
    third = run_ingest(corpus, PARAMS, layout, generated_dir=generated)
    assert (third.parsed, third.new, third.known) == (1, 1, 1)
    assert sum(calls.values()) == 3 and calls["new.pdf"] == 1

    # a new parser version parses everything again but keeps first_seen
    monkeypatch.setattr(ingest, "PARSER_VERSION", "test-next")
    fourth = run_ingest(corpus, PARAMS, layout, generated_dir=generated)
    assert fourth.parsed == 3
    rows = {p["paper_sha"]: p for p in pq.read_table(fourth.tables["papers"]).to_pylist()}
    assert rows[papers[0]["paper_sha"]]["first_seen"] == papers[0]["first_seen"]
    assert rows[papers[0]["paper_sha"]]["parser_version"] == "test-next"


# ---- URL sources ------------------------------------------------------------------------

_PDF = make_paper(sample_blocks(1, 1), title="A downloaded glass paper")


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[Counter] = Counter()

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        _Handler.hits[self.path] += 1
        n = _Handler.hits[self.path]
        if self.path == "/ok.pdf" or (self.path == "/flaky.pdf" and n > 1):
            self.send_response(200)
            self.send_header("Content-Length", str(len(_PDF)))
            self.end_headers()
            self.wfile.write(_PDF)
        elif self.path == "/flaky.pdf":
            self.send_error(500)
        elif self.path == "/slow.pdf":
            time.sleep(1.0)
            try:
                self.send_response(200)
                self.end_headers()
            except OSError:
                pass
        else:
            self.send_error(404)


@pytest.fixture
def http_base():
    _Handler.hits = Counter()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_sources_download_retry_quarantine_and_remember(tmp_path, http_base, monkeypatch):
    monkeypatch.setattr(download, "DOWNLOAD_BACKOFF_S", 0.01)
    corpus, layout, inbox = _inbox(tmp_path)
    corpus = corpus.model_copy(update={"sources": ["urls"]})
    (inbox / "urls.txt").write_text(
        f"# papers to fetch\n{http_base}/ok.pdf\n\n{http_base}/flaky.pdf\n{http_base}/missing.pdf\n{http_base}/slow.pdf\n"
    )
    params = IngestParams(download_timeout_s=0.3, download_retries=1)
    # the nightly flow's cheap look: every URL is new before the first run (nothing is fetched to find out)
    assert [n["why"] for n in ingest.new_papers(corpus, params, layout)] == ["not downloaded yet"] * 4 and not _Handler.hits
    report = run_ingest(corpus, params, layout)

    assert _Handler.hits == {"/ok.pdf": 1, "/flaky.pdf": 2, "/missing.pdf": 1, "/slow.pdf": 2}
    assert report.downloaded == 2 and report.new == 1 and report.duplicates == 1  # same bytes at two URLs
    papers = pq.read_table(report.tables["papers"]).to_pylist()
    assert papers[0]["source"] == f"{http_base}/ok.pdf" and papers[0]["source_kind"] == "url"
    failed = {r["source"].rsplit("/", 1)[1]: r for r in pq.read_table(report.tables["quarantine"]).to_pylist()}
    assert set(failed) == {"missing.pdf", "slow.pdf"}
    assert {r["reason"] for r in failed.values()} == {"download_failed"}
    assert "404" in failed["missing.pdf"]["detail"] and "Timeout" in failed["slow.pdf"]["detail"]

    # after it: the timeout is due again at once, the 404 only a day later
    assert {n["source"].rsplit("/", 1)[1]: n["why"] for n in ingest.new_papers(corpus, params, layout)} == {"slow.pdf": "failed download due again"}
    later = datetime.fromisoformat(ingest._now()) + timedelta(hours=25)
    assert {n["source"].rsplit("/", 1)[1] for n in ingest.new_papers(corpus, params, layout, now=later)} == {"slow.pdf", "missing.pdf"}
    _Handler.hits.clear()
    again = run_ingest(corpus, params, layout)
    # downloaded and permanently failed URLs are remembered; a timeout is tried again next run
    assert _Handler.hits == {"/slow.pdf": 2}
    assert (again.downloaded, again.parsed, again.known, again.quarantined) == (0, 0, 1, 2)

    # a 404 is tried again once download_retry_hours have passed, then after twice as long; or now, when forced
    real_now = ingest._now()
    later = lambda hours: (datetime.fromisoformat(real_now) + timedelta(hours=hours)).isoformat()  # noqa: E731
    for hours, tried in ((23, False), (25, True), (25 + 47, False), (25 + 49, True)):
        _Handler.hits.clear()
        monkeypatch.setattr(ingest, "_now", lambda h=hours: later(h))
        run_ingest(corpus, params, layout)
        assert ("/missing.pdf" in _Handler.hits) is tried, f"{hours} h after the first failure"
    _Handler.hits.clear()
    run_ingest(corpus, params, layout, retry_failed_downloads=True)
    assert "/missing.pdf" in _Handler.hits


@pytest.mark.shared
def test_real_paper_has_title_doi_and_citations(shared_dir, tmp_path):
    corpus, layout, inbox = _inbox(tmp_path)
    for pdf in (shared_dir / "data" / "papers").glob("*.pdf"):
        (inbox / pdf.name).write_bytes(pdf.read_bytes())
    report = run_ingest(corpus, PARAMS, layout)
    assert report.new >= 1 and report.quarantined == 0
    paper = next(p for p in pq.read_table(report.tables["papers"]).to_pylist() if "kintsugi" in p["source"])
    assert paper["title"].startswith("Methods\u2014Kintsugi Imaging of Battery Electrodes")
    assert paper["doi"] == "10.1149/1945-7111/ac7a68"
    assert paper["n_pages"] == 8
    citations = pq.read_table(report.tables["citations"]).to_pylist()
    cited = {c["figure_label"] for c in citations if c["paper_sha"] == paper["paper_sha"]}
    assert {"1", "2", "3", "4"} <= cited


def test_papers_parsed_and_rendered_from_many_threads_at_once(tmp_path):
    """Prefect runs tasks in threads; pdfium crashes the interpreter if two threads enter it."""
    from concurrent.futures import ThreadPoolExecutor

    from glassllava.figures import extract_paper_figures
    from glassllava.synth import generate_corpus

    corpus = tmp_path / "corpus"
    generate_corpus(corpus, papers=3, seed=11)
    pdfs = sorted((corpus / "pdfs").glob("*.pdf")) * 3
    with ThreadPoolExecutor(max_workers=6) as pool:
        parsed = list(pool.map(lambda p: ingest_pdf(p, IngestParams()), pdfs))
        rendered = list(pool.map(lambda p: extract_paper_figures(p, tmp_path / "img", dpi=50), pdfs))
    assert all(isinstance(r, PaperRecord) for r in parsed)
    for a, b in zip(parsed, parsed[3:]):  # the same PDF gives the same result in any thread
        assert a.paragraphs == b.paragraphs
    assert all(len(r.figures) >= 3 for r in rendered)


def test_a_quarantine_record_outlives_its_file_and_is_listed_with_its_name(tmp_path):
    from typer.testing import CliRunner

    from glassllava.cli import app

    corpus, layout, inbox = _inbox(tmp_path)
    (inbox / "good.pdf").write_bytes(_two_column_paper())
    (inbox / "[draft] broken.pdf").write_bytes(b"<html>404</html>")
    run_ingest(corpus, IngestParams(), layout)
    (inbox / "[draft] broken.pdf").unlink()  # the user takes the bad file away
    run_ingest(corpus, IngestParams(), layout)
    (row,) = pq.read_table(layout.ingest / "quarantine.parquet").to_pylist()
    assert Path(row["source"]).name == "[draft] broken.pdf" and row["reason"] == "not_pdf" and row["present"] is False
    assert Path(row["kept_at"]).read_bytes() == b"<html>404</html>"  # the hash-named copy, and why it is there

    result = CliRunner().invoke(app, ["quarantine", "--data", str(layout.root), "--json"])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.output)
    assert record["name"] == "[draft] broken.pdf" and record["present"] is False and record["stage"] == "ingest"
    table = CliRunner().invoke(app, ["quarantine", "--data", str(layout.root)], env={"COLUMNS": "240"})
    assert "[draft] broken.pdf" in table.output and "not_pdf" in table.output and "no (removed)" in table.output

    (inbox / "[draft] broken.pdf").write_bytes(b"<html>404</html>")  # back again: one row, present
    run_ingest(corpus, IngestParams(), layout)
    rows = pq.read_table(layout.ingest / "quarantine.parquet").to_pylist()
    assert [(Path(r["source"]).name, r["present"]) for r in rows] == [("[draft] broken.pdf", True)]


def test_an_excerpt_without_a_title_gets_none_rather_than_a_paragraph(shared_dir, tmp_path):
    """docling-eval's case_01 is two pages cut from the middle of a paper: its largest text is a paragraph."""
    pdf = shared_dir / "bench" / "figures" / "pdfs" / "doclingeval_case01_32a7d8aa.pdf"
    if not pdf.exists():
        pytest.skip(f"{pdf} is not in ../shared")
    record = ingest_pdf(pdf, IngestParams())
    assert record.title is None or len(record.title.split()) <= 40, record.title
