"""Caption detection and column-aware lines."""

from __future__ import annotations

import pypdfium2 as pdfium
import pytest
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from glassllava.pdflines import caption_label, clean_text, extract_pages


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
        ("Fig. 3 shows the crack network", None),
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
    page = extract_pages(pdfium.PdfDocument(str(path)))[0]
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
