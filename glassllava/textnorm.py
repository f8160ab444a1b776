"""Text normalisation for everything the pipeline extracts from PDFs.

PDFium marks a hyphen it finds at a line end by replacing it with ``\\x02`` (its internal
"hyphen" character type), and a glyph whose font has no ToUnicode entry comes back as its
raw character code (``\\x02``/``\\x03`` for the parentheses of the APL papers' MathematicalPi
font, ``\\x04`` for a TeX integral sign...). ``normalize_text`` is the one function every text
path goes through: it joins hyphenated line breaks (keeping the hyphen of a compound such as
"defect-free"), drops soft hyphens, ``(cid:N)`` placeholders and every control character
except newline and tab. ``GlyphResolver`` gives unmapped glyphs their visible character from
the font's encoding (glyph names) or, for delimiters with private glyph names, from the
glyph's outline. ``strip_table_controls`` is the last guard applied where tables are written.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Iterable

# C0 controls except \t and \n, DEL and the C1 controls
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
CONTROL_RE2 = r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # the same class for pyarrow's RE2
PDFIUM_HYPHEN = "\x02"
SOFT_HYPHEN = "\xad"
_CID_RE = re.compile(r"\(cid:\d+\)")
_SOFT_RE = re.compile(SOFT_HYPHEN + r"(?:[ \t]*\n[ \t]*|[ \t]+)?")
# a hyphen at a line break: the pdfium marker (then optional spaces or a newline), or "-\n"
_BREAK_RE = re.compile(r"(\w+)(?:\x02[ \t]*\n?[ \t]*|-[ \t]*\n[ \t]*)(?=\w)(\w+)")
_LETTERS_END = re.compile(r"[^\W\d_]+$")
_LETTERS_START = re.compile(r"^[^\W\d_]+")
_WORD_RE = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")

# second halves that make compounds rather than hyphenated word pieces ("defect-free",
# "Cu-based", "glass-like"): a line-break hyphen before one of them is a real hyphen
COMPOUND_TAILS = frozenset(
    """free based like rich poor type doped induced dependent independent sized shaped scale
    containing driven assisted treated coated modified related derived bearing forming
    resistant sensitive assisted step state order range field angle ray time temperature
    dimensional layer phase fold point rate wise made grade level term ion grained
    sectional""".split()
)


def join_hyphenated(left: str, right: str, vocab: Counter[str] | None = None) -> str:
    """``left`` and ``right`` around a hyphen at a line break: the word read, with or without the hyphen.

    The hyphen stays when either side is not a plain lower-case word piece ("TiO2-based",
    "X-ray", "SEM-\\nbased", "Al-Cu"), when the paper spells the compound with a hyphen
    elsewhere more often than joined, or when the second half is a common compound tail
    ("defect-free"); otherwise the pieces join ("con-sistent" -> "consistent").
    """
    keep = f"{left}-{right}"
    piece = re.split(r"[^\w]", left)[-1]  # the last piece of "cross-sec" is "sec"
    lw = _LETTERS_END.search(piece)
    rw = _LETTERS_START.search(right)
    if not lw or not rw or lw.start() != 0:
        return keep  # a digit next to the hyphen: "TiO2-based", "2-nm"
    lw_s, rw_s = lw.group(), rw.group()
    if not rw_s[0].islower() or len(lw_s) == 1 or any(c.isupper() for c in lw_s[1:]):
        return keep  # "Al-Cu", "X-ray", "SEM-based"
    if vocab:
        hyph = vocab.get(f"{lw_s}-{rw_s}".lower(), 0)
        joined = vocab.get((lw_s + rw_s).lower(), 0)
        if hyph or joined:
            return keep if hyph > joined else left + right
    if rw_s.lower() in COMPOUND_TAILS:
        return keep
    return left + right


def normalize_text(text: str, vocab: Counter[str] | None = None) -> str:
    """Text with hyphenated line breaks joined and no control character other than newline and tab.

    >>> normalize_text("con\\x02 sistent"), normalize_text("Fig\\x02 ure"), normalize_text("defect-\\nfree")
    ('consistent', 'Figure', 'defect-free')
    """
    if not text:
        return text
    text = _CID_RE.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SOFT_RE.sub("", text)
    text = _BREAK_RE.sub(lambda m: join_hyphenated(m.group(1), m.group(2), vocab), text)
    return CONTROL_RE.sub("", text)


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """Lower-cased words (hyphenated compounds kept whole) of ``texts``: the vocabulary
    ``join_hyphenated`` consults to tell a compound's hyphen from a hyphenation."""
    counts: Counter[str] = Counter()
    for t in texts:
        for w in _WORD_RE.findall(t):
            w = w.lower()
            counts[w] += 1
            if "-" in w:
                counts.update(w.split("-"))
    return counts


