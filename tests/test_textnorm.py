"""Text normalisation: pdfium's line-break hyphen marker, unmapped glyphs, control characters."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from glassllava.pdflines import clean_text
from glassllava.textnorm import (
    CONTROL_RE,
    delimiter_from_outline,
    glyph_name_text,
    join_hyphenated,
    normalize_text,
    strip_table_controls,
    word_counts,
)


@pytest.mark.parametrize(
    "raw, want",
    [
        ("con\x02 sistent", "consistent"),  # pdfium's marker for a hyphen at a line end
        ("Fig\x02 ure", "Figure"),
        ("con\x02\nsistent", "consistent"),
        ("defect-\nfree", "defect-free"),  # a compound's hyphen at a line break stays
        ("crys-\ntals", "crystals"),
        ("TiO2-\nbased", "TiO2-based"),
        ("X-\nray", "X-ray"),
        ("Al-\nCu alloy", "Al-Cu alloy"),
        ("cross-sec-\ntion", "cross-section"),
        ("juxta\xadposed", "juxtaposed"),  # soft hyphen
        ("(cid:2)Color online(cid:3)", "Color online"),
        ("a\x03b\x1fc\x7fd\x85e", "abcde"),  # stray control characters are dropped
        ("keeps\ttab\nand newline", "keeps\ttab\nand newline"),
        ("line\r\nend", "line\nend"),
    ],
)
def test_normalize_text(raw, want):
    assert normalize_text(raw) == want
    assert not CONTROL_RE.search(normalize_text(raw))


def test_clean_text_collapses_whitespace_after_normalising():
    assert clean_text("Fig\x02 ure 1. con\x02 sistent\nresults") == "Figure 1. consistent results"


def test_paper_vocabulary_decides_a_hyphen_at_a_line_break():
    vocab = word_counts(["the well-known glass", "a well-known result", "a nanocrystal"])
    assert join_hyphenated("well", "known", vocab) == "well-known"
    assert join_hyphenated("nano", "crystal", vocab) == "nanocrystal"
    assert join_hyphenated("nano", "crystal", Counter({"nano-crystal": 3})) == "nano-crystal"


def test_glyph_names_and_delimiter_outlines():
    assert glyph_name_text("parenleftbig") == "("
    assert glyph_name_text("delta") == "\u03b4"
    assert glyph_name_text("H20850") is None  # a private name tells nothing
    # "(": one contour of curves, its middle left of its ends; below the baseline
    paren = [
        ("moveTo", ((300, 750),)),
        ("curveTo", ((150, 600), (100, 400), (100, 250))),
        ("curveTo", ((100, 100), (150, -100), (300, -250))),
        ("lineTo", ((320, -230),)),
        ("curveTo", ((200, -100), (160, 100), (160, 250))),
        ("curveTo", ((160, 400), (200, 600), (320, 730))),
        ("closePath", ()),
    ]
    assert delimiter_from_outline(paren) == "("
    mirrored = [(op, tuple((400 - x, y) for x, y in pts)) for op, pts in paren]
    assert delimiter_from_outline(mirrored) == ")"
    bracket = [
        ("moveTo", ((100, -250),)),
        ("lineTo", ((300, -250),)),
        ("lineTo", ((300, -220),)),
        ("lineTo", ((140, -220),)),
        ("lineTo", ((140, 720),)),
        ("lineTo", ((300, 720),)),
        ("lineTo", ((300, 750),)),
        ("lineTo", ((100, 750),)),
        ("closePath", ()),
    ]
    assert delimiter_from_outline(bracket) == "["
    integral = [
        ("moveTo", ((380, 750),)),
        ("curveTo", ((250, 700), (200, 500), (200, 250))),
        ("curveTo", ((200, 0), (150, -200), (20, -250))),
        ("lineTo", ((30, -230),)),
        ("curveTo", ((160, -180), (230, 0), (230, 250))),
        ("curveTo", ((230, 500), (280, 680), (390, 730))),
        ("closePath", ()),
    ]
    assert delimiter_from_outline(integral) is None
    letter_o = [("moveTo", ((0, 0),)), ("curveTo", ((0, 500), (500, 500), (500, 0))), ("closePath", ())]
    assert delimiter_from_outline(letter_o) is None


def test_write_table_guard_strips_controls_in_nested_strings(tmp_path: Path):
    from glassllava.schemas import write_table

    schema = pa.schema(
        [
            pa.field("text", pa.string()),
            pa.field("context", pa.list_(pa.string())),
            pa.field("evidence", pa.list_(pa.struct([pa.field("text", pa.string()), pa.field("n", pa.int32())]))),
        ]
    )
    table = pa.Table.from_pylist(
        [
            {"text": "a\x02b\r\nc", "context": ["x\x03y", None], "evidence": [{"text": "e\x04f", "n": 1}]},
            {"text": None, "context": None, "evidence": []},
        ],
        schema=schema,
    )
    back = pq.read_table(write_table(table, tmp_path / "t.parquet", schema)).to_pylist()
    assert back[0] == {"text": "ab\nc", "context": ["xy", None], "evidence": [{"text": "ef", "n": 1}]}
    assert back[1] == {"text": None, "context": None, "evidence": []}
    assert strip_table_controls(pa.table({"n": [1]})).to_pylist() == [{"n": 1}]


# ---- the real PDFs -------------------------------------------------------------------------


def _bench_pdfs(root: Path) -> list[Path]:
    pdfs = sorted((root / "bench" / "figures" / "pdfs").glob("*.pdf")) + sorted((root / "data" / "papers").glob("*.pdf"))
    if not pdfs:
        pytest.skip(f"no PDFs under {root}/bench/figures/pdfs or {root}/data/papers")
    return pdfs


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def test_no_control_characters_in_text_extracted_from_shared_pdfs(shared_dir: Path):
    """Every block, line, paragraph and citation row of every shared PDF is free of control characters."""
    from glassllava.ingest import PaperRecord, ingest_pdf
    from glassllava.params import IngestParams
    from glassllava.pdfdoc import open_pdf
    from glassllava.pdflines import extract_pages

    bad: list[str] = []
    for path in _bench_pdfs(shared_dir):
        with open_pdf(path) as pdf:
            pages = extract_pages(pdf)
        texts = [b.text for p in pages for b in p.blocks] + [ln.text for p in pages for ln in p.lines + p.rotated]
        rec = ingest_pdf(path, IngestParams())
        if isinstance(rec, PaperRecord):
            texts += list(_strings(rec.paragraphs)) + list(_strings(rec.citations)) + [rec.title or ""]
        bad += [f"{path.name}: {t[:80]!r}" for t in texts if CONTROL_RE.search(t)]
    assert not bad, "\n".join(bad[:20])


@pytest.mark.parametrize(
    "name, expected",
    [
        # APL: the MathematicalPi font draws the parentheses as codes 2 and 3 without ToUnicode
        ("grobid_ApplPhysLett_98_082505.pdf", ["FIG. 1. (Color online) (a) TEM image"]),
        # pdfium's line-break hyphen marker inside the J. Haz. Mater. text
        ("doclingeval_case01_32a7d8aa.pdf", ["bamboo-derived"]),
    ],
)
def test_shared_pdf_captions_read_right(shared_dir: Path, tmp_path: Path, name: str, expected: list[str]):
    from glassllava.figures import extract_paper_figures

    path = shared_dir / "bench" / "figures" / "pdfs" / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    result = extract_paper_figures(path, tmp_path, dpi=36)
    captions = [f.caption for f in result.figures]
    assert captions and not any(CONTROL_RE.search(c) for c in captions)
    from glassllava.pdfdoc import open_pdf
    from glassllava.pdflines import extract_pages

    with open_pdf(path) as pdf:
        text = " ".join(b.text for p in extract_pages(pdf) for b in p.blocks)
    for e in expected:
        assert e in text
    assert "\x02" not in text and " ure" not in text
