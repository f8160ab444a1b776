"""Caption detection and column-aware lines."""

from __future__ import annotations

import pytest
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from glassllava.pdfdoc import open_pdf
from glassllava.pdflines import (
    _document_gutter,
    _rows,
    caption_label,
    clean_text,
    extract_pages,
)


@pytest.mark.parametrize(
    "text, label",
    [
        ("Fig. 1. SEM image of the glass.", "1"),
        ("FIG. 1. SEM image.", "1"),
        ("Figure. 1: Phase separation.", "1"),
        ("Fig. 1 Urinary crystals in a glass", "1"),
        ("Fig.1. Cracks.", "1"),
        ("Figure 12: XRD.", "12"),
        ("Figure 7-26. Self-locking nuts.", "7-26"),
        ("Fig. S2. Supplementary image.", "S2"),
        ("Fig. 3", "3"),
        ("Fig. 1 (a) DSC curves; (b) XRD patterns.", "1"),
        ("Fig. 3 shows the crack network", None),
        ("Fig. 1 (a) shows the crack network", None),
        ("Fig. 13(a) shows bubbles", None),
        ("Figures 11-13. The peak", None),
        ("Figure 3-5 shows the difference", None),
        ("Table 2. Compositions", None),
        ("Configuration of the furnace", None),
    ],
)
def test_caption_label(text, label):
    assert caption_label(text) == label


def test_clean_text_drops_cid_glyphs_and_hyphenation():
    assert clean_text("(cid:2)Color online(cid:3) crys-\ntals") == "Color online crystals"


def _two_column_pdf(path):
    W, H = A4
    c = canvas.Canvas(str(path), pagesize=A4, invariant=1)
    c.setFont("Times-Bold", 16)
    c.drawString(60, H - 60, "Crystallisation of lithium disilicate glass")
    c.setFont("Times-Roman", 10)
    left = ["Left column line %d of the glass melting description." % i for i in range(30)]
    right = ["Right column line %d about the annealing schedule." % i for i in range(30)]
    for i in range(30):
        y = H - 120 - 12 * i
        c.drawString(60, y, left[i])
        if i == 10:
            c.drawString(310, y, "Fig. 2. SEM image of dendrites grown at 650 C.")
        elif i == 11:
            c.drawString(310, y, "")
        else:
            c.drawString(310, y, right[i])
    c.showPage()
    c.save()


def test_two_columns_are_split_and_read_left_then_right(tmp_path):
    path = tmp_path / "two.pdf"
    _two_column_pdf(path)
    with open_pdf(path) as pdf:
        page = extract_pages(pdf)[0]
    assert page.gutter is not None and 255 < page.gutter[0] < page.gutter[1] <= 311
    texts = [ln.text for ln in page.lines]
    assert "Fig. 2. SEM image of dendrites grown at 650 C." in texts  # starts mid-row, not merged
    captions = [b for b in page.blocks if b.kind == "caption"]
    assert [b.label for b in captions] == ["2"]
    order = [b.text for b in page.blocks]
    first_right = next(i for i, t in enumerate(order) if t.startswith("Right column line 0"))
    last_left = max(i for i, t in enumerate(order) if "Left column line 29" in t)
    assert last_left < first_right
    assert page.blocks[0].kind == "heading"


def _word(text, x0, top, bottom, size):
    return {"text": text, "x0": x0, "x1": x0 + 5.0 * len(text), "top": top, "bottom": bottom, "size": size, "upright": True}


def test_two_caption_lines_beside_one_taller_body_line_stay_two_rows():
    """A two-line caption in 8.5 pt type beside a 10 pt body line of the other column: both
    caption lines overlap the body line by half their height (synth_0_0002 Fig. 5, whose words
    came out interleaved: "Fig. water 5 at SEM 40 ...")."""
    body = [_word(w, 47 + 40 * i, 519.3, 529.5, 10.0) for i, w in enumerate(["essential", "to", "obtain", "glasses"])]
    first = [_word(w, 305 + 40 * i, 515.0, 524.1, 8.5) for i, w in enumerate(["Fig.", "5", "SEM", "micrograph"])]
    second = [_word(w, 305 + 40 * i, 524.6, 533.6, 8.5) for i, w in enumerate(["water", "at", "40", "days"])]
    rows = _rows(body + first + second)
    texts = [[w["text"] for w in r] for r in rows]
    row_of = {w: k for k, r in enumerate(texts) for w in r}
    assert row_of["Fig."] == row_of["micrograph"] != row_of["water"] == row_of["days"]
    # a sub- or superscript still joins its line
    sup = _rows([_word("10", 222, 699.6, 708.9, 9.3), _word("-26", 235, 698.1, 704.8, 7.0), _word("With", 281, 700.5, 708.5, 9.0)])
    assert len(sup) == 1


def test_document_gutter_is_the_band_the_pages_share():
    assert _document_gutter([(299.0, 313.0), (249.0, 313.0), None]) == (299.0, 313.0)
    assert _document_gutter([None, None, (300.0, 310.0)]) is None  # one page is no consensus
    assert _document_gutter([(280.0, 300.0), (350.0, 370.0), (282.0, 301.0)]) is None  # no agreement


def test_full_width_caption_keeps_its_short_last_line_and_a_column_caption_ends_before_its_gutter(tmp_path):
    """A full-width caption whose last line fits in the left column, on a two-column page;
    a page of two-column text elsewhere fixes the paper's gutter."""
    path = tmp_path / "cap.pdf"
    H = A4[1]
    c = canvas.Canvas(str(path), pagesize=A4, invariant=1)
    c.setFont("Times-Roman", 10)
    for i in range(40):
        c.drawString(60, H - 80 - 12 * i, f"Left column line {i} of the melting description.")
        c.drawString(310, H - 80 - 12 * i, f"Right column line {i} about annealing.")
    c.showPage()
    c.setFont("Times-Roman", 9)
    c.drawString(60, H - 270, "Fig. 1. SEM micrographs of the samples: (a) the soda-lime glass melted at 1380 C for 0.5 h showing")
    c.drawString(60, H - 280.8, "unmolten quartz grains; (b) the soda-lime glass melted at 1560 C for 1 h, showing large gas bubbles")
    c.drawString(60, H - 291.6, "(seeds); (c) a homogeneous glass.")
    c.setFont("Times-Roman", 10)
    for i in range(25):
        c.drawString(60, H - 320 - 12 * i, f"Left column line {i} of the melting description.")
        c.drawString(310, H - 320 - 12 * i, f"Right column line {i} about annealing.")
    c.showPage()
    c.save()
    with open_pdf(path) as pdf:
        page = extract_pages(pdf)[1]
    caps = [b for b in page.blocks if b.kind == "caption"]
    assert len(caps) == 1 and caps[0].text.endswith("(seeds); (c) a homogeneous glass.")
