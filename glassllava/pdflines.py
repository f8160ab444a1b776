"""Column-aware text lines and blocks from PDF pages (pdfplumber words in, reading order out).

pdfplumber's ``extract_text`` joins the two columns of a page into one line, so a caption
that starts mid-line ("... the glass. Fig. 3. SEM image ...") is lost. Here a visual row of
words is split wherever its gap crosses the page's column gutter, or is far wider than any
justified word space. Lines are then grouped into blocks (heading, paragraph, caption) and
ordered as a reader would: full-width blocks split the page into bands, and inside each
band the left column is read before the right one.

Used by ``ingest`` (paragraphs, headings, in-text figure context) and ``figures`` (captions).
"""

from __future__ import annotations

import ctypes
import io
import itertools
import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pypdfium2.raw as pdfium_c

from glassllava.pagegraphics import page_frame
from glassllava.textnorm import CONTROL_RE, GlyphResolver, normalize_text, word_counts

# A caption starts a block with "Fig. 3.", "FIG. 3.", "Figure. 3:", "Fig.3.", "Fig. 3 Text",
# "Figure 7-26 ...", "Fig. 1 (a) DSC ..."; it is never a body reference such as "Fig. 3 shows",
# "Fig. 13(a) shows" or "Fig. 1 (a) shows".
CAPTION_RE = re.compile(
    r"^(?P<word>Fig(?:ure)?|FIG(?:URE)?|Figure)\s*\.?\s*"
    r"(?P<label>S?\d{1,3}(?:[-\u2013.]\d{1,3})?)(?![\d])(?![-\u2013.]\d)"
    r"(?P<rest>\s*(?:[.:|\u2014\u2013-]\s*|\s+(?=[A-Z\u0391-\u03a9\"'\u201c])|\s+(?=\([a-z]\)\s*[A-Z\u0391-\u03a9])).*|\s*)$",
    re.S,
)
TABLE_CAPTION_RE = re.compile(r"^(?:Table|TABLE)\s+(?P<label>[IVX\d]+[A-Za-z]?)\s*(?:[.:|]|\s+(?=[A-Z]))")
_HEADING_NUMBER_RE = re.compile(r"^(?:\d+(?:\.\d+)*\.?|[IVX]+\.)\s+\S")
_BOLD_RE = re.compile(r"bold|black|heavy|semibold|demi|,B\b|-B\b|\.B\b|Medi", re.I)
_PANEL_LETTER_RE = re.compile(r"^\(?[a-hA-H]\)[.:]?$")
_PANEL_LETTER_WORD_RE = re.compile(r"^(?:[a-h]|\(?[a-hA-H]\))$")


def caption_label(text: str) -> str | None:
    """The figure label when ``text`` opens a figure caption, else None.

    >>> caption_label("Fig. 3. SEM image"), caption_label("Fig. 3 shows cracks")
    ('3', None)
    """
    m = CAPTION_RE.match(text.strip())
    if not m:
        return None
    rest = m.group("rest")
    # "Fig. 3" alone on a line is a caption only when followed by punctuation or nothing
    if rest.strip() and rest.lstrip()[:1].islower():
        return None
    return m.group("label").replace("\u2013", "-")


def clean_text(text: str, vocab: Counter[str] | None = None) -> str:
    """``textnorm.normalize_text`` (hyphenated line breaks joined, control characters and
    ``(cid:N)`` placeholders dropped), then whitespace collapsed to single spaces."""
    return re.sub(r"\s+", " ", normalize_text(text, vocab)).strip()


@dataclass
class Line:
    page: int  # 1-based
    x0: float
    top: float
    x1: float
    bottom: float
    text: str
    size: float
    fontname: str
    column: int = 0  # 0 full width / single column, 1 left, 2 right

    @property
    def bold(self) -> bool:
        return bool(_BOLD_RE.search(self.fontname))

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return (self.x0, self.top, self.x1, self.bottom)


