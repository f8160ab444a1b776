"""Figure regions: pair each caption of a paper with the graphics it describes.

The default layout backend of the figures stage: caption-anchored region proposal in the
manner of pdffigures2, with no model weights: captions come from column-aware text lines
(``pdflines``); graphics (raster images, clipped vector paths) are grouped into clusters;
each caption claims the clusters in the free space above, below or beside it, bounded by
body text and other captions. A layoutparser layout model can replace the proposal step
(``glassllava.layout``).
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from dataclasses import dataclass, field

import numpy as np
import pypdfium2 as pdfium
from PIL import Image

from glassllava.pagegraphics import Box, Graphic, box_area, box_gap, box_intersection, box_union, page_graphics
from glassllava.pdflines import Block, Line, PageText, body_font_size, extract_pages

log = logging.getLogger(__name__)

_NUMBERED_HEADING_RE = re.compile(r"^(?:\d+(?:\.\d+)*\.?|[IVX]+\.|[A-Z]\.)\s+\S")

_PANEL_LABEL_RE = re.compile(r"^\(?([a-hA-H])\)?[.:]?$")
_CAPTION_PANEL_RE = re.compile(r"\(([a-h])\)|\b([a-h])\)")


@dataclass
class Panel:
    box: Box
    label: str | None = None


@dataclass
class FigureRegion:
    """A captioned figure found on one page."""

    label: str
    page: int
    caption: str
    caption_box: Box
    box: Box | None  # None: caption without a graphic region
    caption_position: str  # below | above | side | none  (where the caption sits relative to the figure)
    panels: list[Panel] = field(default_factory=list)
    score: float = 0.0


# ---- text roles -----------------------------------------------------------------------


def _is_body_block(b: Block, body_size: float, span_width: float) -> bool:
    """Running text that a figure region must not cross."""
    if b.kind in ("heading", "caption", "table_caption"):
        return True
    width = b.bbox[2] - b.bbox[0]
    n_words = len(b.text.split())
    body_font = abs(b.size - body_size) <= 1.3
    if len(b.lines) >= 2 and body_font and width >= 0.5 * span_width and n_words >= 12:
        return True
    # wrapped prose in smaller type (a reference list, footnotes) is no figure's text either
    if len(b.lines) >= 2 and abs(b.size - body_size) <= 2.5 and width >= 0.7 * span_width and n_words >= 12:
        return True
    return len(b.lines) == 1 and body_font and width >= 0.75 * span_width and n_words >= 8


def _column_span(page: PageText, column: int) -> tuple[float, float]:
    xs = [ln for ln in page.lines]
    left = min((ln.x0 for ln in xs), default=0.0)
    right = max((ln.x1 for ln in xs), default=page.width)
    if page.gutter is None or column == 0:
        return (min(left, 0.08 * page.width), max(right, 0.92 * page.width))
    # the gutter band is measured from rows with a gap there: a column may reach into it
    mid = (page.gutter[0] + page.gutter[1]) / 2
    if column == 1:
        return (min(left, 0.08 * page.width), max(page.gutter[0], mid - 1))
    return (min(page.gutter[1], mid + 1), max(right, 0.92 * page.width))


# ---- clustering ---------------------------------------------------------------------


def _cluster(boxes: list[Box], gap: float) -> list[Box]:
    """Union boxes that overlap or lie within ``gap`` of each other, until stable."""
    clusters = [list(b) for b in boxes]
    changed = True
    while changed:
        changed = False
        out: list[list[float]] = []
        for b in clusters:
            for c in out:
                if box_gap(tuple(b), tuple(c)) <= gap:
                    c[0], c[1], c[2], c[3] = min(c[0], b[0]), min(c[1], b[1]), max(c[2], b[2]), max(c[3], b[3])
                    changed = True
                    break
            else:
                out.append(list(b))
        clusters = out
    return [tuple(c) for c in clusters]


# ---- region proposal ----------------------------------------------------------------


@dataclass
class _PageContext:
    page: PageText
    graphics: list[Graphic]
    clusters: list[Box]
    body: list[Box]  # boxes of running text, headings and captions
    body_lines: list[Box]  # the lines of those blocks (text wraps around a side figure line by line)
    figure_text: list[Line]  # short lines that may belong to a figure
    captions: list[Block]
    min_size: float


def _page_context(page: PageText, graphics: list[Graphic], body_size: float, min_size: float) -> _PageContext:
    captions = [b for b in page.blocks if b.kind == "caption"]
    # tiny marks (bullets, rules under headings) are not figures; thin long lines are kept
    # only as part of a cluster with something substantial
    marks = [g.box for g in graphics]
    clusters = [c for c in _cluster(marks, gap=4.0) if (c[2] - c[0]) >= min_size * 0.5 and (c[3] - c[1]) >= min_size * 0.5]
    clusters = [c for c in clusters if not _page_furniture(c, page.visible)]
    body_blocks = []
    for b in page.blocks:
        span = _column_span(page, b.column)
        if b.kind == "caption" or (
            _is_body_block(b, body_size, span[1] - span[0])
            # text drawn inside a graphic (a diagram's labels) is part of the figure
            and not any(_inside(b.bbox, c, 0.85) for c in clusters)
            and not _figure_title(page, b, clusters)
        ):
            body_blocks.append(b)
    body = [b.bbox for b in body_blocks]
    if len(page.lines) >= 10:
        # graphics wholly in a side margin, beyond every line of text (a publisher's logo
        # beside a rotated copyright line), are page furniture
        left, right = min(ln.x0 for ln in page.lines), max(ln.x1 for ln in page.lines)
        clusters = [c for c in clusters if left - 2 <= c[2] and c[0] <= right + 2]
    body_line_ids = {id(ln) for b in body_blocks for ln in b.lines}
    figure_text = [ln for ln in page.lines if id(ln) not in body_line_ids] + list(page.rotated)
    # graphics that sit inside a running-text block are inline symbols, not figures
    clusters = [c for c in clusters if not any(_inside(c, bb, 0.8) for bb in body)]
    body_lines = [ln.bbox for b in body_blocks for ln in b.lines]
    return _PageContext(page, graphics, clusters, body, body_lines, figure_text, captions, min_size)


def _figure_title(page: PageText, b: Block, clusters: list[Box]) -> bool:
    """A plot's title or axis title set larger than the body (so it reads as a heading): one
    short unnumbered line right above or below a graphic, within its width, and not flush with
    the column's left edge where the paper's real headings start."""
    if b.kind != "heading" or len(b.lines) != 1 or _NUMBERED_HEADING_RE.match(b.text):
        return False
    prose = [blk.bbox[0] for blk in page.blocks if blk.kind == "paragraph" and blk.column == b.column and len(blk.lines) >= 2]
    if prose and abs(b.bbox[0] - min(prose)) <= 3:
        return False
    x0, top, x1, bottom = b.bbox
    reach = 1.5 * b.size
    return any(
        x0 >= c[0] - 2 and x1 <= c[2] + 2 and (-reach <= c[1] - bottom <= reach or -reach <= top - c[3] <= reach)
        for c in clusters
    )


def _page_furniture(c: Box, page: Box) -> bool:
    """A journal's banner, header rule or footer logo: graphics wholly inside the top or bottom
    7.5 % of the page that bleed off its edge or run across most of its width."""
    height, width = page[3] - page[1], page[2] - page[0]
    in_margin = c[3] <= page[1] + 0.075 * height or c[1] >= page[3] - 0.075 * height
    at_edge = c[1] <= page[1] + 3 or c[3] >= page[3] - 3 or c[0] <= page[0] + 3 or c[2] >= page[2] - 3
    return in_margin and (at_edge or c[2] - c[0] >= 0.8 * width)


def _inside(a: Box, b: Box, frac: float) -> bool:
    inter = box_intersection(a, b)
    return inter is not None and box_area(inter) >= frac * max(box_area(a), 1e-6)


def _free_band(ctx: _PageContext, cap: Block, direction: str, span: tuple[float, float]) -> Box | None:
    """The free region next to a caption in one direction, bounded by body text and captions."""
    x0, x1 = span
    cb = cap.bbox
    H = ctx.page.height
    blockers = [b for b in ctx.body if b != cb] + [c.bbox for c in ctx.captions if c is not cap]
    if direction == "above":
        limit = 0.0
        for b in blockers:
            if b[3] <= cb[1] + 1 and b[2] > x0 + 2 and b[0] < x1 - 2:
                limit = max(limit, b[3])
        return (x0, limit, x1, cb[1]) if cb[1] - limit > 4 else None
    if direction == "below":
        limit = H
        for b in blockers:
            if b[1] >= cb[3] - 1 and b[2] > x0 + 2 and b[0] < x1 - 2:
                limit = min(limit, b[1])
        return (x0, cb[3], x1, limit) if limit - cb[3] > 4 else None
    # side: the band left or right of the caption over the page height between blockers
    if direction in ("left", "right"):
        if direction == "left":
            bx0, bx1 = 0.0, cb[0]
        else:
            bx0, bx1 = cb[2], ctx.page.width
        if bx1 - bx0 < 40:
            return None
        # running text level with the caption closes the band sideways (text that only
        # overlaps a tall caption's first or last lines is above or below the figure)
        def level(b: Box) -> bool:
            overlap = min(b[3], cb[3]) - max(b[1], cb[1])
            return overlap > 1 and overlap >= 0.5 * min(b[3] - b[1], cb[3] - cb[1])

        for b in blockers:
            if b[2] > bx0 + 2 and b[0] < bx1 - 2 and level(b):
                if direction == "left":
                    bx0 = max(bx0, b[2])
                else:
                    bx1 = min(bx1, b[0])
        if bx1 - bx0 < 40:
            return None
        top, bottom = 0.0, H
        stacked = [c.bbox for c in ctx.captions if c is not cap and c.bbox[2] > cb[0] and c.bbox[0] < cb[2]]
        # running text closes the band above or below where one of its lines reaches into it
        # (a paragraph that wraps around the figure and runs on under it closes it there)
        caption_boxes = {c.bbox for c in ctx.captions}
        line_blockers = [ln for ln in ctx.body_lines if not any(_inside(ln, c, 0.9) for c in caption_boxes)]
        for b in line_blockers + [c.bbox for c in ctx.captions if c is not cap]:
            # side captions stacked one above another split the page between their figures
            # (text that reaches a few points past the caption's edge runs beside the figure)
            if min(b[2], bx1) - max(b[0], bx0) > 6 or b in stacked:
                if b[3] <= cb[1] + 1 or (b[1] + b[3] < cb[1] + cb[3] and not level(b)):
                    top = max(top, b[3])
                elif b[1] >= cb[3] - 1 or not level(b):
                    bottom = min(bottom, b[1])
        return (bx0, top, bx1, bottom)
    raise ValueError(direction)


def _closing_blockers(ctx: _PageContext, cap: Block, band: Box, direction: str) -> list[Box]:
    """Text boxes that close ``band`` on its far side(s): a cluster level with one of them and
    reaching past the band's edge sits beside that text, so it is not this caption's figure."""
    blockers = [b for b in ctx.body if b != cap.bbox] + [c.bbox for c in ctx.captions if c is not cap]
    above = direction in ("above", "left", "right")
    below = direction in ("below", "left", "right")
    return [b for b in blockers if (above and abs(b[3] - band[1]) < 0.5) or (below and abs(b[1] - band[3]) < 0.5)]


def _claim(ctx: _PageContext, band: Box, cap: Block | None = None, direction: str | None = None) -> list[int]:
    """Indices of clusters that lie mostly inside ``band`` (and, given the caption and the
    direction, on the far side of the caption and not beside the text that closes the band)."""
    closing = _closing_blockers(ctx, cap, band, direction) if cap is not None else []
    cb = cap.bbox if cap is not None else None
    out = []
    for i, c in enumerate(ctx.clusters):
        inter = box_intersection(c, band)
        if inter is None:
            continue
        if not (
            box_area(inter) >= 0.5 * box_area(c)
            or (
                # a wide figure under a one-column caption: the cluster reaches out of the band
                inter[3] - inter[1] >= 0.8 * (c[3] - c[1]) and inter[2] - inter[0] >= 0.3 * (c[2] - c[0])
            )
        ):
            continue
        if cb is not None:
            quarter = 0.25 * (cb[2] - cb[0])
            beyond = {
                "above": c[3] <= cb[3] + 2,
                "below": c[1] >= cb[1] - 2,
                # a figure beside the caption reaches under it by a quarter of its width at most
                "left": c[2] <= cb[0] + quarter,
                "right": c[0] >= cb[2] - quarter,
            }[direction]
            # level with the caption and beside it: a side figure, not one above or below
            level = min(c[3], cb[3]) - max(c[1], cb[1]) > 0.5 * (cb[3] - cb[1])
            beside = c[2] <= cb[0] + 2 or c[0] >= cb[2] - 2
            if not beyond or (direction in ("above", "below") and level and beside):
                continue
            # (a cluster drawn across that text itself is rather a path that runs on unseen
            # under it, as before)
            crosses = (c[1] < band[1] - 6 or c[3] > band[3] + 6) and any(
                min(c[3], b[3]) - max(c[1], b[1]) > 2 and box_intersection(c, b) is None for b in closing
            )
            if crosses:
                continue
        out.append(i)
    return out


def _nearest_run(ctx: _PageContext, idx: list[int], cap: Block, direction: str) -> list[int]:
    """The clusters that form one contiguous figure next to the caption, nearest first.

    Walks away from the caption and stops at a whitespace gap much larger than the gaps
    inside the figure (two figures stacked in one free band are then told apart).
    """
    if not idx:
        return []
    cb = cap.bbox
    cx = (cb[0] + cb[2]) / 2
    cy = (cb[1] + cb[3]) / 2

    def across(i: int) -> float:  # distance across the walking direction, to break ties
        c = ctx.clusters[i]
        if direction in ("above", "below"):
            return max(c[0] - cx, cx - c[2], 0.0)
        return max(c[1] - cy, cy - c[3], 0.0)

    if direction == "above":
        order = sorted(idx, key=lambda i: (-ctx.clusters[i][3], across(i)))
        dist = lambda b: cb[1] - b[3]  # noqa: E731
    elif direction == "below":
        order = sorted(idx, key=lambda i: (ctx.clusters[i][1], across(i)))
        dist = lambda b: b[1] - cb[3]  # noqa: E731
    elif direction == "left":
        order = sorted(idx, key=lambda i: (-ctx.clusters[i][2], across(i)))
        dist = lambda b: cb[0] - b[2]  # noqa: E731
    else:
        order = sorted(idx, key=lambda i: (ctx.clusters[i][0], across(i)))
        dist = lambda b: b[0] - cb[2]  # noqa: E731
    first = ctx.clusters[order[0]]
    if dist(first) > 0.45 * ctx.page.height:
        return []
    keep = [order[0]]
    union = first
    for i in order[1:]:
        c = ctx.clusters[i]
        if box_gap(union, c) <= 40 or _overlap_1d(union, c, direction) or _bridged(ctx, union, c, direction):
            keep.append(i)
            union = box_union([union, c])
    return keep


def _bridged(ctx: _PageContext, a: Box, b: Box, direction: str, max_blank: float = 24.0) -> bool:
    """Whether the space between two clusters along the walking direction is filled with the
    figure's own text (tick labels, axis and panel titles of stacked plots), leaving no blank
    run longer than ``max_blank``."""
    vertical = direction in ("above", "below")
    lo, hi = (min(a[3], b[3]), max(a[1], b[1])) if vertical else (min(a[2], b[2]), max(a[0], b[0]))
    if hi - lo > 120:
        return False
    spans = []
    for ln in ctx.figure_text:
        lb = ln.bbox
        across = (min(lb[2], a[2], b[2]) - max(lb[0], a[0], b[0])) if vertical else (min(lb[3], a[3], b[3]) - max(lb[1], a[1], b[1]))
        if across > 0:
            spans.append((lb[1], lb[3]) if vertical else (lb[0], lb[2]))
    pos = lo
    for s0, s1 in sorted(spans):
        if s1 <= pos:
            continue
        if s0 > hi:
            break
        if s0 - pos > max_blank:
            return False
        pos = max(pos, s1)
    return hi - pos <= max_blank


def _overlap_1d(a: Box, b: Box, direction: str) -> bool:
    """b sits beside a (not beyond it) along the walking direction."""
    if direction in ("above", "below"):
        return min(a[3], b[3]) - max(a[1], b[1]) > 0.3 * min(a[3] - a[1], b[3] - b[1])
    return min(a[2], b[2]) - max(a[0], b[0]) > 0.3 * min(a[2] - a[0], b[2] - b[0])


def _attach_text(ctx: _PageContext, box: Box, band: Box, cap: Block) -> Box:
    """Grow a figure box by its own text (axis labels and titles, legends, panel letters).

    A figure's text lies level with its graphics, across or along: a line below them that
    starts well left of them (the next text on the page) is not the figure's."""
    g = box
    rotated = {id(ln) for ln in ctx.page.rotated}
    changed = True
    while changed:
        changed = False
        for ln in ctx.figure_text:
            lb = ln.bbox
            if _inside(lb, box, 0.99) or not _inside(lb, band, 0.6):
                continue
            tol = max(ln.size, 6.0)
            along_x = lb[0] >= g[0] - tol and lb[2] <= g[2] + tol
            along_y = lb[1] >= g[1] - tol and lb[3] <= g[3] + tol
            if not (along_x or along_y):
                continue
            if any(_inside(lb, c.bbox, 0.5) for c in ctx.captions):
                continue
            # a rotated axis title may stand off the axis by the width of the tick labels
            reach = 3.0 * ln.size if id(ln) in rotated else max(1.2 * ln.size, 8.0)
            if box_gap(lb, box) <= reach:
                box = box_union([box, lb])
                changed = True
    return box


