"""Stage ingest: PDFs from the corpus sources in; papers, paragraphs, citations and quarantine tables out.

Sources (``corpus.sources``) are the generated corpus, an inbox folder and a list of URLs.
Each PDF is stored once by content hash (``raw/pdfs/<sha>.pdf``, a copy: inputs are never
moved or deleted), parsed into paragraphs in reading order (``pdflines``) and scanned for
figure citations (``citations``). Bad inputs are kept under ``quarantine/`` with a reason;
they never stop the run.

Incremental: the result for each PDF (paper or quarantine decision) is cached in
``ingest/papers/<sha>.<PARSER_VERSION>.json``; the four Parquet tables are rebuilt from those
files every run, so a re-run parses only PDFs it has not seen with this parser version.

The work is split so a flow can map over papers: ``plan_ingest`` (collect, download, hash,
look up the cache) -> ``ingest_pdf`` per pending PDF (pure apart from reading the file) ->
``finish_ingest`` (store bytes, write caches, rebuild tables). ``run_ingest`` does all three.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from glassllava.citations import paragraph_citations
from glassllava.download import DownloadFailed, download
from glassllava.files import atomic_write_json, read_json, sha256_bytes, sha256_file
from glassllava.pagegraphics import box_area, box_intersection
from glassllava.params import CorpusParams, DataLayout, IngestParams
from glassllava.pdfdoc import open_pdf
from glassllava.pdflines import Block, PageText, extract_pages
from glassllava.schemas import (
    CITATIONS_SCHEMA,
    PAPERS_SCHEMA,
    PARAGRAPHS_SCHEMA,
    QUARANTINE_SCHEMA,
    conform,
    read_table,
    table_from_rows,
    write_table,
)

log = logging.getLogger(__name__)

# Bump when parsing changes what a paper's rows contain: every PDF is parsed again once.
PARSER_VERSION = "3"  # 2: control characters out, hyphenated line breaks joined, unmapped glyphs resolved; 3: MediaBox frame, no paragraph as a title

QUARANTINE_REASONS = (
    "empty",  # zero bytes
    "truncated",  # cut file: no %%EOF at the end, or pdfium cannot load it
    "encrypted",  # needs a password
    "not_pdf",  # no %PDF- header
    "no_text",  # fewer than params.min_chars_per_page characters per page on average
    "too_large",  # more than params.max_bytes bytes or params.max_pages pages
    "parse_error",  # any other failure while parsing
    "download_failed",  # URL source that could not be fetched
)


DOI_RE = re.compile(r"10\.\d{4,9}/[^\s\"<>]+")
_FIRST_PAGES_FOR_DOI = 2
_IMAGE_COVER_LIMIT = 0.8  # a raster covering more of the page is a scan/background: keep its text layer


Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Source:
    """One input: a local file (``path``) or a URL (``path`` set once downloaded)."""

    location: str  # the path or URL as given
    kind: str  # generated | inbox | url
    path: Path | None = None


@dataclass
class PaperRecord:
    """What ``ingest_pdf`` learns from a readable PDF; rows already carry ``paper_sha``."""

    paper_sha: str
    title: str | None
    doi: str | None
    n_pages: int
    n_bytes: int
    n_columns: int | None
    paragraphs: list[dict]  # PARAGRAPHS_SCHEMA rows
    citations: list[dict]  # CITATIONS_SCHEMA rows


@dataclass
class Quarantined:
    reason: str  # one of QUARANTINE_REASONS
    detail: str


@dataclass
class PendingPDF:
    paper_sha: str
    source: Source
    n_bytes: int
    cached: bool  # a result for this sha and parser version exists already


@dataclass
class IngestPlan:
    pdfs: list[PendingPDF]  # unique by sha, in source order
    also_from: list[tuple[str, Source]]  # (sha, source) of duplicates of an earlier source
    download_failures: list[dict]  # QUARANTINE_SCHEMA rows
    downloaded: int  # URLs fetched this run
    new_download_failures: int  # URLs that failed this run (the rest are remembered permanent failures)

    @property
    def pending(self) -> list[PendingPDF]:
        return [p for p in self.pdfs if not p.cached]


@dataclass
class IngestReport:
    new: int = 0  # papers parsed and added this run
    known: int = 0  # papers served from the per-paper cache
    duplicates: int = 0  # sources whose bytes another source already supplied
    quarantined: int = 0  # rows in quarantine.parquet this run
    newly_quarantined: int = 0  # of which decided this run (parsed or failed to download)
    parsed: int = 0  # ingest_pdf calls this run
    downloaded: int = 0  # URLs fetched this run
    tables: dict[str, Path] = field(default_factory=dict)


# ---- sources ------------------------------------------------------------------------


def _is_inbox_readme(path: Path, inbox: Path) -> bool:
    return path.parent.resolve() == inbox.resolve() and path.stem.upper() == "README" and path.suffix.lower() in ("", ".md", ".txt")


def collect_sources(corpus: CorpusParams, layout: DataLayout, generated_dir: Path | None = None) -> list[Source]:
    """Inputs named by ``corpus.sources``, in that order; files sorted by name within a folder."""
    sources: list[Source] = []
    for kind in corpus.sources:
        if kind == "generated":
            folder = Path(generated_dir) if generated_dir is not None else layout.corpus / "pdfs"
            files = sorted(folder.glob("*.pdf")) if folder.is_dir() else []
            if not files:
                log.warning("generated corpus source has no PDFs in %s", folder)
            sources += [Source(str(p), "generated", p) for p in files]
        elif kind == "inbox":
            folder = Path(corpus.inbox)
            urls_file = Path(corpus.urls_file).resolve()
            files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
            # every file is checked (non-PDFs are quarantined), except the URL list, hidden files and the
            # folder's own README (it explains the inbox; quarantining it on every run would be noise)
            files = [p for p in files if p.resolve() != urls_file and not p.name.startswith(".") and not _is_inbox_readme(p, folder)]
            sources += [Source(str(p), "inbox", p) for p in files]
        elif kind == "urls":
            path = Path(corpus.urls_file)
            if not path.is_file():
                log.warning("urls source: %s does not exist", path)
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                url = line.strip()  # whole-line comments only: a URL may contain "#"
                if url and not url.startswith("#"):
                    sources.append(Source(url, "url"))
    return sources


MAX_DOWNLOAD_RETRY_HOURS = 30 * 24


def _retry_due(entry: dict, params: IngestParams, now: datetime) -> bool:
    """A failed-for-good URL is due again ``download_retry_hours`` after its last failure, doubled per failure."""
    hours = min(params.download_retry_hours * 2 ** (entry.get("attempts", 1) - 1), MAX_DOWNLOAD_RETRY_HOURS)
    return now - datetime.fromisoformat(entry["seen_at"]) >= timedelta(hours=hours)


def _why_fetch(entry: dict | None, params: IngestParams, now: datetime, retry_failed: bool = False) -> str | None:
    """Why a URL with this downloads.json entry is (re)fetched on this run; None: it is not (its file is here, or it
    failed for good and is not due again)."""
    if entry is None:
        return "not downloaded yet"
    if entry["status"] == "ok":
        return None if Path(entry["path"]).is_file() else "downloaded file missing"
    if entry.get("permanent") and not retry_failed and not _retry_due(entry, params, now):
        return None
    return "failed download due again"


def _fetch_urls(
    sources: list[Source], params: IngestParams, layout: DataLayout, progress: Progress | None, retry_failed: bool = False
) -> tuple[list[Source], list[dict], int, int]:
    """Local sources for the URL sources (downloading only unseen URLs and failed ones that are due again), and
    failure rows."""
    index_path = layout.ingest / "downloads.json"
    index: dict[str, dict] = read_json(index_path) if index_path.is_file() else {}
    dest_dir = layout.root / "raw" / "downloads"
    out: list[Source] = []
    failures: list[dict] = []
    fetched = failed = 0
    urls = [s for s in sources if s.kind == "url"]
    for i, src in enumerate(urls, 1):
        entry = index.get(src.location)
        why = _why_fetch(entry, params, datetime.fromisoformat(_now()), retry_failed)
        if why is None and entry["status"] == "ok":
            out.append(Source(src.location, "url", Path(entry["path"])))
        elif why is None:
            log.info("%s failed before (%s); not tried again yet (ingest.download_retry_hours; "
                     "`glassllava ingest --retry-downloads` tries now)", src.location, entry["detail"])
            failures.append(_download_failure_row(src, entry["detail"], entry["seen_at"]))
        else:
            now = _now()
            try:
                path = download(
                    src.location,
                    dest_dir,
                    params.download_timeout_s,
                    params.download_retries,
                    params.download_max_bytes,
                )
                index[src.location] = {
                    "status": "ok",
                    "path": str(path),
                    "sha256": sha256_file(path),
                    "fetched_at": now,
                }
                out.append(Source(src.location, "url", path))
                fetched += 1
            except DownloadFailed as e:
                log.warning("quarantined %s: download_failed (%s)", src.location, e)
                attempts = entry.get("attempts", 1) + 1 if entry and entry["status"] == "failed" else 1
                index[src.location] = {"status": "failed", "detail": str(e), "permanent": e.permanent, "seen_at": now, "attempts": attempts}
                failures.append(_download_failure_row(src, str(e), now))
                failed += 1
            atomic_write_json(index_path, index)
        if progress:
            progress("ingest: downloading", i, len(urls))
    return out, failures, fetched, failed


def _download_failure_row(src: Source, detail: str, seen_at: str) -> dict:
    return {
        "source_sha": sha256_bytes(b""),
        "source": src.location,
        "source_kind": src.kind,
        "reason": "download_failed",
        "detail": detail,
        "kept_at": None,
        "seen_at": datetime.fromisoformat(seen_at),
    }


# ---- one PDF ------------------------------------------------------------------------


def ingest_pdf(pdf: Path | bytes, params: IngestParams, *, paper_sha: str | None = None) -> PaperRecord | Quarantined:
    """Parse one PDF (a path or its bytes) into a ``PaperRecord``, or say why it is quarantined.

    Pure apart from reading ``pdf``: writes nothing, never raises for a bad file.
    """
    if isinstance(pdf, (str, Path)):
        n_bytes = Path(pdf).stat().st_size
        if n_bytes > params.max_bytes:
            return Quarantined("too_large", f"{n_bytes} bytes > max_bytes={params.max_bytes}")
        data = Path(pdf).read_bytes()
    else:
        data = bytes(pdf)
    if not data:
        return Quarantined("empty", "zero bytes")
    if len(data) > params.max_bytes:
        return Quarantined("too_large", f"{len(data)} bytes > max_bytes={params.max_bytes}")
    if b"%PDF-" not in data[:1024]:
        return Quarantined("not_pdf", f"no %PDF- header; starts with {data[:16]!r}")
    sha = paper_sha or sha256_bytes(data)
    if b"%%EOF" not in data[-2048:]:
        return Quarantined("truncated", f"no %%EOF marker at the end of {len(data)} bytes")
    try:
        with open_pdf(data) as doc:  # one document at a time, closed with its pages (glassllava.pdfdoc)
            try:
                n_pages = len(doc)
                if n_pages > params.max_pages:
                    return Quarantined("too_large", f"{n_pages} pages > max_pages={params.max_pages}")
                if n_pages == 0:
                    return Quarantined("parse_error", "the document has no pages")
                return _parse(doc, data, sha, params)
            except Exception as e:  # a bad file must never stop the run
                log.debug("parse error in %s", sha, exc_info=True)
                return Quarantined("parse_error", f"{type(e).__name__}: {e}")
    except pdfium.PdfiumError as e:  # only opening can raise here: parsing errors are caught above
        # PDFium's error code is process-wide and not reset by a failure that sets none: check the bytes first
        if _EMPTY_PAGE_TREE.search(data) and not _PAGE_OBJECT.search(data):
            return Quarantined("parse_error", "the document has no pages (its page tree is empty)")
        if e.err_code == pdfium_c.FPDF_ERR_PASSWORD and b"/Encrypt" in data:
            return Quarantined("encrypted", "a password is needed to open it")
        if e.err_code in (pdfium_c.FPDF_ERR_FORMAT, pdfium_c.FPDF_ERR_FILE):
            return Quarantined("truncated", f"pdfium cannot load it: {e}")
        if e.err_code == pdfium_c.FPDF_ERR_SUCCESS:  # "Failed to load document (PDFium: Success)" says nothing
            return Quarantined("parse_error", "PDFium cannot load it and names no error: its structure is probably broken")
        return Quarantined("parse_error", f"pdfium: {e}")


# a page tree that counts no pages, and a page object (/Type /Page, not /Pages); in a file with object streams
# both may be compressed, and then the message stays the general one
_EMPTY_PAGE_TREE = re.compile(rb"/Count\s*0(?![0-9])")
_PAGE_OBJECT = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def _parse(doc: pdfium.PdfDocument, data: bytes, sha: str, params: IngestParams) -> PaperRecord | Quarantined:
    pages = extract_pages(doc)
    blocks = [b for pg in pages for b in _body_blocks(pg, _image_boxes(doc[pg.page - 1], pg))]
    n_chars = sum(len(b.text) for b in blocks)
    if n_chars < params.min_chars_per_page * len(pages):
        return Quarantined(
            "no_text", f"{n_chars} characters on {len(pages)} pages (< {params.min_chars_per_page}/page)"
        )
    paragraphs, citations = [], []
    section: str | None = None
    for i, b in enumerate(blocks):
        text = b.text
        if b.kind == "heading":
            section = text
        paragraphs.append(
            {
                "paper_sha": sha,
                "paragraph_index": i,
                "page": b.page,
                "column": b.column,
                "kind": b.kind,
                "section": section,
                "text": text,
                "bbox": [float(v) for v in b.bbox],
            }
        )
        if b.kind == "paragraph":
            citations += paragraph_citations(sha, i, text)
    metadata = doc.get_metadata_dict()
    return PaperRecord(
        paper_sha=sha,
        title=_title(pages[0], [b for b in blocks if b.page == pages[0].page], metadata.get("Title", "")),
        doi=_doi(doc, metadata),
        n_pages=len(pages),
        n_bytes=len(data),
        n_columns=_n_columns(pages),
        paragraphs=paragraphs,
        citations=citations,
    )


def _image_boxes(page: pdfium.PdfPage, text: PageText) -> list[tuple[float, float, float, float]]:
    """Top-level raster images as (x0, top, x1, bottom); page-sized ones (scans) left out.

    Images nested in form XObjects are skipped: their bounds are in the form's space.
    """
    boxes = []
    page_area = text.width * text.height
    for obj in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=0):
        left, bottom, right, top = obj.get_bounds()
        box = (left, text.height - top, right, text.height - bottom)
        if (right - left) * (top - bottom) < _IMAGE_COVER_LIMIT * page_area:
            boxes.append(box)
    return boxes


def _inside(bbox: tuple[float, float, float, float], boxes: list[tuple[float, float, float, float]]) -> bool:
    """At least half of ``bbox`` lies inside one of ``boxes``."""
    area = max(box_area(bbox), 1e-6)
    return any((inter := box_intersection(bbox, b)) is not None and box_area(inter) >= 0.5 * area for b in boxes)


def _body_blocks(page: PageText, images: list[tuple[float, float, float, float]]) -> list[Block]:
    """Blocks worth keeping: no table captions (the schema has no label to tell them from
    figure captions), no text drawn on raster images, no word-less snippets (axis ticks,
    panel letters, superscript reference numbers)."""
    out = []
    for b in page.blocks:
        text = b.text
        if b.kind == "table_caption" or not text:
            continue
        if images and _inside(b.bbox, images):
            continue
        if len(text) <= 20 and not re.search(r"[^\W\d_]{2}", text):
            continue
        out.append(b)
    return out


_BAD_META_TITLE = re.compile(
    r"^(untitled|microsoft word|title|paper|document|slide)\b|\.(pdf|docx?|tex|dvi|indd)$|^\S+$", re.IGNORECASE
)


# Large text on page 1 that is a journal banner or article type, not the title.
_NOT_TITLE = re.compile(
    r"^(journal of|research article|original article|review article|article|letter|contents lists|"
    r"available online|open access|sciencedirect|elsevier|springer|www\.)",
    re.IGNORECASE,
)


def _title(first_page: PageText, body_blocks: list[Block], metadata_title: str) -> str | None:
    """The largest-font text near the top of page 1 (consecutive lines joined); the PDF's
    metadata title instead when it looks like a title and its words are on page 1. A paragraph
    is no title: an excerpt that starts mid-paper has none (None)."""
    candidates = [
        b
        for b in body_blocks
        if b.kind in ("heading", "paragraph")
        and b.bbox[1] < 0.6 * first_page.height
        and len(re.findall(r"[^\W\d_]{2,}", b.text)) >= 3
        and len(b.text.split()) <= 40
        and not _NOT_TITLE.match(b.text)
    ]
    title = None
    if candidates:
        best = max(candidates, key=lambda b: b.size)  # max keeps the first of equals
        i = body_blocks.index(best)
        parts = [best]
        for b in body_blocks[i + 1 :]:
            last = parts[-1]
            if abs(b.size - best.size) > 0.3 or b.column != best.column or b.bbox[1] - last.bbox[3] > 1.0 * best.size:
                break
            parts.append(b)
        title = " ".join(b.text for b in parts)
        if len(title.split()) > 40:
            title = None
    meta = re.sub(r"\s+", " ", metadata_title or "").strip()
    if meta and not _BAD_META_TITLE.search(meta) and len(meta.split()) >= 3:
        page_words = {w.lower() for b in first_page.blocks for w in re.findall(r"\w+", b.text)}
        meta_words = [w.lower() for w in re.findall(r"\w+", meta)]
        if title is None or sum(w in page_words for w in meta_words) >= 0.8 * len(meta_words):
            return meta
    return title


def _clean_doi(doi: str) -> str:
    doi = doi.rstrip(".,;:'")
    for open_, close in ("()", "[]", "{}"):
        while doi.endswith(close) and doi.count(close) > doi.count(open_):
            doi = doi[:-1].rstrip(".,;:")
    return doi


def _doi(doc: pdfium.PdfDocument, metadata: dict) -> str | None:
    """First DOI in the metadata, else on the first pages' raw text (headers included)."""
    texts = [metadata.get(k, "") for k in ("Subject", "Keywords", "Title")]
    for i in range(min(_FIRST_PAGES_FOR_DOI, len(doc))):
        tp = doc[i].get_textpage()
        texts.append(tp.get_text_range())
        tp.close()
    for text in texts:
        if m := DOI_RE.search(text or ""):
            return _clean_doi(m.group())
    return None