@dataclass
class Block:
    page: int
    column: int
    kind: str  # heading | paragraph | caption | table_caption
    lines: list[Line] = field(default_factory=list)
    label: str | None = None  # figure/table label for captions
    # the paper's words, to tell a compound's hyphen at a line end from a hyphenation
    vocab: Counter[str] | None = field(default=None, repr=False, compare=False)

    @property
    def text(self) -> str:
        # lines are joined with "\n" so that clean_text sees each line-end hyphen
        return clean_text("\n".join(ln.text for ln in self.lines), self.vocab)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return (
            min(ln.x0 for ln in self.lines),
            min(ln.top for ln in self.lines),
            max(ln.x1 for ln in self.lines),
            max(ln.bottom for ln in self.lines),
        )

    @property
    def size(self) -> float:
        return statistics.median(ln.size for ln in self.lines)


@dataclass
class PageText:
    page: int
    width: float
    height: float
    gutter: tuple[float, float] | None  # x-range of the column gutter, None on one-column pages
    lines: list[Line]
    blocks: list[Block]
    rotated: list[Line] = field(default_factory=list)  # rotated words (axis titles): figure text only
    visible: tuple[float, float, float, float] | None = None  # the CropBox in the page frame (None: 0, 0, width, height)

    def __post_init__(self) -> None:
        if self.visible is None:
            self.visible = (0.0, 0.0, self.width, self.height)


# ---- lines --------------------------------------------------------------------------


def _rows(words: list[dict]) -> list[list[dict]]:
    """Group words into visual rows.

    A word joins a row when at least half of its height overlaps the row's main words, so
    sub- and superscripts (smaller, shifted) stay in their line while the next line, whose
    box barely touches this one, starts a new row.
    """
    rows: list[list[dict]] = []
    spans: list[list[float]] = []  # top/bottom of each row's largest word
    for w in sorted(words, key=lambda w: (round(w["top"], 1), w["x0"])):
        h = max(w["bottom"] - w["top"], 0.5)
        best, best_overlap = None, 0.0
        for k in range(max(0, len(rows) - 6), len(rows)):
            top, bottom = spans[k]
            overlap = min(bottom, w["bottom"]) - max(top, w["top"])
            frac = overlap / min(h, max(bottom - top, 0.5))
            if frac >= 0.5 and frac > best_overlap and not _off_row(rows[k], w, h):
                best, best_overlap = k, frac
        if best is None:
            rows.append([w])
            spans.append([w["top"], w["bottom"]])
        else:
            rows[best].append(w)
            top, bottom = spans[best]
            if h > bottom - top:
                spans[best] = [w["top"], w["bottom"]]
    for row in rows:
        row.sort(key=lambda w: w["x0"])
    return rows


def _off_row(row: list[dict], w: dict, h: float) -> bool:
    """Whether the row's word right beside ``w`` sits on another line: the lines of two columns
    set in different sizes drift against each other, so both lines of a small-type caption
    can overlap one taller body line in the next column."""
    near = min(row, key=lambda r: max(r["x0"] - w["x1"], w["x0"] - r["x1"], 0.0))
    if max(near["x0"] - w["x1"], w["x0"] - near["x1"], 0.0) > 2.0 * max(w.get("size", 10.0), 4.0):
        return False
    overlap = min(near["bottom"], w["bottom"]) - max(near["top"], w["top"])
    return overlap < 0.5 * min(h, max(near["bottom"] - near["top"], 0.5))