@dataclass
class _Candidate:
    cap: Block
    direction: str
    band: Box
    idx: list[int]  # clusters, nearest first
    score: float


def _score(ctx: _PageContext, cap: Block, direction: str, box: Box) -> float:
    cb = cap.bbox
    gap = {"above": cb[1] - box[3], "below": box[1] - cb[3], "left": cb[0] - box[2], "right": box[0] - cb[2]}[direction]
    # prefer a figure above its caption, then below, then beside; nearer is better
    prior = {"above": 1.0, "below": 0.5, "left": 0.45, "right": 0.4}[direction]
    return prior * (1.0 / (1.0 + max(gap, 0.0) / 60.0)) * min(1.0, box_area(box) / 5000.0) ** 0.25


def _candidates(ctx: _PageContext) -> list[_Candidate]:
    """Every caption's figure candidates: the run of clusters in each direction, and its
    shorter prefixes that stop before a cluster another caption's run also reaches."""
    runs = []
    for cap in ctx.captions:
        span = _column_span(ctx.page, cap.column)
        for d in ("above", "below", "left", "right"):
            band = _free_band(ctx, cap, d, span)
            if band is None:
                continue
            idx = _nearest_run(ctx, _claim(ctx, band, cap, d), cap, d)
            if not idx:
                continue
            box = box_union(ctx.clusters[i] for i in idx)
            # a side figure must face the caption vertically
            facing = min(box[3], cap.bbox[3]) - max(box[1], cap.bbox[1]) >= 0.3 * (cap.bbox[3] - cap.bbox[1])
            if d in ("left", "right") and not facing:
                continue
            runs.append((cap, d, band, idx))
    reach: dict[int, set[int]] = {}
    for cap, _, _, idx in runs:
        for i in idx:
            reach.setdefault(i, set()).add(id(cap))
    out = []
    for cap, d, band, idx in runs:
        cuts = {len(idx)} | {k for k in range(1, len(idx)) if len(reach[idx[k]]) > 1}
        for k in sorted(cuts):
            sub = idx[:k]
            out.append(_Candidate(cap, d, band, sub, _score(ctx, cap, d, box_union(ctx.clusters[i] for i in sub))))
    return out