def _n_columns(pages: list[PageText]) -> int | None:
    text_pages = [pg for pg in pages if len(pg.lines) >= 10]
    if not text_pages:
        return None
    two = sum(pg.gutter is not None for pg in text_pages)
    return 2 if two > len(text_pages) / 2 else 1


# ---- the run ------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _cache_path(layout: DataLayout, sha: str) -> Path:
    return layout.ingest / "papers" / f"{sha}.{PARSER_VERSION}.json"


def _copy_once(src: Path, dest: Path) -> Path:
    """Copy ``src`` to ``dest`` atomically unless ``dest`` exists (content-addressed names)."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def plan_ingest(
    corpus: CorpusParams,
    params: IngestParams,
    layout: DataLayout,
    *,
    generated_dir: Path | None = None,
    progress: Progress | None = None,
    retry_failed_downloads: bool = False,
) -> IngestPlan:
    """Collect sources, download new URLs (and failed ones that are due again, or all failed ones with
    ``retry_failed_downloads``), hash every file and look each sha up in the cache."""
    sources = collect_sources(corpus, layout, generated_dir)
    fetched, failures, n_downloaded, n_failed = _fetch_urls(sources, params, layout, progress, retry_failed_downloads)
    local = [s for s in sources if s.kind != "url"] + fetched
    pdfs: list[PendingPDF] = []
    also_from: list[tuple[str, Source]] = []
    seen: set[str] = set()
    for src in local:
        assert src.path is not None
        sha = sha256_file(src.path)
        if sha in seen:
            also_from.append((sha, src))
            continue
        seen.add(sha)
        pdfs.append(PendingPDF(sha, src, src.path.stat().st_size, _cache_path(layout, sha).is_file()))
    return IngestPlan(pdfs, also_from, failures, n_downloaded, n_failed)


def new_papers(corpus: CorpusParams, params: IngestParams, layout: DataLayout, now: datetime | None = None) -> list[dict]:
    """What the ingest stage has not seen yet, found cheaply (hashing local files; no download, no parsing):
    files in the generated corpus or the inbox whose sha256 has no ingest record for this parser version, URLs
    never fetched, and URLs whose failed download is due again. One dict per input: source, kind, why."""
    index_path = layout.ingest / "downloads.json"
    index: dict[str, dict] = read_json(index_path) if index_path.is_file() else {}
    now = now or datetime.fromisoformat(_now())
    out: list[dict] = []
    seen: set[str] = set()
    for src in collect_sources(corpus, layout):
        if src.kind == "url":
            if why := _why_fetch(index.get(src.location), params, now):
                out.append({"source": src.location, "kind": "url", "why": why})
            continue
        assert src.path is not None
        sha = sha256_file(src.path)
        if sha not in seen and not _cache_path(layout, sha).is_file():
            out.append({"source": src.location, "kind": src.kind, "why": f"new file {sha[:12]}"})
        seen.add(sha)
    return out


def finish_ingest(plan: IngestPlan, results: dict[str, PaperRecord | Quarantined], layout: DataLayout) -> IngestReport:
    """Store the new results (bytes, per-paper caches) and rebuild the four tables.

    ``results`` maps the sha of each pending PDF to what ``ingest_pdf`` returned for it.
    """
    previous = _previous_first_seen(layout)
    earlier_quarantine = _previous_quarantine(layout)
    for folder in (layout.raw_pdfs, layout.quarantine, layout.ingest):  # DVC expects every output
        folder.mkdir(parents=True, exist_ok=True)
    report = IngestReport(parsed=len(results), downloaded=plan.downloaded)
    cached: dict[str, dict] = {}
    for pdf in plan.pdfs:
        path = _cache_path(layout, pdf.paper_sha)
        if pdf.cached:
            entry = read_json(path)
            report.known += "paper" in entry
        else:
            entry = _store(pdf, results[pdf.paper_sha], layout, previous)
            atomic_write_json(path, entry)
            report.new += "paper" in entry
            report.newly_quarantined += "quarantine" in entry
        if "paper" in entry:  # the raw copy may have been removed by hand: restore it
            _copy_once(pdf.source.path, Path(entry["paper"]["pdf_path"]))
        cached[pdf.paper_sha] = entry
    report.duplicates = len(plan.also_from)
    report.newly_quarantined += plan.new_download_failures

    papers, paragraphs, citations, quarantine = [], [], [], list(plan.download_failures)
    for pdf in plan.pdfs:
        entry = cached[pdf.paper_sha]
        if "paper" in entry:
            papers.append({**entry["paper"], "first_seen": datetime.fromisoformat(entry["paper"]["first_seen"])})
            paragraphs += entry["paragraphs"]
            citations += entry["citations"]
        else:
            quarantine.append(_quarantine_row(pdf.paper_sha, pdf.source, entry["quarantine"]))
    for sha, src in plan.also_from:  # every bad file gets its row, even a copy of another bad file
        if "quarantine" in cached[sha]:
            quarantine.append(_quarantine_row(sha, src, cached[sha]["quarantine"]))
    for row in quarantine:
        row["present"] = True
    report.quarantined = len(quarantine)
    current = {(r["source_sha"], r["source"]) for r in quarantine}
    quarantine += [{**r, "present": False} for r in earlier_quarantine if (r["source_sha"], r["source"]) not in current]
    out = layout.ingest
    report.tables = {
        "papers": write_table(table_from_rows(papers, PAPERS_SCHEMA, "papers"), out / "papers.parquet", PAPERS_SCHEMA),
        "paragraphs": write_table(
            table_from_rows(paragraphs, PARAGRAPHS_SCHEMA, "paragraphs"), out / "paragraphs.parquet", PARAGRAPHS_SCHEMA
        ),
        "citations": write_table(
            table_from_rows(citations, CITATIONS_SCHEMA, "citations"), out / "citations.parquet", CITATIONS_SCHEMA
        ),
        "quarantine": write_table(
            table_from_rows(quarantine, QUARANTINE_SCHEMA, "quarantine"), out / "quarantine.parquet", QUARANTINE_SCHEMA
        ),
    }
    return report


def _store(
    pdf: PendingPDF, result: PaperRecord | Quarantined, layout: DataLayout, previous: dict[str, datetime]
) -> dict:
    """Keep the bytes (raw copy or quarantine copy) and return the per-paper cache entry."""
    src = pdf.source
    assert src.path is not None
    now = _now()
    if isinstance(result, Quarantined):
        suffix = src.path.suffix.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", src.path.suffix) else ".bin"
        kept = _copy_once(src.path, layout.quarantine / f"{pdf.paper_sha}{suffix}")
        log.warning("quarantined %s: %s (%s); kept at %s", src.location, result.reason, result.detail, kept)
        return {"quarantine": {"reason": result.reason, "detail": result.detail, "kept_at": str(kept), "seen_at": now}}
    raw = _copy_once(src.path, layout.raw_pdfs / f"{pdf.paper_sha}.pdf")
    first_seen = previous.get(pdf.paper_sha)
    paper = {
        "paper_sha": pdf.paper_sha,
        "pdf_path": str(raw),
        "source": src.location,
        "source_kind": src.kind,
        "title": result.title,
        "doi": result.doi,
        "n_pages": result.n_pages,
        "n_bytes": result.n_bytes,
        "n_columns": result.n_columns,
        "first_seen": first_seen.isoformat() if first_seen else now,
        "parser_version": PARSER_VERSION,
    }
    return {"paper": paper, "paragraphs": result.paragraphs, "citations": result.citations}


def _quarantine_row(sha: str, src: Source, decision: dict) -> dict:
    return {
        "source_sha": sha,
        "source": src.location,
        "source_kind": src.kind,
        "reason": decision["reason"],
        "detail": decision["detail"],
        "kept_at": decision["kept_at"],
        "seen_at": datetime.fromisoformat(decision["seen_at"]),
    }


def _previous_quarantine(layout: DataLayout) -> list[dict]:
    """The rows of the last quarantine table (an older table without ``present`` reads as all present)."""
    path = layout.ingest / "quarantine.parquet"
    if not path.is_file():
        return []
    try:
        table = pq.read_table(path)
        if "present" not in table.column_names:
            table = table.append_column("present", pa.array([True] * len(table), pa.bool_()))
        return conform(table, QUARANTINE_SCHEMA, str(path)).to_pylist()
    except (OSError, ValueError) as e:  # a broken table only costs the history
        log.warning("cannot read earlier quarantine records from %s: %s", path, e)
        return []


def _previous_first_seen(layout: DataLayout) -> dict[str, datetime]:
    """first_seen of every paper in the last papers table (kept across parser versions)."""
    path = layout.ingest / "papers.parquet"
    if not path.is_file():
        return {}
    try:
        table = read_table(path, PAPERS_SCHEMA)
    except (OSError, ValueError) as e:  # an old or broken table only costs the dates
        log.warning("cannot read first_seen from %s: %s", path, e)
        return {}
    return dict(zip(table.column("paper_sha").to_pylist(), table.column("first_seen").to_pylist()))


def run_ingest(
    corpus: CorpusParams,
    params: IngestParams,
    layout: DataLayout,
    *,
    progress: Progress | None = None,
    generated_dir: Path | None = None,
    retry_failed_downloads: bool = False,
) -> IngestReport:
    """Ingest every source: parse only PDFs not cached for this ``PARSER_VERSION``, rebuild the tables.

    Args:
        corpus: which sources to read and where they are.
        params: size/page limits, text threshold, download settings.
        layout: where raw PDFs, quarantine and ingest tables live.
        progress: called as ``progress(description, done, total)`` per downloaded and parsed paper.
        generated_dir: folder of the generated corpus PDFs (default ``layout.corpus / "pdfs"``).
        retry_failed_downloads: try every failed URL now, not only those due again (``download_retry_hours``).

    Returns:
        An ``IngestReport`` with paper counts and the paths of the four tables.
    """
    plan = plan_ingest(corpus, params, layout, generated_dir=generated_dir, progress=progress, retry_failed_downloads=retry_failed_downloads)
    pending = plan.pending
    results: dict[str, PaperRecord | Quarantined] = {}
    for i, pdf in enumerate(pending, 1):
        assert pdf.source.path is not None
        results[pdf.paper_sha] = ingest_pdf(pdf.source.path, params, paper_sha=pdf.paper_sha)
        if progress:
            progress("ingest: parsing", i, len(pending))
    report = finish_ingest(plan, results, layout)
    log.info(
        "ingest: %d new, %d known, %d duplicates, %d quarantined (%d parsed, %d downloaded)",
        report.new,
        report.known,
        report.duplicates,
        report.quarantined,
        report.parsed,
        report.downloaded,
    )
    return report
