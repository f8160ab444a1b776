"""Tiny reportlab PDFs for tests: one or two columns, headings, captions, figures, bad files.

A paper is a list of blocks flowed top to bottom through one or two columns (left column
filled first, then right, then a new page), so a block at the top of the right column sits
on the same rows as text in the left column: the case a naive text extractor merges.

    >>> data = make_paper([Heading("1. Intro"), Paragraph("See Fig. 1."), Figure(), Caption("Fig. 1. SEM.")])

Every builder returns the PDF bytes and, given ``path``, also writes them there.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from reportlab.lib.pagesizes import letter
from reportlab.lib.pdfencrypt import StandardEncryption
from reportlab.lib.utils import ImageReader, simpleSplit
from reportlab.pdfgen import canvas

MARGIN = 54.0
GUTTER = 24.0
BODY_FONT, BODY_SIZE, LEADING = "Times-Roman", 10.0, 12.0

LOREM = (
    "The glass samples were melted at high temperature, quenched on a steel plate and annealed "
    "below the transition temperature before polishing. Fracture surfaces were coated with a thin "
    "carbon layer to avoid charging during imaging, and every micrograph was recorded at the same "
    "accelerating voltage and working distance so that the contrast can be compared between samples."
)


@dataclass
class Heading:
    text: str
    size: float = 11.0
    font: str = "Times-Bold"


@dataclass
class Paragraph:
    text: str


@dataclass
class Caption:
    text: str  # starts with its label: "Fig. 2. SEM image of ..."


@dataclass
class Figure:
    """A figure region: a raster image (``raster=True``) or vector boxes, with text drawn on it."""

    height: float = 120.0
    raster: bool = True
    labels: tuple[str, ...] = ("a", "b")  # panel letters drawn inside the figure
    ticks: bool = True  # small number-only labels below the figure (axis ticks)
    inside_text: str | None = "5 um scale bar"  # a word label drawn over the image


@dataclass
class PageBreak:
    pass


@dataclass
class ColumnBreak:
    """Continue in the next column (its top is level with the text of the previous one)."""


@dataclass
class _Flow:
    c: canvas.Canvas
    columns: int
    width: float
    height: float
    column: int = 0
    y: float = 0.0
    top: float = 0.0
    page_number: int = 1
    footer: bool = True
    x_ranges: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        usable = self.width - 2 * MARGIN
        if self.columns == 1:
            self.x_ranges = [(MARGIN, self.width - MARGIN)]
        else:
            col = (usable - GUTTER) / 2
            self.x_ranges = [(MARGIN, MARGIN + col), (MARGIN + col + GUTTER, self.width - MARGIN)]
        self.top = self.y = self.height - MARGIN

    @property
    def x0(self) -> float:
        return self.x_ranges[self.column][0]

    @property
    def col_width(self) -> float:
        return self.x_ranges[self.column][1] - self.x_ranges[self.column][0]

    def need(self, h: float) -> None:
        if self.y - h >= MARGIN:
            return
        if self.column + 1 < self.columns:
            self.column += 1
            self.y = self.top
        else:
            self.new_page()

    def new_page(self) -> None:
        if self.footer:
            self.c.setFont(BODY_FONT, 8)
            self.c.drawCentredString(self.width / 2, 30, str(self.page_number))
        self.c.showPage()
        self.page_number += 1
        self.column = 0
        self.top = self.y = self.height - MARGIN


def _noise_image(w: int, h: int, seed: int = 0) -> ImageReader:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((h, w)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    buf.seek(0)
    return ImageReader(buf)


def _text_lines(flow: _Flow, text: str, font: str, size: float, leading: float, indent: float = 0.0) -> None:
    lines = simpleSplit(text, font, size, flow.col_width - indent)
    for i, line in enumerate(lines):
        flow.need(leading)
        flow.y -= leading
        flow.c.setFont(font, size)
        flow.c.drawString(flow.x0 + (indent if i == 0 else 0.0), flow.y + 0.25 * leading, line)


def _draw_figure(flow: _Flow, fig: Figure, seed: int) -> None:
    flow.need(fig.height + 16)
    x, w = flow.x0, flow.col_width
    y0 = flow.y - fig.height
    c = flow.c
    if fig.raster:
        c.drawImage(_noise_image(64, 48, seed), x, y0, width=w, height=fig.height)
    else:
        c.setLineWidth(1)
        c.rect(x, y0, w, fig.height)
        c.line(x, y0 + fig.height / 2, x + w, y0 + fig.height * 0.8)
    c.setFont("Helvetica-Bold", 9)
    n = max(len(fig.labels), 1)
    for i, lab in enumerate(fig.labels):
        c.drawString(x + 4 + i * w / n, y0 + fig.height - 12, lab)
    if fig.inside_text:
        c.setFont("Helvetica", 8)
        c.drawString(x + w / 2, y0 + 8, fig.inside_text)
    flow.y = y0
    if fig.ticks:
        c.setFont("Helvetica", 7)
        for i, tick in enumerate(("0", "10", "20", "30")):
            c.drawString(x + i * (w - 10) / 3, y0 - 9, tick)
        flow.y -= 12
    flow.y -= 8


def make_paper(
    blocks: list,
    path: str | Path | None = None,
    *,
    title: str | None = "Crack growth in soda-lime glass under humid air",
    doi: str | None = None,
    columns: int = 2,
    metadata_title: str | None = None,
    metadata_subject: str | None = None,
    encrypt: StandardEncryption | None = None,
    pagesize: tuple[float, float] = letter,
    footer: bool = True,
) -> bytes:
    """A paper: full-width title (and DOI line), then ``blocks`` flowed through ``columns``."""
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=pagesize, encrypt=encrypt, invariant=1)
    if metadata_title is not None:
        c.setTitle(metadata_title)
    if metadata_subject is not None:
        c.setSubject(metadata_subject)
    width, height = pagesize
    flow = _Flow(c, columns, width, height, footer=footer)
    y = height - MARGIN
    if title:
        c.setFont("Helvetica-Bold", 16)
        for line in simpleSplit(title, "Helvetica-Bold", 16, width - 2 * MARGIN):
            y -= 20
            c.drawString(MARGIN, y, line)
    if doi:
        y -= 14
        c.setFont(BODY_FONT, 9)
        c.drawString(MARGIN, y, f"https://doi.org/{doi}")
    flow.top = flow.y = y - 16
    for i, block in enumerate(blocks):
        if isinstance(block, Heading):
            flow.need(3 * LEADING)
            flow.y -= 6
            _text_lines(flow, block.text, block.font, block.size, block.size + 3)
            flow.y -= 3
        elif isinstance(block, Paragraph):
            _text_lines(flow, block.text, BODY_FONT, BODY_SIZE, LEADING, indent=12.0)
            flow.y -= 12
        elif isinstance(block, Caption):
            _text_lines(flow, block.text, BODY_FONT, 9.0, 11.0)
            flow.y -= 10
        elif isinstance(block, Figure):
            _draw_figure(flow, block, seed=i)
        elif isinstance(block, PageBreak):
            flow.new_page()
        elif isinstance(block, ColumnBreak):
            flow.need(flow.height)
        else:
            raise TypeError(f"unknown block {block!r}")
    if footer:
        c.setFont(BODY_FONT, 8)
        c.drawCentredString(width / 2, 30, str(flow.page_number))
    c.showPage()
    c.save()
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def sample_blocks(n_sections: int = 2, paragraphs_per_section: int = 2, figure: int = 1) -> list:
    """Headings, body paragraphs citing a figure, the figure and its caption."""
    blocks: list = []
    for s in range(1, n_sections + 1):
        blocks.append(Heading(f"{s}. Section {s}"))
        for p in range(paragraphs_per_section):
            blocks.append(Paragraph(f"Paragraph {s}.{p}: as shown in Fig. {figure}b and c, {LOREM}"))
    blocks += [Figure(), Caption(f"Fig. {figure}. SEM image of the fracture surface after 24 h in humid air.")]
    return blocks


def encrypted_paper(path: str | Path | None = None, user_password: str = "userpw") -> bytes:
    """A paper that needs a password to open."""
    enc = StandardEncryption(user_password, ownerPassword="o")
    return make_paper(sample_blocks(1, 1), path, encrypt=enc)


def image_only_pdf(path: str | Path | None = None, pages: int = 2) -> bytes:
    """Pages holding only a drawn raster image (a scan without a text layer)."""
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter, invariant=1)
    for i in range(pages):
        c.drawImage(_noise_image(80, 100, seed=i), 72, 72, width=468, height=648)
        c.showPage()
    c.save()
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def truncated(data: bytes, fraction: float = 0.5) -> bytes:
    """The first ``fraction`` of a PDF's bytes (an interrupted download)."""
    return data[: int(len(data) * fraction)]