def _assign(ctx: _PageContext, candidates: list[_Candidate], max_nodes: int = 20000) -> dict[int, _Candidate]:
    """Choose at most one candidate per caption, no cluster used twice and no two figure boxes
    overlapping: as many captions with a
    figure as possible, then the best total score, then as much of the page's graphics covered
    (a run rather than its prefix when nothing else wants the rest), then the clusters nearest
    their captions."""
    by_cap: dict[int, list[_Candidate]] = {}
    for c in candidates:
        by_cap.setdefault(id(c.cap), []).append(c)
    caps = sorted(by_cap, key=lambda k: len(by_cap[k]))
    for k in caps:
        by_cap[k].sort(key=lambda c: -c.score)
    area = [box_area(c) for c in ctx.clusters]
    best: list = [(-1, -1.0, -1.0, 0.0), {}]
    nodes = 0

    def key(chosen: dict[int, _Candidate]) -> tuple[int, float, float, float]:
        covered = sum(area[i] for c in chosen.values() for i in c.idx)
        # last: each cluster with the nearer caption (a panel row under a wide caption is that
        # caption's, not the figure's further down whose run also reaches it)
        far = sum(box_gap(ctx.clusters[i], c.cap.bbox) for c in chosen.values() for i in c.idx)
        return (len(chosen), round(sum(c.score for c in chosen.values()), 3), round(covered, 1), -round(far, 1))

    def dfs(pos: int, used: set[int], chosen: dict[int, _Candidate]) -> None:
        nonlocal nodes
        nodes += 1
        if len(chosen) + (len(caps) - pos) < best[0][0] or nodes > max_nodes:
            return
        if pos == len(caps):
            k = key(chosen)
            if k > best[0]:
                best[0], best[1] = k, dict(chosen)
            return
        cap_id = caps[pos]
        for c in by_cap[cap_id]:
            if used.isdisjoint(c.idx) and not clashes(c, chosen):
                chosen[cap_id] = c
                dfs(pos + 1, used | set(c.idx), chosen)
                del chosen[cap_id]
        dfs(pos + 1, used, chosen)

    boxes = {id(c): box_union(ctx.clusters[i] for i in c.idx) for c in candidates}

    def clashes(c: _Candidate, chosen: dict[int, _Candidate]) -> bool:
        # figures do not overlap: a run that reaches around another figure is not one figure
        b = boxes[id(c)]
        for o in chosen.values():
            inter = box_intersection(b, boxes[id(o)])
            if inter is not None and box_area(inter) > 0.02 * min(box_area(b), box_area(boxes[id(o)])):
                return True
        return False

    dfs(0, set(), {})
    if nodes > max_nodes:  # too many combinations: greedy, best score first
        chosen, used = {}, set()
        for c in sorted(candidates, key=lambda c: -c.score):
            if id(c.cap) not in chosen and used.isdisjoint(c.idx) and not clashes(c, chosen):
                chosen[id(c.cap)] = c
                used.update(c.idx)
        if key(chosen) > best[0]:
            return chosen
    return best[1]