def find_gutter(rows: list[list[dict]], width: float) -> tuple[float, float] | None:
    """Find the vertical whitespace band between two text columns, if the page has one.

    For each x near the middle of the page, count the rows that have a gap there (text on
    both sides, none at x) and the rows whose text runs across x. A gutter is the widest band
    where many rows have a gap and clearly more rows have a gap than cross it, so a page whose
    top is one column (title, abstract) and whose bottom is two columns still has its gutter.
    """
    n = int(width) + 2
    gapped = np.zeros(n, dtype=np.int32)
    crossing = np.zeros(n, dtype=np.int32)
    for row in rows:
        if len(row) < 2 and (row[0]["x1"] - row[0]["x0"]) < 0.1 * width:
            continue
        seg_start = row[0]["x0"]
        prev = row[0]
        segs = []
        for w in row[1:]:
            if w["x0"] - prev["x1"] > 0.9 * max(prev.get("size", 10.0), 4.0):
                segs.append((seg_start, prev["x1"]))
                seg_start = w["x0"]
            prev = w
        segs.append((seg_start, prev["x1"]))
        for a, b in segs:
            crossing[max(int(a) + 1, 0) : min(int(b), n)] += 1
        for (a0, a1), (b0, b1) in zip(segs, segs[1:]):
            if b0 - a1 >= 6.0:
                gapped[max(int(a1) + 1, 0) : min(int(b0), n)] += 1
    lo, hi = int(0.3 * width), int(0.7 * width)
    ok = (gapped >= 5) & (2 * gapped >= 3 * crossing)
    best: tuple[int, int, tuple[int, int]] | None = None
    x = lo
    while x < hi:
        if ok[x]:
            y = x
            while y + 1 < n and ok[y + 1]:
                y += 1
            xs = x
            while xs > 0 and ok[xs - 1]:
                xs -= 1
            # the gutter is the band most rows have a gap in (table columns have fewer)
            score = (int(gapped[xs : y + 1].max()), y - xs)
            if y - xs >= 3 and (best is None or score > best[2]):
                best = (xs, y, score)
            x = y + 1
        else:
            x += 1
    if best is None:
        return None
    return (float(best[0]), float(best[1] + 1))


def _make_line(page: int, words: list[dict]) -> Line:
    sizes: Counter[float] = Counter()
    fonts: Counter[str] = Counter()
    for w in words:
        sizes[round(w.get("size", 10.0), 1)] += len(w["text"])
        fonts[w.get("fontname", "")] += len(w["text"])
    text = words[0]["text"]
    for prev, w in zip(words, words[1:]):
        # a sub/superscript set tight against its base joins it without a space ("TiO2")
        small = min(w.get("size", 10.0), prev.get("size", 10.0)) < 0.85 * max(w.get("size", 10.0), prev.get("size", 10.0))
        text += ("" if small and w["x0"] - prev["x1"] < 0.6 else " ") + w["text"]
    return Line(
        page=page,
        x0=min(w["x0"] for w in words),
        top=min(w["top"] for w in words),
        x1=max(w["x1"] for w in words),
        bottom=max(w["bottom"] for w in words),
        text=text,
        size=float(sizes.most_common(1)[0][0]),
        fontname=fonts.most_common(1)[0][0] if fonts else "",
    )


