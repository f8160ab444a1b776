"""The visible graphics of a PDF page: raster images and vector paths, clipped and grouped.

pypdfium2 gives every page object with its bounds. A path's bounds are intersected with its
clip path (plots often draw curves far past the axes and clip them), invisible white fills
and page-sized frames are dropped, and Form XObjects that wrap most of the page are opened
so their contents count one by one. Boxes use pdfplumber's convention: x as in the PDF,
``top = page height - y``.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

Box = tuple[float, float, float, float]  # x0, top, x1, bottom


@dataclass(frozen=True)
class Graphic:
    kind: str  # image | path | form
    box: Box

    @property
    def area(self) -> float:
        return max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0)


def box_union(boxes) -> Box:
    boxes = list(boxes)
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def box_area(b: Box) -> float:
    return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)


def box_intersection(a: Box, b: Box) -> Box | None:
    x0, t, x1, bt = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    if x1 <= x0 or bt <= t:
        return None
    return (x0, t, x1, bt)


def box_iou(a: Box, b: Box) -> float:
    inter = box_intersection(a, b)
    if inter is None:
        return 0.0
    i = box_area(inter)
    return i / (box_area(a) + box_area(b) - i)


def box_gap(a: Box, b: Box) -> float:
    """Distance between two boxes (0 when they touch or overlap)."""
    dx = max(b[0] - a[2], a[0] - b[2], 0.0)
    dy = max(b[1] - a[3], a[1] - b[3], 0.0)
    return (dx * dx + dy * dy) ** 0.5


def _clip_box(obj) -> tuple[float, float, float, float] | None:
    clip = pdfium_c.FPDFPageObj_GetClipPath(obj.raw)
    if not clip:
        return None
    n = pdfium_c.FPDFClipPath_CountPaths(clip)
    xs: list[float] = []
    ys: list[float] = []
    x, y = ctypes.c_float(), ctypes.c_float()
    for k in range(max(n, 0)):
        for s in range(pdfium_c.FPDFClipPath_CountPathSegments(clip, k)):
            seg = pdfium_c.FPDFClipPath_GetPathSegment(clip, k, s)
            if seg and pdfium_c.FPDFPathSegment_GetPoint(seg, ctypes.byref(x), ctypes.byref(y)):
                xs.append(x.value)
                ys.append(y.value)
    if not xs:
        return None
    return (min(xs), min(ys), max(xs), max(ys))  # PDF space: left, bottom, right, top


def _invisible_fill(obj) -> bool:
    """A filled, unstroked path painted white (or fully transparent) cannot be seen on paper."""
    fill, stroke = ctypes.c_int(), ctypes.c_int()
    if not pdfium_c.FPDFPath_GetDrawMode(obj.raw, ctypes.byref(fill), ctypes.byref(stroke)):
        return False
    if stroke.value:
        return False
    if not fill.value:
        return True  # neither filled nor stroked: a clipping or construction path
    r, g, b, a = (ctypes.c_uint() for _ in range(4))
    if not pdfium_c.FPDFPageObj_GetFillColor(obj.raw, *(ctypes.byref(v) for v in (r, g, b, a))):
        return False
    return a.value == 0 or (r.value >= 250 and g.value >= 250 and b.value >= 250)


def page_graphics(page: pdfium.PdfPage) -> list[Graphic]:
    """Visible images and vector paths of a page, clipped, in top-left page coordinates."""
    width, height = page.get_width(), page.get_height()
    page_area = width * height
    out: list[Graphic] = []

    def visit(objects, depth: int) -> None:
        for obj in objects:
            t = obj.type
            try:
                left, bottom, right, top = obj.get_bounds()
            except pdfium.PdfiumError:
                continue
            if t == pdfium_c.FPDF_PAGEOBJ_FORM:
                # A form drawn as one figure (a LaTeX-included plot) counts as one graphic; a form
                # that wraps most of the page (some producers wrap everything) is opened.
                if depth == 0 and (right - left) * (top - bottom) > 0.5 * page_area:
                    visit(_form_children(obj), depth + 1)
                    continue
            elif t not in (pdfium_c.FPDF_PAGEOBJ_IMAGE, pdfium_c.FPDF_PAGEOBJ_PATH):
                continue
            clip = _clip_box(obj) if depth == 0 else None
            if clip is not None:
                left, bottom = max(left, clip[0]), max(bottom, clip[1])
                right, top = min(right, clip[2]), min(top, clip[3])
            if right - left < 0.5 and top - bottom < 0.5:
                continue
            if right <= 0 or left >= width or top <= 0 or bottom >= height:
                continue
            if t == pdfium_c.FPDF_PAGEOBJ_PATH and _invisible_fill(obj):
                continue
            box = (float(left), float(height - top), float(right), float(height - bottom))
            if box_area(box) > 0.85 * page_area:
                continue  # page background or frame
            kind = {pdfium_c.FPDF_PAGEOBJ_IMAGE: "image", pdfium_c.FPDF_PAGEOBJ_FORM: "form"}.get(t, "path")
            out.append(Graphic(kind, box))

    visit(page.get_objects(max_depth=0), 0)
    return out


def _form_children(form_obj):
    """Children of a Form XObject with their bounds mapped to page space by pdfium."""
    n = pdfium_c.FPDFFormObj_CountObjects(form_obj.raw)
    for i in range(max(n, 0)):
        raw = pdfium_c.FPDFFormObj_GetObject(form_obj.raw, i)
        if raw:
            yield _FormChild(raw, form_obj)


class _FormChild:
    """Minimal PdfObject stand-in for an object inside a form, with page-space bounds."""

    def __init__(self, raw, parent) -> None:
        self.raw = raw
        self.parent = parent
        self.type = pdfium_c.FPDFPageObj_GetType(raw)

    def get_bounds(self):
        left, bottom, right, top = (ctypes.c_float() for _ in range(4))
        if not pdfium_c.FPDFPageObj_GetBounds(self.raw, *(ctypes.byref(v) for v in (left, bottom, right, top))):
            raise pdfium.PdfiumError("no bounds")
        box = (left.value, bottom.value, right.value, top.value)
        m = self.parent.get_matrix()
        pts = [m.on_point(box[0], box[1]), m.on_point(box[2], box[3]), m.on_point(box[0], box[3]), m.on_point(box[2], box[1])]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return (min(xs), min(ys), max(xs), max(ys))