def propose_regions(ctx: _PageContext) -> list[FigureRegion]:
    """Pair every caption on the page with the graphics it describes."""
    chosen = _assign(ctx, _candidates(ctx))
    out = []
    for cap in ctx.captions:
        c = chosen.get(id(cap))
        if c is None:
            out.append(
                FigureRegion(
                    label=cap.label or "",
                    page=ctx.page.page,
                    caption=cap.text,
                    caption_box=cap.bbox,
                    box=None,
                    caption_position="none",
                )
            )
            continue
        box = _attach_text(ctx, box_union(ctx.clusters[i] for i in c.idx), c.band, cap)
        out.append(
            FigureRegion(
                label=cap.label or "",
                page=ctx.page.page,
                caption=cap.text,
                caption_box=cap.bbox,
                box=box,
                caption_position={"above": "below", "below": "above", "left": "side", "right": "side"}[c.direction],
                panels=[Panel(ctx.clusters[i]) for i in c.idx],
                score=c.score,
            )
        )
    return out


# ---- panels ---------------------------------------------------------------------------


def _panel_letters(ctx: _PageContext, region: FigureRegion) -> list[tuple[str, Box]]:
    """The panel letters printed inside a figure, one per letter: "a", "(b)", "C)" set at least
    as large as the figure's other text (a subscript "e" of V_e is no label) and, where the
    caption names panels, one of those; where it names none, only letters set larger or bolder
    than the figure's text count (the "a", "b" of significance groups over bars are no panels)."""
    box = region.box
    assert box is not None
    inside = [ln for ln in ctx.figure_text if _inside(ln.bbox, box, 0.5)]
    if not inside:
        return []
    typical = statistics.median(ln.size for ln in inside)
    named = set(caption_panel_letters(region.caption))
    best: dict[str, Line] = {}
    for ln in inside:
        m = _PANEL_LABEL_RE.match(ln.text.strip())
        if not m or ln.size < max(0.9 * typical, 4.5):
            continue
        letter = m.group(1).lower()
        if named and letter not in named:
            continue
        if not named and not (ln.size >= 1.15 * typical or ln.bold):
            continue
        cur = best.get(letter)
        if cur is None or (ln.size, -ln.top, -ln.x0) > (cur.size, -cur.top, -cur.x0):
            best[letter] = ln
    return sorted(((k, ln.bbox) for k, ln in best.items()), key=lambda kv: kv[0])


