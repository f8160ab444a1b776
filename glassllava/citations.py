"""In-text figure citations: "Fig. 3b and c" in a paragraph -> figure "3", panels ["b", "c"].

Used by ``ingest`` to link body paragraphs to the figures they discuss; the figures stage
turns those links into each figure's (and panel's) context. Only body text is scanned: a
caption's own opening label ("Fig. 3. SEM image ...") is not a citation of itself.

Forms understood (case-insensitive word, with or without the dot or the space):
"Fig. 3", "Fig.5", "FIG. 2", "Figure 3a", "Fig. 3(a)", "Fig. 3 (a)", "Fig. 3(a-c)",
"Fig. 3(a)-(c)", "Fig. 3b and c", "Fig. 3a,b", "Figs. 2-4" / "Figs. 2–4" (a range),
"Figures 3 and 4", "Figs. 2a and 5b", "Figs. 2, 3 and 5", "Fig. S2", "Figs. S2–S4",
"Supplementary Fig. 2" (label "S2": never confused with main Fig. 2),
"Extended Data Fig. 3" (label "ED3"). Panel letters are lower-cased ("Fig. 3A" -> "a").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from glassllava.pdflines import CAPTION_RE, caption_label

# The figure word. "(?<![A-Za-z])" keeps "configure 3" out; "(?![a-z])" keeps "figured" out.
_PREFIX = re.compile(
    r"(?<![A-Za-z])(?:(?P<supp>Supplementary|Suppl\.|Extended\s+Data)\s+)?"
    r"(?P<word>fig(?:ure)?(?P<plural>s)?)(?![a-z])\.?\s*",
    re.IGNORECASE,
)
# A figure number: "3", "S2", "3.2" (chapter-numbered). Not "3.5 µm" style decimals of 3+ digits.
_NUMBER = re.compile(r"(?P<num>[Ss]?\d{1,3}(?:\.\d{1,2})?)(?![\d])")
# One panel letter: never the first letter of a word ("Fig. 3 and the ...", "Fig. 3In").
_LETTER = r"[A-Za-z](?![A-Za-z])"
_ATTACHED = re.compile(_LETTER)
_PAREN_OPEN = re.compile(r"\s?\(\s*(?=" + _LETTER + r"\s*[-\u2013\u2014,)]|" + _LETTER + r"\s+and\s)")
_LETTER_SEP = re.compile(r"\s*,\s*(?:and\s+)?|\s*,?\s*(?:and|&)\s+")
_RANGE_SEP = re.compile(r"\s*[-\u2013\u2014]\s*")
_ITEM_SEP = re.compile(r"\s*,\s*(?:and\s+|&\s*)?|\s*,?\s+(?:and|&)\s+")
_NUMBER_RANGE_SEP = re.compile(r"\s*[-\u2013\u2014]\s*")
_PAREN_CLOSE = re.compile(r"\s*\)")
_PAREN_JOIN = re.compile(r"(?P<range>\s*[-\u2013\u2014]\s*)|\s*,\s*(?:and\s+)?|\s*,?\s*(?:and|&)\s+")
_MAX_RANGE = 20  # "Figs. 2-4" expands; "Figs. 2-40" is more likely a typo or a label


@dataclass
class Mention:
    figure_label: str  # "3", "S2"
    panel_labels: list[str] = field(default_factory=list)  # ["b", "c"] or []
    mention: str = ""  # the citing text, e.g. "Fig. 3b and c"


def _letters(text: str, pos: int) -> tuple[list[str], int]:
    """Panel letters at ``pos``: "a", "a,b", "a-c", "b and c" (increasing, so "b and a" stops)."""
    m = _ATTACHED.match(text, pos)
    if not m:
        return [], pos
    out, end = [m.group().lower()], m.end()
    while True:
        r = _RANGE_SEP.match(text, end)
        if r and (n := _ATTACHED.match(text, r.end())) and n.group().lower() > out[-1]:
            out.extend(chr(c) for c in range(ord(out[-1]) + 1, ord(n.group().lower()) + 1))
            end = n.end()
            continue
        s = _LETTER_SEP.match(text, end)
        if s and (n := _ATTACHED.match(text, s.end())) and n.group().lower() > out[-1]:
            out.append(n.group().lower())
            end = n.end()
            continue
        return out, end


def _panels(text: str, pos: int) -> tuple[list[str], int]:
    """Panels right after a figure number: "a", "a-c", "(a)", "(a-c)", "(a)-(c)", "(a) and (b)"."""
    p = _PAREN_OPEN.match(text, pos)
    if p is None:
        if pos < len(text) and text[pos].isspace():  # "Fig. 3 a" is too ambiguous without brackets
            return [], pos
        return _letters(text, pos)
    panels: list[str] = []
    end, ranged = pos, False
    while p is not None:
        letters, after = _letters(text, p.end())
        close = _PAREN_CLOSE.match(text, after)
        if not letters or close is None or (panels and letters[0] <= panels[-1]):
            break
        if ranged:  # "(a)-(c)"
            panels.extend(chr(c) for c in range(ord(panels[-1]) + 1, ord(letters[0])))
        panels.extend(letters)
        end = close.end()
        join = _PAREN_JOIN.match(text, end)
        if join is None:
            break
        ranged = join.group("range") is not None
        p = _PAREN_OPEN.match(text, join.end())
    return panels, end


def _figure_range(first: str, last: str, plural: bool) -> list[str] | None:
    """["2", "3", "4"] for 2..4 (or S2..S4), None when the two numbers make no range."""
    a, b = re.fullmatch(r"(S?)(\d+)", first, re.IGNORECASE), re.fullmatch(r"(S?)(\d+)", last, re.IGNORECASE)
    if not a or not b or a.group(1).upper() != b.group(1).upper():
        return None
    lo, hi = int(a.group(2)), int(b.group(2))
    # a singular "Figure 7-26" is a chapter-style label, not 20 figures
    if not lo < hi <= lo + (_MAX_RANGE if plural else 10):
        return None
    return [f"{a.group(1).upper()}{n}" for n in range(lo, hi + 1)]


def _label(num: str, supp: str | None) -> str:
    num = num[0].upper() + num[1:] if num[0] in "sS" else num
    if supp and supp.lower().startswith("ext"):
        return f"ED{num}"
    if supp and not num.startswith("S"):
        return f"S{num}"
    return num


def find_figure_mentions(text: str) -> list[Mention]:
    """Every figure citation in ``text``, one ``Mention`` per figure label per citing phrase.

    >>> [(m.figure_label, m.panel_labels) for m in find_figure_mentions("see Figs. 2a and 5b")]
    [('2', ['a']), ('5', ['b'])]
    """
    out: list[Mention] = []
    pos = 0
    # a caption's own opening label ("Fig. 3. SEM image of ...") is not a citation
    opening = CAPTION_RE.match(text.strip()) if caption_label(text) else None
    skip_at = len(text) - len(text.lstrip()) if opening and opening.group("rest").strip() else -1
    while (m := _PREFIX.search(text, pos)) is not None:
        pos = m.end()
        if m.start() == skip_at:
            continue
        plural, supp = bool(m.group("plural")), m.group("supp")
        items: list[tuple[str, list[str]]] = []
        cursor = m.end()
        n = _NUMBER.match(text, cursor)
        while n is not None:
            labels, cursor = [n.group("num")], n.end()
            r = _NUMBER_RANGE_SEP.match(text, cursor)
            nxt = _NUMBER.match(text, r.end()) if r else None
            if nxt is not None:
                span = _figure_range(labels[0], nxt.group("num"), plural)
                if span is not None:
                    labels, cursor = span, nxt.end()
                elif not plural and labels[0].isdigit() and nxt.group("num").isdigit():
                    labels, cursor = [f"{labels[0]}-{nxt.group('num')}"], nxt.end()  # "Figure 7-26"
            panels, cursor = _panels(text, cursor)
            items.extend((_label(x, supp), []) for x in labels[:-1])
            items.append((_label(labels[-1], supp), panels))
            s = _ITEM_SEP.match(text, cursor)
            n = _NUMBER.match(text, s.end()) if s else None
            if n is not None and not plural and "," in s.group():
                n = None  # "in Fig. 3, 20 samples ...": a singular word takes "and", not a comma list
        if not items:
            continue
        phrase = text[m.start() : cursor].strip()
        merged: dict[str, list[str]] = {}
        for label, panels in items:
            merged.setdefault(label, [])
            merged[label].extend(p for p in panels if p not in merged[label])
        out.extend(Mention(label, panels, phrase) for label, panels in merged.items())
        pos = max(pos, cursor)
    return out


def paragraph_citations(paper_sha: str, paragraph_index: int, text: str) -> list[dict]:
    """Rows of ``CITATIONS_SCHEMA`` for one body paragraph: one per figure label, panels merged."""
    rows: dict[str, dict] = {}
    for mention in find_figure_mentions(text):
        row = rows.setdefault(
            mention.figure_label,
            {
                "paper_sha": paper_sha,
                "paragraph_index": paragraph_index,
                "figure_label": mention.figure_label,
                "panel_labels": [],
                "mention": mention.mention,
            },
        )
        row["panel_labels"].extend(p for p in mention.panel_labels if p not in row["panel_labels"])
        if mention.mention not in row["mention"].split("; "):
            row["mention"] += "; " + mention.mention
    return list(rows.values())
