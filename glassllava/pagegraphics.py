"""The visible graphics of a PDF page: raster images and vector paths, clipped and grouped.

pypdfium2 gives every page object with its bounds. A path's bounds are intersected with its
clip path (plots often draw curves far past the axes and clip them), invisible white fills
and page-sized frames are dropped, and Form XObjects that wrap most of the page are opened
so their contents count one by one. Boxes use pdfplumber's convention: x as in the PDF,
``top = MediaBox height - y`` (``page_frame``), clipped to the visible page (the CropBox).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

Box = tuple[float, float, float, float]  # x0, top, x1, bottom


@dataclass(frozen=True)
class Graphic:
    kind: str  # image | path | form
    box: Box

    @property
    def area(self) -> float:
        return max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0)


@dataclass(frozen=True)
class PageFrame:
    """The top-left frame every box of a page is in, pdfplumber's: x as in PDF user space,
    ``top = height - y`` with ``height`` the MediaBox height; ``visible`` is the CropBox (what a
    viewer or renderer shows) in that frame. The two differ where a PDF crops its MediaBox."""

    height: float
    visible: Box

    def top(self, y: float) -> float:
        return self.height - y


def page_frame(page: pdfium.PdfPage) -> PageFrame:
    mx0, my0, mx1, my1 = page.get_mediabox()
    cx0, cy0, cx1, cy1 = page.get_cropbox()
    height = float(my1 - my0)
    return PageFrame(height, (float(cx0), height - float(cy1), float(cx1), height - float(cy0)))


def clip_to(box: Box, bounds: Box) -> Box | None:
    """``box`` cut to ``bounds``; None when it lies outside (a rule of zero height inside stays)."""
    x0, t, x1, b = max(box[0], bounds[0]), max(box[1], bounds[1]), min(box[2], bounds[2]), min(box[3], bounds[3])
    return (x0, t, x1, b) if x1 >= x0 and b >= t and (x1 > x0 or b > t) else None


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
    frame = page_frame(page)
    crop = page.get_cropbox()
    page_area = page.get_width() * page.get_height()
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
                # a form's declared box may be far larger than what it draws: use its contents'
                inner = []
                for child in _form_children(obj):
                    try:
                        b = child.get_bounds()
                    except pdfium.PdfiumError:
                        continue
                    if b[2] > crop[0] and b[0] < crop[2] and b[3] > crop[1] and b[1] < crop[3]:
                        inner.append(b)  # (a stray mark off the page draws nothing)
                if not inner:
                    continue
                left, bottom = max(left, min(b[0] for b in inner)), max(bottom, min(b[1] for b in inner))
                right, top = min(right, max(b[2] for b in inner)), min(top, max(b[3] for b in inner))
            elif t not in (pdfium_c.FPDF_PAGEOBJ_IMAGE, pdfium_c.FPDF_PAGEOBJ_PATH):
                continue
            if t == pdfium_c.FPDF_PAGEOBJ_PATH and (right - left) * (top - bottom) > 0.01 * page_area:
                # pdfium's bounds of a path grow with its line width: a lone point stroked
                # 700 pt wide "covers" half the page and paints nothing there
                painted = _painted_bounds(obj)
                if painted is None:
                    continue
                left, bottom = max(left, painted[0]), max(bottom, painted[1])
                right, top = min(right, painted[2]), min(top, painted[3])
            clip = _clip_box(obj) if depth == 0 else None
            if clip is not None:
                left, bottom = max(left, clip[0]), max(bottom, clip[1])
                right, top = min(right, clip[2]), min(top, clip[3])
            if right - left < 0.5 and top - bottom < 0.5:
                continue
            if t == pdfium_c.FPDF_PAGEOBJ_PATH and _invisible_fill(obj):
                continue
            box = clip_to((float(left), frame.top(top), float(right), frame.top(bottom)), frame.visible)
            if box is None:
                continue  # off the visible page
            if box_area(box) > 0.85 * page_area:
                continue  # page background or frame
            kind = {pdfium_c.FPDF_PAGEOBJ_IMAGE: "image", pdfium_c.FPDF_PAGEOBJ_FORM: "form"}.get(t, "path")
            out.append(Graphic(kind, box))

    visit(page.get_objects(max_depth=0), 0)
    return out


def _painted_bounds(obj) -> tuple[float, float, float, float] | None:
    """Bounds of what a path can paint, in page space: the box of its points (Bezier control
    points included, so it holds every curve) plus half the line width, capped at 2 pt. None
    for a path whose points all coincide (a dot)."""
    n = pdfium_c.FPDFPath_CountSegments(obj.raw)
    if n <= 0:
        return None
    m = obj.get_matrix()
    x, y = ctypes.c_float(), ctypes.c_float()
    xs, ys = [], []
    for i in range(n):
        seg = pdfium_c.FPDFPath_GetPathSegment(obj.raw, i)
        if seg and pdfium_c.FPDFPathSegment_GetPoint(seg, ctypes.byref(x), ctypes.byref(y)):
            px, py = m.on_point(x.value, y.value)
            xs.append(px)
            ys.append(py)
    if not xs or (max(xs) - min(xs) < 0.5 and max(ys) - min(ys) < 0.5):
        return None
    width = ctypes.c_float(0.0)
    pdfium_c.FPDFPageObj_GetStrokeWidth(obj.raw, ctypes.byref(width))
    pad = min(max(width.value, 0.0) / 2, 2.0)
    return (min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad)


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


def embedded_image(page: pdfium.PdfPage, box: Box, cover: float = 0.7):
    """The one raster image a figure box is made of, in its own pixels and oriented as drawn,
    with its box in the page frame: ``(PIL image, box)``, or None when no upright image fills
    ``cover`` of the box (the rest: the figure's text) from inside it. Panels found in these
    pixels do not depend on any render resolution."""
    frame = page_frame(page)
    best = None
    for obj in page.get_objects(max_depth=0):
        if obj.type != pdfium_c.FPDF_PAGEOBJ_IMAGE:
            continue
        try:
            left, bottom, right, top = obj.get_bounds()
            m = obj.get_matrix()
        except pdfium.PdfiumError:
            continue
        if abs(m.b) > 1e-3 or abs(m.c) > 1e-3:
            continue  # rotated or skewed
        ibox = (float(left), frame.top(top), float(right), frame.top(bottom))
        inter = box_intersection(ibox, box)
        if inter is None or box_area(inter) < cover * box_area(box) or box_area(inter) < 0.9 * box_area(ibox):
            continue
        if best is None or box_area(inter) > best[2]:
            best = (obj, ibox, box_area(inter), m)
    if best is None:
        return None
    obj, ibox, _, m = best
    try:
        image = obj.get_bitmap(render=False).to_pil().convert("RGB")
    except (pdfium.PdfiumError, ValueError, OSError):
        return None
    if m.a < 0:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if m.d < 0:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return image, ibox
