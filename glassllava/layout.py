"""Optional layout-model backend for the figures stage, through layoutparser.

The default backend (``glassllava.regions``) needs no weights. Users who have a layoutparser
model installed (Detectron2/EfficientDet/PaddleDetection backends with local weights) can set
``figures.layout_backend: layoutparser`` with ``layoutparser_config`` and
``layoutparser_weights``: the model proposes Figure boxes on rendered pages, and each of our
caption blocks (column-aware, from the text layer) is paired with the nearest proposed figure
above, below or beside it. Captions stay text-layer based because models see no labels.

Any object with ``detect(image) -> layoutparser.Layout`` works as a model, so the pairing can
be exercised without weights.
"""

from __future__ import annotations

import logging

import numpy as np
import pypdfium2 as pdfium

from glassllava.pagegraphics import Box, box_gap, box_iou
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
        left, _, _, top = page.get_cropbox()
        dy = top - page.get_height()
        image = np.asarray(page.render(scale=scale, draw_annots=False).to_pil().convert("RGB"))
        layout = model.detect(image)
        boxes: list[Box] = []
        for block in layout:
            if str(getattr(block, "type", "")).lower() not in FIGURE_TYPES:
                continue
            x0, y0, x1, y1 = block.coordinates
            boxes.append((x0 / scale + left, y0 / scale - dy, x1 / scale + left, y1 / scale - dy))
        taken: set[int] = set()
        for cap in captions:
            best = None
            for i, b in enumerate(boxes):
                if i in taken or box_iou(b, cap.bbox) > 0.5:
                    continue
                d = box_gap(b, cap.bbox)
                if d < 60 and (best is None or d < best[0]):
                    best = (d, i)
            if best is None:
                regions.append(FigureRegion(cap.label or "", pt.page, cap.text, cap.bbox, None, "none"))
                continue
            taken.add(best[1])
            b = boxes[best[1]]
            position = "below" if cap.bbox[1] >= b[3] - 2 else "above" if cap.bbox[3] <= b[1] + 2 else "side"
            regions.append(FigureRegion(cap.label or "", pt.page, cap.text, cap.bbox, b, position, [Panel(b)], 1.0 - best[0] / 60))
    return _dedupe(regions)


def regions_as_layout(regions: list[FigureRegion]):
    """The regions of one page as a ``layoutparser.Layout`` (for ``lp.draw_box`` overlays)."""
    import layoutparser as lp

    blocks = []
    for r in regions:
        blocks.append(lp.TextBlock(lp.Rectangle(*r.caption_box), text=r.caption, type="Caption"))
        if r.box is not None:
            blocks.append(lp.TextBlock(lp.Rectangle(*r.box), text=f"Figure {r.label}", type="Figure"))
    return lp.Layout(blocks)