def page_words(page, glyphs: GlyphResolver | None = None, page_index: int = 0) -> list[dict]:
    """Words of a pypdfium2 page, in pdfplumber's coordinates (x as in the PDF, ``top = H - y``).

    pdfium's text layer is read directly: 20-50x faster than pdfminer on pages full of
    vector graphics. A word ends at a space, a line change or a horizontal gap; rotated
    text (axis titles) is returned with ``upright=False``.

    A hyphen pdfium found at a line end (reported as ``\x02``) is returned as "-"; a glyph
    without a Unicode mapping gets its character from ``glyphs`` (the font's glyph names or
    outline) or is left out, so no control character reaches a word.
    """
    frame_height = page_frame(page).height
    tp = page.get_textpage()
    raw = tp.raw
    n = tp.count_chars()
    words: list[dict] = []
    cur: dict | None = None
    fontbuf = ctypes.create_string_buffer(128)
    flags = ctypes.c_int()
    matrix = pdfium_c.FS_MATRIX()
    last_font_obj = None
    fontname = ""
    for i in range(n):
        u = pdfium_c.FPDFText_GetUnicode(raw, i)
        ch = chr(u) if u else ""
        if not ch or ch.isspace() or pdfium_c.FPDFText_IsGenerated(raw, i) == 1 and not ch.strip():
            cur = None
            continue
        if pdfium_c.FPDFText_IsHyphen(raw, i) == 1:
            ch = "-"
        elif pdfium_c.FPDFText_HasUnicodeMapError(raw, i) == 1 or CONTROL_RE.search(ch):
            ch = _unmapped_text(raw, i, u, glyphs, page_index)
            if not ch:
                continue  # unmappable: dropped, never kept as a control character
        l, b, r, t = tp.get_charbox(i, loose=True)
        pdfium_c.FPDFText_GetMatrix(raw, i, ctypes.byref(matrix))
        # the font size in text space times the text matrix's scale = the size seen on the page
        size = pdfium_c.FPDFText_GetFontSize(raw, i) * math.sqrt(abs(matrix.a * matrix.d - matrix.b * matrix.c))
        angle = pdfium_c.FPDFText_GetCharAngle(raw, i)
        upright = abs(angle) < 0.05 or abs(angle - 6.2832) < 0.05
        obj = pdfium_c.FPDFText_GetTextObject(raw, i)
        obj_key = ctypes.cast(obj, ctypes.c_void_p).value
        if obj_key != last_font_obj:
            pdfium_c.FPDFText_GetFontInfo(raw, i, fontbuf, 128, ctypes.byref(flags))
            fontname = fontbuf.value.decode("latin-1", "replace")
            last_font_obj = obj_key
        x0, x1, top, bottom = l, r, frame_height - t, frame_height - b
        if cur is not None and upright and cur["upright"]:
            gap = x0 - cur["x1"]
            same_row = abs((top + bottom) - (cur["top"] + cur["bottom"])) < 0.5 * max(bottom - top, 1.0)
            if same_row and -0.8 * size <= gap <= 0.12 * max(size, 1.0) + 0.8:
                cur["text"] += ch
                cur["x1"] = max(cur["x1"], x1)
                cur["top"] = min(cur["top"], top)
                cur["bottom"] = max(cur["bottom"], bottom)
                continue
        elif cur is not None and not upright and not cur["upright"]:
            near = abs(x0 - cur["x0"]) < size and abs(top - cur["bottom"]) < 0.5 * size or abs(bottom - cur["top"]) < 0.5 * size
            if near and abs(x0 - cur["x0"]) < size:
                cur["text"] += ch
                cur["x0"], cur["x1"] = min(cur["x0"], x0), max(cur["x1"], x1)
                cur["top"], cur["bottom"] = min(cur["top"], top), max(cur["bottom"], bottom)
                continue
        cur = {"text": ch, "x0": x0, "x1": x1, "top": top, "bottom": bottom, "size": size,
               "fontname": fontname, "upright": upright}
        words.append(cur)
    tp.close()
    return words


def _unmapped_text(raw, i: int, code: int, glyphs: GlyphResolver | None, page_index: int) -> str:
    """The visible text of a glyph pdfium reports by its character code, "" when unknown."""
    if glyphs is None:
        return "" if CONTROL_RE.search(chr(code)) else chr(code)
    font = pdfium_c.FPDFTextObj_GetFont(pdfium_c.FPDFText_GetTextObject(raw, i))
    name = ""
    if font:
        size = pdfium_c.FPDFFont_GetBaseFontName(font, None, 0)
        if size:
            buf = ctypes.create_string_buffer(size)
            pdfium_c.FPDFFont_GetBaseFontName(font, buf, size)
            name = buf.value.decode("latin-1", "replace")
    text = glyphs.resolve(page_index, name, code) if name else ""
    if not text and not CONTROL_RE.search(chr(code)):
        text = chr(code)  # the code itself is a printable character: keep what pdfium read
    return CONTROL_RE.sub("", text)