def _panels_from_letters(ctx: _PageContext, region: FigureRegion, letters: list[tuple[str, Box]]) -> list[Panel]:
    """Panels of a figure whose letters are printed: each graphic and each piece of figure text
    belongs to the letter that heads it (of the letters above and left of it, the nearest row,
    then the nearest in that row), so mixed
    raster and vector panels, their axes and tick labels, split as the authors labelled them."""
    box = region.box
    assert box is not None
    parts = [g.box for g in ctx.graphics if _inside(g.box, box, 0.9)]
    parts += [ln.bbox for ln in ctx.figure_text if _inside(ln.bbox, box, 0.5) and not any(ln.bbox == lb for _, lb in letters)]
    members: dict[str, list[Box]] = {k: [lb] for k, lb in letters}
    for part in parts:
        # a point near the part's top-left corner: a plot starts below and right of its letter,
        # while its centre may lie past the next letter (an axis drawn across two panels)
        cx = part[0] + min(0.25 * (part[2] - part[0]), 8.0)
        cy = part[1] + min(0.25 * (part[3] - part[1]), 8.0)
        heads = [(k, lb) for k, lb in letters if lb[0] - 2 <= cx and lb[1] - 1 <= cy]
        if not heads:  # left of or above every letter (a y-axis title): the nearest letter's
            k, _ = min(letters, key=lambda kv: math.hypot(cx - kv[1][0], cy - kv[1][1]))
        else:  # the nearest row of letters above, then the nearest letter to the left in it
            row_top = max(lb[1] for _, lb in heads)
            row = [(k, lb) for k, lb in heads if lb[1] >= row_top - 0.5 * (lb[3] - lb[1])]
            k, _ = max(row, key=lambda kv: kv[1][0])
        # a part that reaches over another letter's corner (a frame or a shared axis drawn
        # across two panels) belongs to neither
        spans = any(
            part[0] + 6 < lb[0] < part[2] - 6 and part[1] - 16 < lb[1] < part[3] - 6 for other, lb in letters if other != k
        )
        if not spans:
            members[k].append(part)
    return [Panel(box_union(members[k]), k) for k, _ in letters]


