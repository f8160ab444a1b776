"""Typesetting of a synthetic paper on a reportlab canvas, with the exact box of everything drawn.

Consumes a ``Paper`` (title block, headings, paragraphs, floats) and a ``PaperStyle``; produces
PDF bytes and, for every float, its page, figure box, caption box and panel boxes in PDF points
with a top-left origin (pdfplumber's ``[x0, top, x1, bottom]``).

Text flows line by line into one or two columns. Floats are queued when first cited and placed,
in citation order, at the bottom of the current column if they fit, otherwise at the top of the
next column (column floats) or page (floats spanning both columns). Lines break only at spaces.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image, ImageDraw
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase.pdfmetrics import getDescent, stringWidth
from reportlab.pdfgen.canvas import Canvas

from glassllava.synth import plots
from glassllava.synth.text import NBSP

GAP = 10.0  # points between a float and text
PANEL_GAP = 4.0


@dataclass(frozen=True)
class PaperStyle:
    pagesize: tuple[float, float]
    page_name: str
    columns: int
    margin_x: float
    margin_top: float
    margin_bottom: float
    gutter: float
    body_font: str
    bold_font: str
    italic_font: str
    size: float
    leading: float
    caption_size: float
    caption_format: str  # e.g. "Fig. {n}." with the label substituted
    table_format: str
    caption_bold_label: bool
    cite_word: str  # "Fig." or "Figure"
    cite_plural: str  # "Figs." or "Figures"
    image_format: str  # "jpeg" or "png"
    journal: str


@dataclass
class Panel:
    label: str | None
    image: Image.Image | None = None  # micrograph
    truth: dict | None = None
    history: dict | None = None
    plot: dict | None = None  # plot data (vector)
    aspect: float = 440 / 512  # height / width


@dataclass
class Float:
    key: str  # "fig:3" or "tab:1"
    kind: str  # "figure" | "table"
    label: str
    caption: str  # as drawn, including its "Fig. 3." prefix; NBSP allowed
    prefix: str  # the "Fig. 3." part drawn in bold when the style asks
    panels: list[Panel] = field(default_factory=list)
    grid: tuple[int, int] = (1, 1)
    width_mode: str = "column"  # "column" | "wide" | "side"
    width_frac: float = 1.0
    caption_position: str = "below"  # "below" | "above" | "side"
    single_image: bool = False
    table: tuple[list[str], list[list[str]]] | None = None
    is_sem: bool = False
    placed: dict | None = None  # filled by the typesetter


@dataclass
class Paper:
    title: str
    authors: list[str]
    affiliation: str
    abstract: str
    keywords: str
    blocks: list[
        tuple
    ]  # ("heading", text, level) | ("para", text, [float keys first cited here]) | ("refs", [lines])
    floats: dict[str, Float]


def _wrap(
    tokens: list[tuple[str, str]], size: float, width: float, first_indent: float = 0.0
) -> list[list[tuple[str, str]]]:
    """Greedy line breaking of (word, font) tokens at spaces; a token wider than the line gets its own line."""
    lines: list[list[tuple[str, str]]] = []
    line: list[tuple[str, str]] = []
    used = 0.0
    avail = width - first_indent
    for word, font in tokens:
        w = stringWidth(word.replace(NBSP, " "), font, size)
        space = stringWidth(" ", font, size) if line else 0.0
        if line and used + space + w > avail:
            lines.append(line)
            line, used, avail = [], 0.0, width
            space = 0.0
        line.append((word, font))
        used += space + w
    if line:
        lines.append(line)
    return lines


def _line_width(line, size) -> float:
    return sum(stringWidth(w.replace(NBSP, " "), f, size) for w, f in line) + sum(
        stringWidth(" ", f, size) for _, f in line[:-1]
    )


def _tokens(text: str, font: str) -> list[tuple[str, str]]:
    return [(w, font) for w in text.split(" ") if w]


class Typesetter:
    """Lays a ``Paper`` out page by page; ``run()`` returns the PDF bytes and the page count."""

    def __init__(self, paper: Paper, style: PaperStyle, paper_id: str) -> None:
        self.paper, self.s, self.paper_id = paper, style, paper_id
        self.W, self.H = style.pagesize
        self.buf = io.BytesIO()
        self.c = Canvas(
            self.buf, pagesize=style.pagesize, invariant=1, pageCompression=1
        )
        self.c.setTitle(paper.title)
        self.c.setAuthor(", ".join(paper.authors))
        self.c.setCreator("glassllava.synth")
        tw = self.W - 2 * style.margin_x
        if style.columns == 1:
            self.cols = [(style.margin_x, self.W - style.margin_x)]
        else:
            cw = (tw - style.gutter) / 2
            self.cols = [
                (style.margin_x, style.margin_x + cw),
                (self.W - style.margin_x - cw, self.W - style.margin_x),
            ]
        self.text_top, self.text_bottom = style.margin_top, self.H - style.margin_bottom
        self.page = 0
        self.col = 0
        self.cursor: list[float] = []
        self.bottom: list[float] = []
        self.queue: list[Float] = []
        self.image_count = 0

    # ------------------------------------------------------------------ pages and columns
    def _new_page(self) -> None:
        if self.page:
            self.c.showPage()
        self.page += 1
        s = self.s
        self.c.setFont(s.italic_font, 7.5)
        self.c.drawString(s.margin_x, self.H - (s.margin_top - 18), s.journal)
        self.c.drawRightString(
            self.W - s.margin_x, self.H - (s.margin_top - 18), self.paper_id
        )
        self.c.setFont(s.body_font, 8)
        self.c.drawCentredString(self.W / 2, s.margin_bottom - 24, str(self.page))
        self.col = 0
        self.cursor = [self.text_top] * len(self.cols)
        self.bottom = [self.text_bottom] * len(self.cols)
        self.bottom_used = [False] * len(
            self.cols
        )  # one bottom float per column keeps floats in order

    def _start_page_floats(self) -> None:
        while (
            self.queue
            and (self._spans(self.queue[0]))
            and self._fits_top_span(self.queue[0])
        ):
            self._place(self.queue.pop(0), top=max(self.cursor), span=True)

    def _start_column_floats(self) -> None:
        while self.queue and not self._spans(self.queue[0]):
            f = self.queue[0]
            h = self._float_height(f, span=False)
            if (
                self.cursor[self.col] + h > self.bottom[self.col]
                and self.cursor[self.col] > self.text_top + 1
            ):
                break
            self._place(self.queue.pop(0), top=self.cursor[self.col], span=False)

    def _next_column(self) -> None:
        self.col += 1
        if self.col >= len(self.cols):
            self._new_page()
            self._start_page_floats()
        self._start_column_floats()

    def _slot(self, h: float) -> float:
        """Top of the next line of height ``h`` (moving to a new column when needed)."""
        for _ in range(50):
            if self.cursor[self.col] + h <= self.bottom[self.col] + 0.01:
                top = self.cursor[self.col]
                self.cursor[self.col] += h
                return top
            self._next_column()
        raise RuntimeError(
            f"{self.paper_id}: a line of {h:.1f} pt does not fit an empty column"
        )

    # ------------------------------------------------------------------ floats
    def _spans(self, f: Float) -> bool:
        return len(self.cols) > 1 and f.width_mode == "wide"

    def _fits_top_span(self, f: Float) -> bool:
        return max(self.cursor) + self._float_height(f, span=True) <= min(self.bottom)

    def _avail_width(self, span: bool) -> float:
        x0, x1 = (self.cols[0][0], self.cols[-1][1]) if span else self.cols[self.col]
        return x1 - x0

    def _geometry(self, f: Float, span: bool):
        """Figure width/height and caption lines for float ``f`` at the current width."""
        avail = self._avail_width(span)
        s = self.s
        if f.width_mode == "side" and len(self.cols) == 1:
            fig_w = avail * f.width_frac
            cap_w = avail - fig_w - 12
        else:
            fig_w = avail * f.width_frac
            cap_w = avail if f.width_frac > 0.7 else max(fig_w, avail * 0.75)
        rows, cols = f.grid
        if f.kind == "table":
            fig_h = plots.table_height(len(f.table[1]), s.caption_size)
        else:
            pw = (fig_w - (cols - 1) * PANEL_GAP) / cols
            fig_h = rows * pw * f.panels[0].aspect + (rows - 1) * PANEL_GAP
        lines = _wrap(self._caption_tokens(f), s.caption_size, cap_w)
        cap_h = len(lines) * s.caption_size * 1.2
        return fig_w, fig_h, cap_w, lines, cap_h

    def _caption_tokens(self, f: Float) -> list[tuple[str, str]]:
        s = self.s
        rest = f.caption[len(f.prefix) :].strip()
        bold = s.bold_font if s.caption_bold_label else s.body_font
        return _tokens(f.prefix, bold) + _tokens(rest, s.body_font)

    def _float_height(self, f: Float, span: bool) -> float:
        _, fig_h, _, _, cap_h = self._geometry(f, span)
        if f.caption_position == "side" and len(self.cols) == 1:
            return max(fig_h, cap_h) + GAP
        return fig_h + 6 + cap_h + GAP

    def _try_place_here(self) -> None:
        """Place the head of the queue at the bottom of the current column (or page) if it fits."""
        while self.queue:
            f = self.queue[0]
            span = self._spans(f)
            h = self._float_height(f, span)
            min_text = 2 * self.s.leading
            if span:
                if any(self.bottom_used):
                    return
                if self.col != 0 or min(self.bottom) - h < max(
                    self.cursor[0] + min_text, self.cursor[1]
                ):
                    return
                top = min(self.bottom) - h + GAP
                self._place(self.queue.pop(0), top=top, span=True)
                self.bottom = [top - GAP] * len(self.cols)
                self.bottom_used = [True] * len(self.cols)
            else:
                if self.bottom_used[self.col]:
                    return
                if self.bottom[self.col] - h < self.cursor[self.col] + min_text:
                    return
                top = self.bottom[self.col] - h + GAP
                self._place(self.queue.pop(0), top=top, span=False)
                self.bottom[self.col] = top - GAP
                self.bottom_used[self.col] = True

    def _place(self, f: Float, top: float, span: bool) -> None:
        """Draw float ``f`` with its top at ``top``; advance the cursor(s) if it sits at the top."""
        fig_w, fig_h, cap_w, lines, cap_h = self._geometry(f, span)
        x0, x1 = (self.cols[0][0], self.cols[-1][1]) if span else self.cols[self.col]
        side = f.caption_position == "side" and len(self.cols) == 1
        if side:
            fx = x0
            cap_x, cap_top, fig_top = fx + fig_w + 12, top, top
        else:
            fx = x0 + ((x1 - x0) - fig_w) / 2
            cap_x = x0 + ((x1 - x0) - cap_w) / 2 if cap_w < (x1 - x0) else x0
            if f.caption_position == "above":
                cap_top, fig_top = top, top + cap_h + 6
            else:
                fig_top, cap_top = top, top + fig_h + 6
        panels = self._draw_float_body(f, fx, fig_top, fig_w, fig_h)
        cap_box = self._draw_caption(lines, cap_x, cap_top)
        fig_box = [
            round(fx, 2),
            round(fig_top, 2),
            round(fx + fig_w, 2),
            round(fig_top + fig_h, 2),
        ]
        for p in panels:  # a plot's ink may reach past its box
            fig_box[0] = min(fig_box[0], p["bbox"][0])
            fig_box[2] = max(fig_box[2], p["bbox"][2])
        f.placed = {
            "page": self.page,
            "figure_bbox": fig_box,
            "caption_bbox": cap_box,
            "panels": panels,
            "caption_position": "side" if side else f.caption_position,
            "width_mode": "wide" if span else ("side" if side else "column"),
        }
        used = (max(fig_h, cap_h) if side else fig_h + 6 + cap_h) + GAP
        if abs(top - (max(self.cursor) if span else self.cursor[self.col])) < 0.01:
            if span:
                self.cursor = [top + used] * len(self.cols)
            else:
                self.cursor[self.col] = top + used

    def _draw_caption(self, lines, x: float, top: float) -> list[float]:
        s = self.s
        size = s.caption_size
        widths = []
        for k, line in enumerate(lines):
            line_top = top + k * size * 1.2
            self._draw_line(line, x, line_top, size, extra_space=0.0)
            widths.append(_line_width(line, size))
        bottom = top + (len(lines) - 1) * size * 1.2 + size
        return [round(x, 2), round(top, 2), round(x + max(widths), 2), round(bottom, 2)]

    def _draw_line(
        self, line, x: float, top: float, size: float, extra_space: float
    ) -> None:
        """Draw (word, font) tokens; the baseline sits so that glyph boxes span [top, top + size]."""
        font0 = line[0][1]
        baseline = top + size + getDescent(font0, size)  # getDescent is negative
        t = self.c.beginText(x, self.H - baseline)
        t.setWordSpace(extra_space)  # Tw outlives BT/ET: reset it on every line
        for k, (word, font) in enumerate(line):
            t.setFont(font, size)
            t.textOut(word.replace(NBSP, " ") + (" " if k < len(line) - 1 else ""))
        self.c.drawText(t)

    def _draw_float_body(
        self, f: Float, x: float, top: float, w: float, h: float
    ) -> list[dict]:
        s = self.s
        if f.kind == "table":
            header, rows = f.table
            plots.draw_table(
                self.c,
                header,
                rows,
                (x, top, x + w, top + h),
                self.H,
                s.body_font,
                s.bold_font,
                s.caption_size,
            )
            return []
        rows, cols = f.grid
        pw = (w - (cols - 1) * PANEL_GAP) / cols
        ph = pw * f.panels[0].aspect
        boxes = []
        for k, p in enumerate(f.panels):
            r, cidx = divmod(k, cols)
            px, pt = x + cidx * (pw + PANEL_GAP), top + r * (ph + PANEL_GAP)
            boxes.append(
                [round(px, 2), round(pt, 2), round(px + pw, 2), round(pt + ph, 2)]
            )
        if f.single_image and f.panels[0].image is not None:
            self._draw_image(_composite(f.panels, cols, pw), x, top, w, h)
        else:
            for p, b in zip(f.panels, boxes):
                if p.image is not None:
                    self._draw_image(p.image, b[0], b[1], b[2] - b[0], b[3] - b[1])
                    if p.label:
                        self._panel_label(p.label, b[0], b[1])
                else:
                    ink = plots.draw_plot(
                        self.c, p.plot, tuple(b), self.H, s.body_font, p.label
                    )
                    # the truth is what was drawn: a tick label may stick out of the box
                    b[0], b[2] = round(min(b[0], ink[0]), 2), round(max(b[2], ink[2]), 2)
        return [
            {
                "label": p.label,
                "bbox": b,
                "is_sem": p.image is not None,
                "micrograph": p.truth,
                "plot": plots.plot_truth(p.plot) if p.plot else None,
            }
            for p, b in zip(f.panels, boxes)
        ]

    def _draw_image(
        self, image: Image.Image, x: float, top: float, w: float, h: float
    ) -> None:
        buf = io.BytesIO()
        if self.s.image_format == "jpeg":
            image.save(buf, format="JPEG", quality=88)
        else:
            image.save(buf, format="PNG", compress_level=6)
        buf.seek(0)
        self.c.drawImage(ImageReader(buf), x, self.H - top - h, w, h)
        self.image_count += 1

    def _panel_label(self, label: str, x: float, top: float) -> None:
        size = 8.5
        text = f"({label})"
        tw = stringWidth(text, self.s.bold_font, size)
        self.c.setFillColorRGB(1, 1, 1)
        self.c.rect(x, self.H - top - size - 3, tw + 4, size + 3, stroke=0, fill=1)
        self.c.setFillColorRGB(0, 0, 0)
        self.c.setFont(self.s.bold_font, size)
        self.c.drawString(x + 2, self.H - top - size, text)

    # ------------------------------------------------------------------ text
    def _title_block(self) -> None:
        s, p = self.s, self.paper
        x0, x1 = self.cols[0][0], self.cols[-1][1]
        y = self.text_top
        for line in _wrap(_tokens(p.title, s.bold_font), 16, x1 - x0):
            self._draw_centred(line, 16, y, x0, x1)
            y += 19
        y += 4
        for line in _wrap(_tokens(", ".join(p.authors), s.body_font), 11, x1 - x0):
            self._draw_centred(line, 11, y, x0, x1)
            y += 13.5
        for line in _wrap(_tokens(p.affiliation, s.italic_font), 8.5, x1 - x0):
            self._draw_centred(line, 8.5, y, x0, x1)
            y += 10.5
        y += 10
        self.c.setLineWidth(0.5)
        self.c.line(x0, self.H - y, x1, self.H - y)
        y += 6
        ax0, ax1 = (x0 + 20, x1 - 20) if s.columns == 1 else (x0, x1)
        tokens = _tokens("Abstract", s.bold_font) + _tokens(p.abstract, s.body_font)
        y = self._draw_block(tokens, ax0, ax1, y, s.size - 0.5, (s.size - 0.5) * 1.2)
        y += 4
        y = self._draw_block(
            _tokens("Keywords:", s.bold_font) + _tokens(p.keywords, s.body_font),
            ax0,
            ax1,
            y,
            s.size - 1,
            (s.size - 1) * 1.2,
        )
        y += 6
        self.c.line(x0, self.H - y, x1, self.H - y)
        self.cursor = [y + 12] * len(self.cols)

    def _draw_centred(self, line, size, top, x0, x1) -> None:
        w = _line_width(line, size)
        self._draw_line(line, x0 + (x1 - x0 - w) / 2, top, size, 0.0)

    def _draw_block(self, tokens, x0, x1, top, size, leading) -> float:
        lines = _wrap(tokens, size, x1 - x0)
        for k, line in enumerate(lines):
            extra = self._justify(line, size, x1 - x0) if k < len(lines) - 1 else 0.0
            self._draw_line(line, x0, top, size, extra)
            top += leading
        return top

    def _justify(self, line, size, width) -> float:
        n_spaces = sum(w.count(NBSP) for w, _ in line) + len(line) - 1
        if n_spaces == 0:
            return 0.0
        return max(0.0, (width - _line_width(line, size)) / n_spaces)

    def _paragraph(self, text: str, indent: bool) -> None:
        s = self.s
        x0, x1 = self.cols[self.col]
        width = x1 - x0
        ind = s.size * 1.2 if indent else 0.0
        lines = _wrap(_tokens(text, s.body_font), s.size, width, first_indent=ind)
        for k, line in enumerate(lines):
            top = self._slot(s.leading)
            x0, x1 = self.cols[self.col]
            dx = ind if k == 0 else 0.0
            extra = (
                self._justify(line, s.size, width - dx) if k < len(lines) - 1 else 0.0
            )
            self._draw_line(line, x0 + dx, top, s.size, extra)
        self.cursor[self.col] += s.leading * 0.25

    def _heading(self, text: str, level: int) -> None:
        s = self.s
        if self.cursor[self.col] + 4 * s.leading > self.bottom[self.col]:
            self._next_column()
        self.cursor[self.col] += s.leading * (0.6 if level == 1 else 0.3)
        font = s.bold_font if level == 1 else s.italic_font
        size = s.size + (1 if level == 1 else 0)
        top = self._slot(size * 1.3)
        x0, _ = self.cols[self.col]
        self._draw_line([(w, font) for w in text.split(" ")], x0, top, size, 0.0)
        self.cursor[self.col] += 2

    def run(self) -> tuple[bytes, int]:
        self._new_page()
        self._title_block()
        after_heading = True
        for block in self.paper.blocks:
            if block[0] == "heading":
                self._heading(block[1], block[2])
                after_heading = True
            elif block[0] == "para":
                for key in block[2]:
                    f = self.paper.floats[key]
                    if f.placed is None and f not in self.queue:
                        self.queue.append(f)
                self._try_place_here()
                self._paragraph(block[1], indent=not after_heading)
                self._try_place_here()
                after_heading = False
            elif block[0] == "refs":
                for line in block[1]:
                    self._small_paragraph(line)
        for _ in range(20):  # floats still waiting go to the next columns
            if not self.queue:
                break
            self._try_place_here()
            if self.queue:
                self._next_column()
        if self.queue:
            raise RuntimeError(
                f"{self.paper_id}: could not place {[f.key for f in self.queue]}"
            )
        self.c.showPage()
        self.c.save()
        return self.buf.getvalue(), self.page

    def _small_paragraph(self, text: str) -> None:
        s = self.s
        size = s.size - 1.5
        x0, x1 = self.cols[self.col]
        for line in _wrap(_tokens(text, s.body_font), size, x1 - x0 - 8):
            top = self._slot(size * 1.2)
            x0, _ = self.cols[self.col]
            self._draw_line(line, x0, top, size, 0.0)
        self.cursor[self.col] += 1.5


def _composite(panels: list[Panel], cols: int, panel_w_pt: float) -> Image.Image:
    """All panels of a figure in one raster, with (a), (b) burned in: how many journals ship figures."""
    from glassllava.synth.micrographs import _font

    w, h = panels[0].image.size
    gap = round(
        PANEL_GAP * w / panel_w_pt
    )  # the gap in pixels at the panel's print scale
    rows = (len(panels) + cols - 1) // cols
    out = Image.new(
        "L", (cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap), 255
    )
    draw = ImageDraw.Draw(out)
    font = _font(26)
    for k, p in enumerate(panels):
        r, c = divmod(k, cols)
        x, y = c * (w + gap), r * (h + gap)
        out.paste(p.image, (x, y))
        if p.label:
            text = f"({p.label})"
            tw = draw.textlength(text, font=font)
            draw.rectangle([x, y, x + tw + 8, y + 32], fill=255)
            draw.text((x + 4, y + 1), text, font=font, fill=0)
    return out