def page_lines(page, page_number: int) -> tuple[list[Line], tuple[float, float] | None]:
    """Column-aware lines of one pypdfium2 page, and the page's gutter (None if one column)."""
    words = [w for w in page_words(page) if w["upright"]]
    rows = _rows(words)
    gutter = find_gutter(rows, float(page.get_width()))
    return _split_rows(rows, gutter, page_number), gutter


def _split_rows(rows: list[list[dict]], gutter: tuple[float, float] | None, page_number: int) -> list[Line]:
    """Lines from visual rows: a row splits where it crosses the gutter or at a very wide gap."""
    lines: list[Line] = []
    for row in rows:
        cur = [row[0]]
        for w in row[1:]:
            prev = cur[-1]
            gap = w["x0"] - prev["x1"]
            size = max(prev.get("size", 10.0), 4.0)
            # the gap spans the gutter's middle (a line may reach a little into the gutter
            # band, which is measured from the rows that have a gap there)
            crosses = (
                gutter is not None
                and prev["x1"] < (gutter[0] + gutter[1]) / 2 < w["x0"]
                and gap >= max(6.0, 0.5 * (gutter[1] - gutter[0]))
            )
            # type of another size past a gap is another text: plot labels and panel letters
            # beside a side caption's line, not words of it (sub- and superscripts sit closer)
            resized = abs(w.get("size", 10.0) - prev.get("size", 10.0)) >= 1.0 and gap > max(
                4.0, min(w.get("size", 10.0), prev.get("size", 10.0))
            )
            # a panel letter set larger than the tick labels beside it is a word of its own
            panel_letter = any(
                _PANEL_LETTER_WORD_RE.match(a["text"]) and a.get("size", 10.0) >= 1.4 * b.get("size", 10.0)
                for a, b in ((prev, w), (w, prev))
            ) and gap > 1.5
            if crosses or resized or panel_letter or gap > max(2.5 * size, 14.0):
                lines.append(_make_line(page_number, cur))
                cur = [w]
            else:
                cur.append(w)
        lines.append(_make_line(page_number, cur))
    mid = (gutter[0] + gutter[1]) / 2 if gutter is not None else 0.0
    for ln in lines:
        if gutter is None:
            ln.column = 0
        elif ln.x1 <= max(gutter[0] + 2, mid - 1):
            ln.column = 1
        elif ln.x0 >= min(gutter[1] - 2, mid + 1):
            ln.column = 2
        else:
            ln.column = 0
    lines.sort(key=lambda ln: (ln.top, ln.x0))
    return lines


def _document_gutter(gutters: list[tuple[float, float] | None]) -> tuple[float, float] | None:
    """The gutter most two-column pages of a paper agree on (None when they do not).

    A page's gutter can only be wider than the columns leave (short lines and figures widen
    the gap), so the paper's gutter is the band the agreeing pages share."""
    found = [g for g in gutters if g is not None]
    if len(found) < 2 or len(found) < 0.5 * len(gutters):
        return None

    def shared(a: tuple[float, float], b: tuple[float, float]) -> float:
        return min(a[1], b[1]) - max(a[0], b[0])

    anchor = max(found, key=lambda g: (sum(shared(g, o) >= 4.0 for o in found), -(g[1] - g[0])))
    agree = [g for g in found if shared(anchor, g) >= 4.0]
    if len(agree) < 0.75 * len(found):
        return None
    band = (max(g[0] for g in agree), min(g[1] for g in agree))
    return band if band[1] - band[0] >= 4.0 else None


def _gutter_fits(rows: list[list[dict]], gutter: tuple[float, float]) -> bool:
    """Whether a page whose own gutter was not found (a page of figures with few text rows) can
    take the paper's gutter: few of its rows run across it."""
    a, b = gutter
    mid = (a + b) / 2
    crossing = 0
    for row in rows:
        if any(w["x0"] < mid < w["x1"] for w in row) or any(
            prev["x1"] < a and w["x0"] > b and w["x0"] - prev["x1"] <= 0.9 * max(prev.get("size", 10.0), 4.0)
            for prev, w in itertools.pairwise(row)
        ):
            crossing += 1
    return crossing <= len(rows) / 3