def _with_own_text(ctx: _PageContext, figure: Box, boxes: list[Box]) -> list[Box]:
    """Each panel grows by the figure text nearest to it (tick labels, axis titles, a legend),
    so a plot panel keeps its axes; text as near to another panel, or far from all, is left."""
    grown = list(boxes)
    for ln in ctx.figure_text:
        lb = ln.bbox
        if not _inside(lb, figure, 0.5) or any(_inside(lb, b, 0.9) for b in boxes):
            continue
        gaps = sorted((box_gap(lb, b), k) for k, b in enumerate(boxes))
        reach = 3.0 * max(ln.size, 4.0)
        if gaps[0][0] <= reach and (len(gaps) == 1 or gaps[1][0] - gaps[0][0] > 0.5 * ln.size):
            k = gaps[0][1]
            grown[k] = box_union([grown[k], lb])
    return grown


def _panel_boxes(ctx: _PageContext, region: FigureRegion) -> list[Panel]:
    """Panels of a figure: where two or more panel letters are printed, the graphics and text
    each letter heads; else its raster images when there are several, else whitespace-separated
    groups of its graphics, labelled from letters drawn beside them."""
    box = region.box
    assert box is not None
    letters = _panel_letters(ctx, region)
    if len(letters) >= 2 and letters[0][0] == "a":
        return _panels_from_letters(ctx, region, letters)
    images = [g.box for g in ctx.graphics if g.kind == "image" and _inside(g.box, box, 0.9)]
    images = [b for b in images if (b[2] - b[0]) >= ctx.min_size and (b[3] - b[1]) >= ctx.min_size]
    # images that touch each other (tiles of one picture) merge
    images = _cluster(images, gap=0.5)
    if len(images) >= 2:
        # and the plots drawn beside them are panels too (two STM images and two line plots)
        drawn = [
            g.box
            for g in ctx.graphics
            if g.kind != "image" and _inside(g.box, box, 0.9) and not any(_inside(g.box, i, 0.5) for i in images)
        ]  # (arrows and outlines drawn over an image are the image's)
        plots = [
            c
            for c in _cluster(drawn, gap=6.0)
            if (c[2] - c[0]) >= ctx.min_size and (c[3] - c[1]) >= ctx.min_size and not any(box_intersection(c, i) for i in images)
        ]
        boxes = images + plots
    else:
        groups = [c for c in _cluster([g.box for g in ctx.graphics if _inside(g.box, box, 0.9)], gap=6.0)]
        groups = [b for b in groups if (b[2] - b[0]) >= ctx.min_size and (b[3] - b[1]) >= ctx.min_size]
        boxes = groups if len(groups) >= 2 else [box]
    if len(boxes) >= 2:
        boxes = _with_own_text(ctx, box, boxes)
    # sort panels in reading order: rows (by top, tolerant), then left to right
    boxes.sort(key=lambda b: (round(b[1] / 20.0), b[0]))
    panels = [Panel(b) for b in boxes]
    for letter, lb in letters:
        cx, cy = (lb[0] + lb[2]) / 2, (lb[1] + lb[3]) / 2
        best = None
        for p in panels:
            # a letter labels the panel it sits in (or just above/left of)
            d = box_gap((cx, cy, cx, cy), p.box)
            if d <= 14 and (best is None or d < best[0]):
                best = (d, p)
        if best is not None and best[1].label is None:
            best[1].label = letter
    if len(panels) == 1 and panels[0].label is not None and len(letters) < 2:
        panels[0].label = None
    return panels