def has_controls(text: str) -> bool:
    return bool(CONTROL_RE.search(text or ""))


# ---- the last guard: tables -----------------------------------------------------------


def strip_table_controls(table):
    """``table`` with line ends made ``\\n`` and other control characters removed from every
    string column (lists of strings included): the invariant holds for whatever is written."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def clean(arr):
        if isinstance(arr, pa.ChunkedArray):
            chunks = [clean(c) for c in arr.chunks]
            if all(a is b for a, b in zip(chunks, arr.chunks)):
                return arr
            return pa.chunked_array(chunks, type=arr.type)
        t = arr.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            arr = pc.replace_substring(arr, "\r\n", "\n")
            arr = pc.replace_substring(arr, "\r", "\n")
            return pc.replace_substring_regex(arr, CONTROL_RE2, "")
        mask = arr.is_null() if arr.null_count else None
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            values = clean(arr.values)
            if values is arr.values:
                return arr
            cls = pa.ListArray if pa.types.is_list(t) else pa.LargeListArray
            return cls.from_arrays(arr.offsets, values, type=t, mask=mask)
        if pa.types.is_struct(t):
            children = arr.flatten()
            new = [clean(c) for c in children]
            if all(a is b for a, b in zip(new, children)):
                return arr
            return pa.StructArray.from_arrays(new, fields=list(t), mask=mask)
        return arr

    for i, field in enumerate(table.schema):
        col = table.column(i)
        new = clean(col)
        if new is not col:
            table = table.set_column(i, field, new)
    return table


# ---- glyphs without a Unicode mapping ----------------------------------------------------

# glyph names of the TeX math fonts (CMSY, CMEX, CMMI, MSAM) and others that the Adobe Glyph
# List does not know; size variants ("parenleftbig", "integraltext") are reduced first
_EXTRA_GLYPHS = {
    "angbracketleft": "\u27e8", "angbracketright": "\u27e9", "greatermuch": "\u226b", "lessmuch": "\u226a",
    "equivalence": "\u2261", "negationslash": "\u0338", "circlecopyrt": "\u00a9", "lscript": "\u2113",
    "vextendsingle": "|", "vextenddouble": "\u2016", "prime": "\u2032", "integral": "\u222b",
    "contintegral": "\u222e", "radical": "\u221a", "summation": "\u2211", "product": "\u220f",
    "coproduct": "\u2210", "bardbl": "\u2016", "bar": "|", "braceleft": "{", "braceright": "}",
    "floorleft": "\u230a", "floorright": "\u230b", "ceilingleft": "\u2308", "ceilingright": "\u2309",
    "similarequal": "\u2243", "lessequal": "\u2264", "greaterequal": "\u2265", "approxequal": "\u2248",
    "proportional": "\u221d", "minusplus": "\u2213", "periodcentered": "\u00b7", "asteriskmath": "\u2217",
    "openbullet": "\u25e6", "element": "\u2208", "owner": "\u220b", "follows": "\u227b", "precedes": "\u227a",
    "arrowdblup": "\u21d1", "arrowdblright": "\u21d2", "arrowdblleft": "\u21d0", "dotlessi": "\u0131",
    "ff": "ff", "fi": "fi", "fl": "fl", "ffi": "ffi", "ffl": "ffl", "suppress": "", "visiblespace": " ",
    "lessorequalslant": "\u2a7d", "greaterorequalslant": "\u2a7e", "lessorsimilar": "\u2272",
    "greaterorsimilar": "\u2273", "defines": "\u225c", "bullet": "\u2022",
}
_SIZE_SUFFIX = re.compile(r"(?:bigg|Bigg|big|Big|text|display|tp|bt|mid|ex|ext)$")


def glyph_name_text(name: str) -> str | None:
    """The visible text of a glyph name, None when the name tells nothing (``H20850``, ``C176``)."""
    from fontTools.agl import toUnicode

    for n in (name, _SIZE_SUFFIX.sub("", name)):
        if n in _EXTRA_GLYPHS:
            return _EXTRA_GLYPHS[n]
        u = toUnicode(n) if n and n != ".notdef" else ""
        if u and not CONTROL_RE.search(u) and not all(0xE000 <= ord(c) <= 0xF8FF for c in u):
            return u
    return None


def delimiter_from_outline(ops: list[tuple[str, tuple]]) -> str | None:
    """Which delimiter a glyph outline (fontTools RecordingPen value) draws: ( ) [ ] | ‖ ⟨ ⟩, else None.

    Delimiters are tall and narrow and reach below the baseline; a parenthesis is curves, whose
    middle bulges away from its ends; a bracket is straight lines with serifs at both ends."""
    contours: list[list[tuple[str, list[tuple[float, float]]]]] = []
    for op, pts in ops:
        if op == "moveTo":
            contours.append([("line", list(pts))])
        elif op in ("lineTo", "curveTo", "qCurveTo") and contours:
            contours[-1].append(("line" if op == "lineTo" else "curve", [p for p in pts if p is not None]))
    if not contours or len(contours) > 2:
        return None
    pts = [p for c in contours for _, seg in c for p in seg]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    w, h = x1 - x0, y1 - y0
    if h <= 0 or w <= 0 or h < 2.2 * w or y0 > -0.05 * h:
        return None  # not tall and narrow, or not below the baseline
    curves = sum(kind == "curve" for c in contours for kind, _ in c)
    lines = sum(kind == "line" for c in contours for kind, _ in c) - len(contours)
    if len(contours) == 2:
        return "\u2016" if curves == 0 else None
    # where the outline (control points as a polyline) crosses half height, and its top
    ym = (y0 + y1) / 2
    cross: list[float] = []
    for c in contours:
        poly = [p for _, seg in c for p in seg]
        for (ax, ay), (bx, by) in zip(poly, poly[1:] + poly[:1]):
            if min(ay, by) < ym <= max(ay, by) and ay != by:
                cross.append(ax + (ym - ay) * (bx - ax) / (by - ay))
    top = [p for p in pts if p[1] >= y1 - 0.08 * h]
    if not cross or not top:
        return None
    mid_x = sum(cross) / len(cross)
    top_x = sum(p[0] for p in top) / len(top)
    if curves >= 2 and lines <= 2:
        # both ends on the same side of the middle (an integral sign's ends are not)
        bottom = [p for p in pts if p[1] <= y0 + 0.08 * h]
        bot_x = sum(p[0] for p in bottom) / len(bottom)
        if mid_x < min(top_x, bot_x) - 0.05 * w:
            return "("
        if mid_x > max(top_x, bot_x) + 0.05 * w:
            return ")"
        return None
    if curves == 0:
        if max(cross) - min(cross) >= 0.8 * w:
            return "|"  # a plain bar
        left = mid_x < (x0 + x1) / 2
        if max(p[0] for p in top) - min(p[0] for p in top) >= 0.6 * w:
            return "[" if left else "]"  # a stem with serifs
        return "\u27e8" if left else "\u27e9"
    return None


def _strip_subset(name: str) -> str:
    return re.sub(r"^[A-Z]{6}\+", "", name)


class GlyphResolver:
    """Visible characters for glyphs pdfium cannot map, read from the PDF's font dictionaries.

    Built lazily from the PDF's bytes (pdfminer parses the page resources, no layout): for a
    simple font, the code's glyph name comes from ``/Encoding /Differences``; a known name
    gives its character, an unknown one (the MathematicalPi fonts' ``H20850``) its outline's
    delimiter when the font program is embedded as CFF. What stays unknown maps to "".
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pages: dict[int, dict[str, list[dict]]] | None = None
        self._cache: dict[tuple[int, str, int], str] = {}
        self._cff: dict[int, object] = {}

    def _load(self) -> None:
        from pdfminer.pdfdocument import PDFDocument
        from pdfminer.pdfpage import PDFPage
        from pdfminer.pdfparser import PDFParser

        self._pages = {}
        try:
            doc = PDFDocument(PDFParser(io.BytesIO(self._data)))
            for i, page in enumerate(PDFPage.create_pages(doc)):
                fonts: dict[str, list[dict]] = {}
                self._collect(page.resources, fonts, depth=0)
                self._pages[i] = fonts
        except Exception:  # a PDF pdfminer cannot read: nothing is resolved, text is still clean
            pass

    def _collect(self, resources, fonts: dict[str, list[dict]], depth: int) -> None:
        from pdfminer.pdftypes import resolve1

        resources = resolve1(resources)
        if not isinstance(resources, dict) or depth > 3:
            return
        for ref in (resolve1(resources.get("Font")) or {}).values():
            spec = resolve1(ref)
            if not isinstance(spec, dict):
                continue
            base = resolve1(spec.get("BaseFont"))
            base = _strip_subset(str(getattr(base, "name", base) or ""))
            enc = resolve1(spec.get("Encoding"))
            codes: dict[int, str] = {}
            if isinstance(enc, dict):
                code = 0
                for d in resolve1(enc.get("Differences")) or []:
                    if isinstance(d, int):
                        code = d
                    elif hasattr(d, "name"):
                        codes[code] = d.name
                        code += 1
            fd = resolve1(spec.get("FontDescriptor")) or {}
            program = resolve1(fd.get("FontFile3")) if isinstance(fd, dict) else None
            fonts.setdefault(base, []).append({"codes": codes, "cff": program})
        for ref in (resolve1(resources.get("XObject")) or {}).values():
            xobj = resolve1(ref)
            attrs = getattr(xobj, "attrs", None)
            if attrs and getattr(resolve1(attrs.get("Subtype")), "name", None) == "Form":
                self._collect(attrs.get("Resources"), fonts, depth + 1)

    def _outline(self, program, name: str) -> list | None:
        from fontTools.cffLib import CFFFontSet
        from fontTools.pens.recordingPen import RecordingPen

        key = id(program)
        if key not in self._cff:
            try:
                cff = CFFFontSet()
                cff.decompile(io.BytesIO(program.get_data()), None)
                self._cff[key] = cff[cff.fontNames[0]]
            except Exception:
                self._cff[key] = None
        top = self._cff[key]
        if top is None or name not in top.CharStrings:
            return None
        pen = RecordingPen()
        try:
            top.CharStrings[name].draw(pen)
        except Exception:
            return None
        return pen.value

    def resolve(self, page_index: int, fontname: str, code: int) -> str:
        """The text for character ``code`` of font ``fontname`` on page ``page_index`` (0-based); "" if unknown."""
        key = (page_index, _strip_subset(fontname), code)
        if key in self._cache:
            return self._cache[key]
        if self._pages is None:
            self._load()
        out = ""
        for font in (self._pages or {}).get(page_index, {}).get(key[1], []):
            name = font["codes"].get(code)
            if not name:
                continue
            text = glyph_name_text(name)
            if text is None and font["cff"] is not None:
                ops = self._outline(font["cff"], name)
                text = delimiter_from_outline(ops) if ops else None
            if text:
                out = text
                break
        self._cache[key] = out
        return out