def _rotated_lines(words: list[dict], page_number: int) -> list[Line]:
    return [_make_line(page_number, [w]) for w in words if not w["upright"] and w["text"].strip()]


# ---- blocks -------------------------------------------------------------------------


def _is_heading(ln: Line, body_size: float) -> bool:
    words = ln.text.split()
    if not words or len(words) > 14 or ln.text.endswith((",", ";")):
        return False
    if caption_label(ln.text) or TABLE_CAPTION_RE.match(ln.text):
        return False
    alpha = [c for c in ln.text if c.isalpha()]
    if len(alpha) < 3 or ln.size < body_size - 0.6:  # small text is a label in a figure, not a heading
        return False
    larger = ln.size >= body_size + 1.0
    numbered = bool(_HEADING_NUMBER_RE.match(ln.text)) and not ln.text.rstrip().endswith(".")
    caps = ln.text.isupper() and len(alpha) >= 4
    bold = ln.bold and not ln.text.rstrip().endswith(".")
    return larger or (numbered and (bold or caps or len(words) <= 8)) or (caps and len(words) <= 8) or (bold and len(words) <= 10)


def _continues(block: Block, ln: Line) -> bool:
    """Whether ``ln`` is the next line of ``block``: just below its last line, overlapping it
    horizontally, same size, no first-line indent."""
    prev = block.lines[-1]
    if block.kind in ("caption", "table_caption") and _PANEL_LETTER_RE.match(ln.text.strip()):
        return False  # "(a)" under a caption labels the figure's first panel
    gap = ln.top - prev.bottom
    size = max(prev.size, ln.size)
    if gap > 0.9 * size or gap < -0.5 * min(prev.size, ln.size):
        return False
    if abs(ln.size - prev.size) > 0.9:
        return False
    overlap = min(ln.x1, prev.x1) - max(ln.x0, prev.x0)
    if overlap < 0.5 * min(ln.x1 - ln.x0, prev.x1 - prev.x0):
        return False
    if ln.x0 - prev.x0 > 0.8 * ln.size and prev.x1 - ln.x1 > -2:  # first-line indent
        return False
    if abs(ln.x0 - prev.x0) > 3 * size and abs(ln.x1 - prev.x1) > 3 * size:
        return False  # centred labels of a diagram, not a paragraph
    return True


def _group_blocks(lines: list[Line], body_size: float) -> list[Block]:
    blocks: list[Block] = []
    by_column: dict[int, list[Line]] = {}
    for ln in lines:
        by_column.setdefault(ln.column, []).append(ln)
    for column, col_lines in by_column.items():
        col_lines.sort(key=lambda ln: (ln.top, ln.x0))
        open_blocks: list[Block] = []
        for ln in col_lines:
            label = caption_label(ln.text)
            tlabel = TABLE_CAPTION_RE.match(ln.text)
            heading = _is_heading(ln, body_size)
            open_blocks = [b for b in open_blocks if ln.top - b.lines[-1].bottom <= 2.0 * ln.size]
            target = None
            if label is None and tlabel is None and not heading:
                for b in open_blocks:
                    if b.kind != "heading" and _continues(b, ln):
                        target = b
                        break
            if target is not None:
                target.lines.append(ln)
                continue
            kind = "caption" if label else "table_caption" if tlabel else "heading" if heading else "paragraph"
            block = Block(
                page=ln.page,
                column=column,
                kind=kind,
                lines=[ln],
                label=label or (tlabel.group("label") if tlabel else None),
            )
            blocks.append(block)
            open_blocks.append(block)
    return _join_caption_columns(_join_caption_tails(blocks), body_size)