def split_raster_panels(
    image: Image.Image, min_frac: float = 0.12, bright: int = 235, clear: float = 0.998
) -> list[tuple[int, int, int, int]]:
    """Split a composite raster figure into panel pixel boxes at white gutters, recursively
    (rows, then the columns of each row, then the rows of each column ...: an XY cut), so a
    4 x 2 grid gives 8 panels in reading order. A gutter is a pixel row or column of the part
    being cut that is at least ``clear`` bright; a piece thinner than ``min_frac`` of the whole
    figure (a colour bar, a label strip) joins its nearer neighbour instead of being dropped.

    Call it on the picture's own pixels (``pagegraphics.embedded_image``) or on a rendering at
    a fixed resolution: a one-pixel gutter blends away when a page is rendered smaller."""
    g = np.asarray(image.convert("L"))
    h, w = g.shape
    if h < 40 or w < 40:
        return [(0, 0, w, h)]
    light = g > bright
    min_len = (min_frac * h, min_frac * w)  # rows, columns

    def pieces(profile: np.ndarray, min_piece: float) -> list[tuple[int, int]]:
        content = ~profile
        runs, start = [], None
        for i, c in enumerate(content):
            if c and start is None:
                start = i
            elif not c and start is not None:
                runs.append([start, i])
                start = None
        if start is not None:
            runs.append([start, len(content)])
        # thin pieces join the neighbour across the narrower gutter
        changed = True
        while changed and len(runs) > 1:
            changed = False
            for k, (a, b) in enumerate(runs):
                if b - a >= min_piece:
                    continue
                left_gap = a - runs[k - 1][1] if k > 0 else None
                right_gap = runs[k + 1][0] - b if k + 1 < len(runs) else None
                j = k - 1 if right_gap is None or (left_gap is not None and left_gap <= right_gap) else k + 1
                lo, hi = min(runs[j][0], a), max(runs[j][1], b)
                runs[min(j, k)] = [lo, hi]
                del runs[max(j, k)]
                changed = True
                break
        return [(a, b) for a, b in runs]

    def panels_apart(part: np.ndarray, runs: list[tuple[int, int]], axis: int) -> bool:
        """Whether the pieces between gutters are panels: pictures (mostly ink: micrographs,
        photographs, maps), or pieces of about one size (a row of plots). A plot beside its
        legend, or above its axis title, is one panel however white the space between."""
        ink = [1.0 - float((part[a:b] if axis == 0 else part[:, a:b]).mean()) for a, b in runs]
        if min(ink) >= 0.5:
            return True
        sizes = [b - a for a, b in runs]
        return min(sizes) >= 0.6 * max(sizes) and min(ink) >= 0.02

    def cut(x0: int, y0: int, x1: int, y1: int, depth: int, first_axis: int) -> list[tuple[int, int, int, int]]:
        part = light[y0:y1, x0:x1]
        if part.size == 0:
            return []
        for axis in (first_axis, 1 - first_axis):
            # axis 0: gutters are rows (cut top to bottom); axis 1: gutters are columns
            profile = part.mean(axis=1 - axis) >= clear
            runs = pieces(profile, min_len[axis])
            if len(runs) >= 2 and depth < 6 and panels_apart(part, runs, axis):
                out = []
                for a, b in runs:
                    box = (x0, y0 + a, x1, y0 + b) if axis == 0 else (x0 + a, y0, x0 + b, y1)
                    out.extend(cut(*box, depth + 1, 1 - axis))
                return out
            if len(runs) == 1:  # trim the white margin on this axis
                a, b = runs[0]
                x0, y0, x1, y1 = (x0, y0 + a, x1, y0 + b) if axis == 0 else (x0 + a, y0, x0 + b, y1)
                part = light[y0:y1, x0:x1]
        return [(x0, y0, x1, y1)]

    boxes = cut(0, 0, w, h, 0, 0)
    return boxes or [(0, 0, w, h)]


# ---- whole paper ------------------------------------------------------------------------


def extract_figure_regions(
    pdf: pdfium.PdfDocument, *, min_figure_size_pt: float = 36.0, pages: list[PageText] | None = None
) -> list[FigureRegion]:
    """Every captioned figure of a paper with its region, caption and panels (no rendering)."""
    pages = pages if pages is not None else extract_pages(pdf)
    body_size = body_font_size([ln for p in pages for ln in p.lines])
    regions: list[FigureRegion] = []
    for pt in pages:
        if not any(b.kind == "caption" for b in pt.blocks):
            continue
        graphics = page_graphics(pdf[pt.page - 1])
        ctx = _page_context(pt, graphics, body_size, min_figure_size_pt)
        for region in propose_regions(ctx):
            if region.box is not None:
                region.panels = _panel_boxes(ctx, region)
            regions.append(region)
    return _dedupe(regions)


def _dedupe(regions: list[FigureRegion]) -> list[FigureRegion]:
    """One figure per label: a label found twice keeps the caption with a region and more text
    (the other is usually a body sentence that happens to open a line with "Figure 2.")."""
    best: dict[str, FigureRegion] = {}
    for r in regions:
        cur = best.get(r.label)
        key = (r.box is not None, len(r.caption) > 12, r.score, len(r.caption))
        if cur is None or key > (cur.box is not None, len(cur.caption) > 12, cur.score, len(cur.caption)):
            best[r.label] = r
    return sorted(best.values(), key=lambda r: (r.page, r.caption_box[1], r.caption_box[0]))


def caption_panel_letters(caption: str) -> list[str]:
    """Panel letters a caption names in order: "(a) ... (b) ..." -> ["a", "b"]."""
    seen: list[str] = []
    for m in _CAPTION_PANEL_RE.finditer(caption):
        letter = m.group(1) or m.group(2)
        if letter not in seen:
            seen.append(letter)
    return seen