def _join_caption_columns(blocks: list[Block], body_size: float) -> list[Block]:
    """A caption set across both columns under a full-width figure reads on at the top of the
    right column: a left-column caption whose text stops mid-sentence ("... the extracellular
    messen-") takes the right-column block that starts level with it in the same small type."""
    out = list(blocks)
    for cap in blocks:
        if cap.kind != "caption" or cap.column != 1 or cap.size > body_size - 0.5:
            continue
        if re.search(r"[.!?][)\]]?$", cap.text.rstrip()) and not cap.text.rstrip().endswith("-"):
            continue
        first = cap.lines[0]
        rest = next(
            (
                b
                for b in out
                if b.column == 2
                and b.kind == "paragraph"
                and abs(b.lines[0].top - first.top) <= 0.5 * first.size
                and abs(b.size - cap.size) <= 0.4
                and b.bbox[3] <= cap.bbox[3] + 2 * cap.size
            ),
            None,
        )
        if rest is None:
            continue
        cap.lines.extend(rest.lines)
        cap.column = 0
        out.remove(rest)
    return out


def _join_caption_tails(blocks: list[Block]) -> list[Block]:
    """A full-width caption whose last line is short enough to sit inside one column (so it was
    grouped with that column) gets that line back."""
    out = list(blocks)
    for cap in blocks:
        if cap.kind not in ("caption", "table_caption") or cap.column != 0:
            continue
        tail = next(
            (
                b
                for b in out
                if b.column != 0
                and b.kind == "paragraph"
                and b.lines[0].top > cap.lines[-1].top
                and abs(b.lines[0].x0 - cap.lines[-1].x0) <= 2.0
                and _continues(cap, b.lines[0])
            ),
            None,
        )
        if tail is None:
            continue
        # only the last line of a full-width caption can be short: one line at most
        cap.lines.append(tail.lines[0])
        if len(tail.lines) > 1:
            tail.lines = tail.lines[1:]
        else:
            out.remove(tail)
    return out


def _with_vocab(blocks: list[Block], vocab: Counter[str]) -> list[Block]:
    for b in blocks:
        b.vocab = vocab
    return blocks


def reading_order(blocks: list[Block]) -> list[Block]:
    """Order blocks as read: full-width blocks cut the page into bands; left column first."""
    full = sorted((b for b in blocks if b.column == 0), key=lambda b: b.bbox[1])
    cols = [b for b in blocks if b.column != 0]
    out: list[Block] = []
    edges = [b.bbox[1] for b in full] + [float("inf")]
    band_start = float("-inf")
    fi = 0
    for edge in edges:
        band = [b for b in cols if band_start <= b.bbox[1] < edge]
        out.extend(sorted(band, key=lambda b: (b.column, b.bbox[1])))
        if fi < len(full):
            out.append(full[fi])
            fi += 1
        band_start = edge
    return out


def body_font_size(lines: list[Line]) -> float:
    weights: Counter[float] = Counter()
    for ln in lines:
        weights[round(ln.size * 2) / 2] += len(ln.text)
    return weights.most_common(1)[0][0] if weights else 10.0


def _furniture(pages: list[list[Line]], spans: list[tuple[float, float]]) -> set[int]:
    """ids of running headers/footers and page numbers: short lines near the page edge that repeat.
    ``spans``: each page's visible top and bottom."""
    def key(ln: Line) -> str:
        return re.sub(r"\d+", "#", ln.text.lower())

    def in_margin(ln: Line, top: float, bottom: float, frac: float) -> bool:
        return ln.bottom < top + frac * (bottom - top) or ln.top > bottom - frac * (bottom - top)

    # a running title repeats page after page in the outer tenth (odd and even pages may
    # differ: "CALCIUM WAVES IN GLIA 41", "CHARLES"); a lone page number sits in the outer 7.5 %
    margin_lines = [
        (ln, key(ln), in_margin(ln, top, bottom, 0.075))
        for lines, (top, bottom) in zip(pages, spans)
        for ln in lines
        if in_margin(ln, top, bottom, 0.1) and len(ln.text) < 120
    ]
    counts = Counter(k for _, k, _ in margin_lines)
    n = len(pages)
    drop = set()
    for ln, k, edge in margin_lines:
        repeated = n >= 3 and counts[k] >= max(2, n // 2) and (edge or re.search(r"[a-z]{3}", k))
        if repeated or (edge and re.fullmatch(r"[#\s\-–/|]+|page #.*|# of #", k)):
            drop.add(id(ln))
    # the page number printed level with a running title is furniture too
    dropped_rows = [(ln.page, ln.top, ln.bottom) for ln, _, _ in margin_lines if id(ln) in drop]
    for ln, k, _ in margin_lines:
        if id(ln) not in drop and re.fullmatch(r"#", k):
            if any(p == ln.page and min(b, ln.bottom) - max(t, ln.top) > 0.5 * (ln.bottom - ln.top) for p, t, b in dropped_rows):
                drop.add(id(ln))
    return drop


def pdf_glyph_resolver(pdf) -> GlyphResolver:
    """A ``GlyphResolver`` over an open ``pypdfium2.PdfDocument``; the document is serialised
    (pdfium's own save) only if a page has a glyph to resolve."""

    class _Lazy(GlyphResolver):
        def __init__(self) -> None:
            super().__init__(b"")

        def _load(self) -> None:
            buf = io.BytesIO()
            try:
                pdf.save(buf)
                self._data = buf.getvalue()
            except Exception:  # pdfium cannot write it back: resolve nothing
                self._data = b""
            super()._load()

    return _Lazy()


def extract_pages(pdf, pages: list[int] | None = None) -> list[PageText]:
    """Lines and blocks of the pages of an open ``pypdfium2.PdfDocument``, blocks in reading order.

    A page where no gutter shows (a page of figures and captions) takes the gutter the
    paper's other pages agree on, unless its own rows run across it; so does a page whose
    gutter is wider than, and contains, the paper's.
    """
    numbers = pages or list(range(1, len(pdf) + 1))
    glyphs = pdf_glyph_resolver(pdf)
    pre = []
    for n in numbers:
        page = pdf[n - 1]
        words = page_words(page, glyphs, n - 1)
        rows = _rows([w for w in words if w["upright"]])
        width = float(page.get_width())
        visible = page_frame(page).visible
        pre.append((page.get_width(), page.get_height(), rows, find_gutter(rows, width), _rotated_lines(words, n), visible))
    doc_gutter = _document_gutter([p[3] for p in pre])
    raw = []
    for (width, height, rows, gutter, rotated, _), n in zip(pre, numbers):
        if gutter is None and doc_gutter is not None and rows and _gutter_fits(rows, doc_gutter):
            gutter = doc_gutter
        elif gutter is not None and doc_gutter is not None and gutter[0] - 1 <= doc_gutter[0] and doc_gutter[1] <= gutter[1] + 1:
            # a page of figures and short lines shows a wider gap than its columns leave:
            # the columns are where the paper's other pages have them
            gutter = doc_gutter
        raw.append((width, height, _split_rows(rows, gutter, n), gutter, rotated))
    drop = _furniture([r[2] for r in raw], [(p[5][1], p[5][3]) for p in pre])
    all_lines = [ln for r in raw for ln in r[2] if id(ln) not in drop]
    body = body_font_size(all_lines)
    # the paper's vocabulary, from words inside lines (a line's last word may be a hyphenated piece)
    vocab = word_counts(" ".join(ln.text.split()[:-1]) for ln in all_lines)
    out = []
    for (width, height, lines, gutter, rotated), n, visible in zip(raw, numbers, [p[5] for p in pre]):
        kept = [ln for ln in lines if id(ln) not in drop]
        out.append(
            PageText(
                page=n,
                width=float(width),
                height=float(height),
                gutter=gutter,
                lines=kept,
                blocks=_with_vocab(reading_order(_group_blocks(kept, body)), vocab),
                rotated=rotated,
                visible=visible,
            )
        )
    return out
