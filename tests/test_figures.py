"""Figure-caption pairing on small PDFs drawn with reportlab, where every box is known."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen import canvas

from glassllava.figures import extract_paper_figures, split_raster_panels
from glassllava.pagegraphics import box_iou, page_graphics
from glassllava.pdfdoc import open_pdf
from glassllava.regions import caption_panel_letters, extract_figure_regions

W, H = A4
BODY = (
    "The glass was melted at 1450 C for two hours in a platinum crucible and quenched on a steel plate. "
    "Annealing near the transition temperature relieved the stress before the samples were cut and polished. "
)


def _grey(w: int = 300, h: int = 220, seed: int = 0) -> ImageReader:
    rng = np.random.default_rng(seed)
    a = (rng.random((h, w)) * 120 + 60).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    buf.seek(0)
    return ImageReader(buf)


class Page:
    """Draw with top-left coordinates (pdfplumber's convention) and remember the boxes."""

    def __init__(self, c: canvas.Canvas) -> None:
        self.c = c

    def text(self, x: float, top: float, s: str, size: float = 10, font: str = "Times-Roman") -> tuple:
        self.c.setFont(font, size)
        self.c.drawString(x, H - top - size * 0.8, s)
        return (x, top, x + self.c.stringWidth(s, font, size), top + size)

    def paragraph(self, x: float, top: float, width: float, n_lines: int, size: float = 10) -> float:
        words = (BODY * 10).split()
        y = top
        for _ in range(n_lines):
            line = ""
            while words and self.c.stringWidth(line + words[0] + " ", "Times-Roman", size) < width:
                line += words.pop(0) + " "
            self.text(x, y, line.strip(), size)
            y += size * 1.2
        return y

    def image(self, box: tuple, seed: int = 0) -> None:
        x0, t, x1, b = box
        self.c.drawImage(_grey(seed=seed), x0, H - b, x1 - x0, b - t)

    def plot(self, box: tuple, clip: tuple | None = None) -> None:
        """A vector line plot: axes, ticks and a curve (optionally drawn past a clip box)."""
        x0, t, x1, b = box
        c = self.c
        c.setLineWidth(0.8)
        c.line(x0, H - b, x1, H - b)
        c.line(x0, H - b, x0, H - t)
        for i in range(6):
            xx = x0 + i * (x1 - x0) / 5
            c.line(xx, H - b, xx, H - b - 4)
        c.saveState()
        if clip:
            p = c.beginPath()
            p.rect(clip[0], H - clip[3], clip[2] - clip[0], clip[3] - clip[1])
            c.clipPath(p, stroke=0, fill=0)
        path = c.beginPath()
        xs = np.linspace(x0 - (80 if clip else 0), x1 + (80 if clip else 0), 60)
        for i, xx in enumerate(xs):
            yy = (t + b) / 2 + (b - t) * 0.35 * np.sin(i / 5)
            (path.moveTo if i == 0 else path.lineTo)(xx, H - yy)
        c.drawPath(path, stroke=1, fill=0)
        c.restoreState()


def _pdf(tmp_path: Path, draw) -> tuple[Path, dict]:
    path = tmp_path / "paper.pdf"
    c = canvas.Canvas(str(path), pagesize=A4, invariant=1)
    truth: dict = {}
    draw(Page(c), truth)
    c.showPage()
    c.save()
    return path, truth


def _regions(path: Path):
    with open_pdf(path) as pdf:
        return {r.label: r for r in extract_figure_regions(pdf)}


def test_raster_figure_caption_below_in_two_columns(tmp_path):
    def draw(p, truth):
        p.paragraph(50, 60, 230, 30)
        p.paragraph(315, 60, 230, 8)
        truth["1"] = (315, 170, 545, 330)
        p.image(truth["1"])
        p.text(315, 338, "Fig. 1. SEM micrograph of the quenched glass showing a radial crack network.", 8)
        p.paragraph(315, 360, 230, 20)

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["1"]
    assert box_iou(r.box, truth["1"]) > 0.95
    assert r.caption.startswith("Fig. 1. SEM micrograph")
    assert r.caption_position == "below"


def test_vector_plot_with_caption_above_and_clipped_curve(tmp_path):
    def draw(p, truth):
        p.paragraph(60, 60, 470, 6)
        p.text(60, 150, "Figure 2: XRD patterns of the heat-treated samples.", 9)
        truth["2"] = (120, 175, 470, 360)
        p.plot(truth["2"], clip=truth["2"])
        p.paragraph(60, 400, 470, 10)

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["2"]
    # the curve runs 80 pt past both sides of the axes but is clipped: the box stays on the axes
    assert box_iou(r.box, truth["2"]) > 0.9, r.box
    assert r.caption_position == "above"


def test_side_caption_beside_figure(tmp_path):
    def draw(p, truth):
        p.paragraph(60, 60, 470, 6)
        truth["3"] = (60, 150, 300, 330)
        p.image(truth["3"], seed=3)
        for i, line in enumerate(["Fig. 3 Bubbles and pores in", "the soda-lime glass after a", "short melt at 1500 C."]):
            p.text(320, 200 + 11 * i, line, 9)
        p.paragraph(60, 360, 470, 10)

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["3"]
    assert box_iou(r.box, truth["3"]) > 0.95
    assert r.caption_position == "side"
    assert r.caption == "Fig. 3 Bubbles and pores in the soda-lime glass after a short melt at 1500 C."


def test_multi_panel_figure_grouped_with_panel_letters(tmp_path):
    def draw(p, truth):
        p.paragraph(60, 60, 470, 5)
        a, b = (80, 140, 290, 300), (305, 140, 515, 300)
        p.image(a, seed=1)
        p.image(b, seed=2)
        p.c.setFillColorRGB(1, 1, 1)
        p.text(84, 144, "(a)", 10, "Helvetica-Bold")
        p.text(309, 144, "(b)", 10, "Helvetica-Bold")
        p.c.setFillColorRGB(0, 0, 0)
        truth["4"] = (80, 140, 515, 300)
        truth["panels"] = [a, b]
        p.text(60, 310, "FIG. 4. (a) Surface crystals after 24 h at 700 C; (b) bulk dendrites.", 9)
        p.paragraph(60, 340, 470, 10)

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["4"]
    assert box_iou(r.box, truth["4"]) > 0.95
    assert [p.label for p in r.panels] == ["a", "b"]
    for panel, box in zip(r.panels, truth["panels"]):
        assert box_iou(panel.box, box) > 0.9


def test_two_figures_stacked_in_one_column_are_told_apart(tmp_path):
    def draw(p, truth):
        truth["5"] = (80, 60, 300, 200)
        p.image(truth["5"], seed=5)
        p.text(80, 208, "Fig. 5. Unmolten sand grains.", 9)
        truth["6"] = (80, 240, 300, 380)
        p.image(truth["6"], seed=6)
        p.text(80, 388, "Fig. 6. Leached surface layer after the corrosion test.", 9)
        p.paragraph(60, 420, 470, 10)

    path, truth = _pdf(tmp_path, draw)
    regions = _regions(path)
    for label in ("5", "6"):
        assert box_iou(regions[label].box, truth[label]) > 0.95


def test_body_references_are_not_captions_and_caption_without_graphic_has_no_region(tmp_path):
    def draw(p, truth):
        p.text(60, 60, "Fig. 3 shows the crack network in detail and Fig. 13(a) shows pores.", 10)
        p.paragraph(60, 80, 470, 8)
        p.text(60, 200, "Figure 7. A caption whose figure is missing from the page.", 9)
        p.paragraph(60, 230, 470, 8)

    path, _ = _pdf(tmp_path, draw)
    regions = _regions(path)
    assert set(regions) == {"7"}
    assert regions["7"].box is None and regions["7"].caption_position == "none"


def test_page_graphics_drop_invisible_white_fills(tmp_path):
    def draw(p, truth):
        p.c.setFillColorRGB(1, 1, 1)
        p.c.rect(100, 300, 200, 200, stroke=0, fill=1)
        p.c.setFillColorRGB(0, 0, 0)
        p.c.rect(100, 100, 50, 50, stroke=1, fill=0)

    path, _ = _pdf(tmp_path, draw)
    with open_pdf(path) as pdf:
        graphics = page_graphics(pdf[0])
    assert len(graphics) == 1


def test_render_and_store_crops_by_content_hash(tmp_path):
    def draw(p, truth):
        p.paragraph(60, 60, 470, 5)
        p.image((80, 140, 290, 300), seed=1)
        p.image((305, 140, 515, 300), seed=2)
        p.text(60, 310, "Fig. 1. (a) Pores; (b) cracks.", 9)

    path, _ = _pdf(tmp_path, draw)
    out = extract_paper_figures(path, tmp_path / "images", dpi=72)
    assert out.n_pages == 1
    fig = out.figures[0]
    assert [p.label for p in fig.panels] == ["a", "b"]  # from the caption: the figure shows no letters
    img = out.figure_images["1"]
    assert img.path.name == f"{img.sha}.png" and img.path.exists()
    assert abs(img.width - 435) <= 2 and abs(img.height - 160) <= 2
    assert len(out.panel_images) == 2
    again = extract_paper_figures(path, tmp_path / "images", dpi=72)
    assert again.figure_images["1"].sha == img.sha  # same bytes, same name


def test_split_raster_panels_at_white_gutters():
    a = np.full((200, 410), 255, np.uint8)
    a[10:190, 5:200] = 90
    a[10:190, 215:405] = 140
    boxes = split_raster_panels(Image.fromarray(a))
    assert len(boxes) == 2
    assert boxes[0][2] <= 201 and boxes[1][0] >= 214


@pytest.mark.parametrize(
    "caption, letters",
    [("(a) pores, (b) cracks and (c) crystals", ["a", "b", "c"]), ("SEM image of bubbles.", []), ("a) top b) bottom", ["a", "b"])],
)
def test_caption_panel_letters(caption, letters):
    assert caption_panel_letters(caption) == letters


# ---- layouts of the generated corpus that used to fail ------------------------------------


def _axes_plot(p: Page, box: tuple, ylabel: str = "Intensity (a.u.)") -> None:
    """A plot as journals draw them: frame, x tick labels and title below, a rotated y title
    on the left standing well off the frame (unlabelled y ticks); everything inside ``box``."""
    x0, t, x1, b = box
    c = p.c
    fx0, fb = x0 + 24, b - 22
    c.setLineWidth(0.6)
    c.rect(fx0, H - fb, x1 - 2 - fx0, fb - t - 2)
    c.setFont("Times-Roman", 7)
    for i in range(5):
        xx = fx0 + 6 + i * (x1 - fx0 - 20) / 4
        c.line(xx, H - fb, xx, H - fb + 3)
        c.drawCentredString(xx, H - fb - 9, str(10 + 10 * i))
    c.drawCentredString((fx0 + x1) / 2, H - b + 2, "2 theta (degrees)")
    c.saveState()
    c.translate(x0 + 7, H - (t + fb) / 2)
    c.rotate(90)
    c.drawCentredString(0, 0, ylabel)
    c.restoreState()
    path = c.beginPath()
    for i in range(40):
        xx = fx0 + 2 + i * (x1 - fx0 - 6) / 39
        yy = (t + fb) / 2 + (fb - t) * 0.3 * np.sin(i / 4)
        (path.moveTo if i == 0 else path.lineTo)(xx, H - yy)
    c.drawPath(path, stroke=1, fill=0)


def _body_lines(p: Page, x: float, top: float, width: float, bottom: float, size: float = 10) -> None:
    p.paragraph(x, top, width, int((bottom - top) // (size * 1.2)), size)


def test_two_plots_stacked_in_one_column_with_captions_below_each(tmp_path):
    """synth_0_0006 p2: in the right column of a two-column page a vector plot above its
    caption and, 10 pt below, the next plot above its own caption; the left column is text."""

    def draw(p, truth):
        _body_lines(p, 50, 60, 235, 780)
        truth["3"] = (310, 60, 545, 230)
        _axes_plot(p, truth["3"], "Heat flow (a.u.)")
        p.text(310, 236, "Fig. 3. DSC curves of the as annealed glass measured at different", 8.5)
        p.text(310, 246.2, "heating rates.", 8.5)
        truth["4"] = (310, 266, 545, 436)
        _axes_plot(p, truth["4"])
        p.text(310, 442, "Fig. 4. XRD patterns of the samples (Cu K alpha radiation).", 8.5)
        _body_lines(p, 310, 470, 235, 780)

    path, truth = _pdf(tmp_path, draw)
    regions = _regions(path)
    for label in ("3", "4"):
        assert box_iou(regions[label].box, truth[label]) > 0.93, (label, regions[label].box)
        assert regions[label].caption_position == "below"
    assert regions["3"].caption.endswith("at different heating rates.")


def test_side_figure_then_caption_above_the_next_figure(tmp_path):
    """synth_0_0011 p3 / synth_0_0009 p4: a figure with its caption beside it, then a
    full-width caption above the next figure: the free band above that caption reaches up to
    the side caption, and the side figure beside it is not the lower caption's."""

    def draw(p, truth):
        truth["2"] = (63, 70, 330, 262)
        p.image(truth["2"], seed=2)
        for i, line in enumerate(["Fig. 2. Secondary electron image of the", "soda-lime glass melted at 1500 C for 4 h", "showing a homogeneous glass."]):
            p.text(342, 70 + 10.8 * i, line, 9)
        for i, line in enumerate(
            [
                "Fig. 3. SEM micrographs of the samples: (a) the glass heat treated at 780 C for 4 h, showing large",
                "dendritic crystals and a few scratches; (b) the glass heat treated at 780 C for 24 h, showing bulk",
                "crystallisation with spherulitic crystals.",
            ]
        ):
            p.text(63, 272 + 10.8 * i, line, 9)
        truth["3"] = (100, 324, 513, 600)
        p.image(truth["3"], seed=3)
        # a reference list in small type under the figure is no part of it
        for i in range(6):
            p.text(63, 612 + 10.2 * i, f"[{i + 7}] A. Author, B. Author, Journal of Synthetic Glass Science {100 + i} (1999) 1.", 8.5)

    path, truth = _pdf(tmp_path, draw)
    regions = _regions(path)
    assert box_iou(regions["2"].box, truth["2"]) > 0.95 and regions["2"].caption_position == "side"
    assert box_iou(regions["3"].box, truth["3"]) > 0.95 and regions["3"].caption_position == "above"


def test_wide_two_panel_figure_with_caption_above_and_a_column_figure_below_it(tmp_path):
    """synth_0_0005 p2 / synth_3_0007 p2: a caption above a two-panel figure that spans both
    columns, 10 pt above a one-column figure with its caption below: each panel row stays with
    the wide caption, not with the run of the figure below."""

    def draw(p, truth):
        p.text(50, 56, "Figure 1. (a) DSC curves of the glass at different heating rates; (b) XRD patterns.", 9)
        a, b = (110, 74, 295, 223), (322, 74, 507, 223)
        _axes_plot(p, a, "Heat flow")
        _axes_plot(p, b)
        truth["1"] = (110, 74, 507, 223)
        truth["2"] = (50, 233, 290, 480)
        p.image(truth["2"], seed=7)
        p.text(50, 486, "Figure 2. SEM image of the polished reference glass.", 9)
        _body_lines(p, 50, 510, 240, 780)
        _body_lines(p, 305, 240, 240, 780)

    path, truth = _pdf(tmp_path, draw)
    regions = _regions(path)
    assert box_iou(regions["1"].box, truth["1"]) > 0.93, regions["1"].box
    assert regions["1"].caption_position == "above"
    assert box_iou(regions["2"].box, truth["2"]) > 0.95, regions["2"].box


def test_page_of_figures_in_a_two_column_paper(tmp_path):
    """synth_0_0004 p3: a page with only figures and captions shows no gutter; it takes the
    paper's. Left column: a caption above its figure (whose '(a)' sits just under the caption)
    and a figure above its caption; right column: a figure above its caption."""
    path = tmp_path / "paper.pdf"
    c = canvas.Canvas(str(path), pagesize=A4, invariant=1)
    p = Page(c)
    for _ in range(2):  # two pages of two-column text fix the paper's gutter
        _body_lines(p, 52, 60, 244, 780)
        _body_lines(p, 315, 60, 244, 780)
        c.showPage()
    truth = {}
    p.text(52, 66, "Fig. 3. SEM micrographs of the samples after corrosion in water", 8.5)
    p.text(52, 76.2, "at 60 C for 28 days: (a) the leached layer; (b) the bulk glass.", 8.5)
    truth["3"] = (52, 86, 297, 300)
    p.image(truth["3"], seed=3)
    c.setFillColorRGB(1, 1, 1)
    c.rect(52, H - 86 - 11, 16, 11, stroke=0, fill=1)
    c.setFillColorRGB(0, 0, 0)
    p.text(54, 87, "(a)", 8.5, "Helvetica-Bold")
    truth["4"] = (52, 326, 297, 536)
    p.image(truth["4"], seed=4)
    p.text(52, 542, "Fig. 4. Surface crystals after 24 h at 700 C.", 8.5)
    truth["5"] = (315, 66, 560, 277)
    p.image(truth["5"], seed=5)
    p.text(315, 283, "Fig. 5. Bulk crystallisation with spherulitic crystals after the", 8.5)
    p.text(315, 293.2, "second heat treatment at 780 C for 24 h.", 8.5)
    c.showPage()
    c.save()
    with open_pdf(path) as pdf:
        regions = {r.label: r for r in extract_figure_regions(pdf)}
    for label in ("3", "4", "5"):
        assert regions[label].page == 3
        assert box_iou(regions[label].box, truth[label]) > 0.95, (label, regions[label].box)
    assert regions["3"].caption_position == "above" and regions["3"].caption.endswith("(b) the bulk glass.")


def test_tall_side_caption_with_text_below_the_figure_and_a_margin_logo(tmp_path):
    """A Nature-style page: a tall caption in the left column beside a figure in the right,
    the right column's text starting under the figure, level with the caption's last lines;
    a publisher's logo in the left margin is no figure."""

    def draw(p, truth):
        p.text(60, 70, "Figure 1 Ephaptic coupling leads to coordinated", 8)
        for i in range(1, 34):
            p.text(60, 70 + 10.5 * i, f"spiking of neurons, caption line {i} of the legend.", 8)
        truth["1"] = (250, 70, 545, 400)
        p.image(truth["1"], seed=11)
        p.c.rect(12, H - 520, 18, 18, stroke=1, fill=1)  # the logo in the margin
        _body_lines(p, 250, 412, 295, 780)
        _body_lines(p, 60, 440, 180, 780)

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["1"]
    assert r.box is not None and box_iou(r.box, truth["1"]) > 0.95, r.box
    assert r.caption_position == "side"


def test_plots_stacked_with_their_titles_and_tick_labels_between_them_are_one_figure(tmp_path):
    """Three plots stacked above one caption, 40+ pt apart but the space between them filled
    with their tick labels and titles (mineru_demo2 Fig. 3)."""

    def draw(p, truth):
        _body_lines(p, 50, 60, 235, 780)
        tops = (70, 175, 280)
        for k, t in enumerate(tops):
            p.text(400, t - 12, f"Noise: {20 * k}", 8)
            _axes_plot(p, (330, t, 545, t + 75))
        truth["3"] = (330, 58, 545, 355)
        p.text(310, 365, "Figure 3: Performance of temporal matching at different noise levels.", 8.5)
        _body_lines(p, 310, 390, 235, 780)

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["3"]
    assert box_iou(r.box, truth["3"]) > 0.9, r.box


# ---- page frame, furniture, large type, captions across columns, panels -----------------


def test_crop_box_offset_boxes_stay_in_the_mediabox_frame(tmp_path):
    """A PDF that crops its MediaBox: boxes are in pdfplumber's frame, as the benchmark's."""
    import pdfplumber

    path = tmp_path / "cropped.pdf"
    c = canvas.Canvas(str(path), pagesize=(612.3, 810.7), invariant=1)
    c.setCropBox((41.9, 46.5, 637.2, 840.2))
    p = Page(c)
    p.paragraph(60, 60, 470, 6)
    p.image((120, 160, 420, 360), seed=3)
    p.text(60, 372, "Fig. 7. SEM image of the activated carbon after treatment.", 9)
    p.paragraph(60, 400, 470, 10)
    c.showPage()
    c.save()
    with pdfplumber.open(path) as pdf:
        im = pdf.pages[0].images[0]
        truth = (im["x0"], im["top"], im["x1"], im["bottom"])
    r = _regions(path)["7"]
    assert box_iou(r.box, truth) > 0.97, (r.box, truth)
    out = extract_paper_figures(path, tmp_path / "images", dpi=72)
    crop = out.figure_images["7"]
    assert abs(crop.width - 300) <= 2 and abs(crop.height - 200) <= 2


def test_plot_title_set_larger_than_the_body_is_the_figures_own_text(tmp_path):
    def draw(p, truth):
        p.paragraph(60, 60, 470, 6)
        p.text(200, 140, "Temperature dependence", 14, "Helvetica-Bold")  # reads as a heading by size
        truth["2"] = (120, 140, 470, 360)
        p.plot((120, 165, 470, 340))
        p.text(250, 346, "Temperature (K)", 13, "Helvetica")
        p.text(60, 380, "Figure 2: XRD patterns of the heat-treated samples.", 9)
        p.paragraph(60, 400, 470, 10)

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["2"]
    assert r.box is not None and box_iou(r.box, truth["2"]) > 0.95, r.box


def test_a_real_heading_right_above_a_figure_still_bounds_it(tmp_path):
    def draw(p, truth):
        p.paragraph(60, 60, 470, 6)
        p.text(60, 140, "3. Results", 14, "Times-Bold")
        truth["2"] = (120, 165, 470, 340)
        p.plot(truth["2"])
        p.text(60, 360, "Figure 2: XRD patterns of the heat-treated samples.", 9)
        p.paragraph(60, 380, 470, 10)

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["2"]
    assert box_iou(r.box, truth["2"]) > 0.9 and r.box[1] > 150, r.box


def test_banner_running_title_and_page_number_never_join_a_figure(tmp_path):
    path = tmp_path / "paper.pdf"
    c = canvas.Canvas(str(path), pagesize=A4, invariant=1)
    for n in range(1, 5):
        p = Page(c)
        c.setFillColorRGB(0.2, 0.3, 0.6)
        c.rect(0, H - 32, W, 32, stroke=0, fill=1)  # a journal banner bleeding off the top edge
        c.setFillColorRGB(0, 0, 0)
        p.text(250, 62, "CALCIUM WAVES IN GLIA", 7)  # running title at 8-9 % of the page
        p.text(520, 62, str(40 + n), 7)
        p.image((80, 78, 500, 330), seed=n)
        p.text(60, 342, f"Fig. {n}. Calcium imaging of the glial culture {n} s after stimulation.", 9)
        p.paragraph(60, 370, 470, 20)
        c.showPage()
    c.save()
    regions = _regions(path)
    assert sorted(regions) == ["1", "2", "3", "4"]
    for r in regions.values():
        assert box_iou(r.box, (80, 78, 500, 330)) > 0.97, r.box


def test_a_dot_stroked_wide_or_a_drawing_off_the_page_never_widens_a_figure(tmp_path):
    def draw(p, truth):
        p.paragraph(60, 60, 470, 6)
        truth["5"] = (120, 160, 400, 330)
        p.plot(truth["5"])
        p.c.setLineWidth(400)  # a lone point with a huge line width: pdfium's bounds cover the page
        p.c.line(300, H - 250, 300, H - 250)
        p.c.setLineWidth(1)
        p.text(60, 345, "Fig. 5. Heat flow of the glass during the second heating.", 9)
        p.paragraph(60, 370, 470, 10)
        p.c.rect(560, H - 600, 200, 80, stroke=1, fill=0)  # runs off the right edge

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["5"]
    assert box_iou(r.box, truth["5"]) > 0.9, r.box
    with open_pdf(path) as pdf:
        for g in page_graphics(pdf[0]):
            assert 0 <= g.box[0] and g.box[2] <= W + 0.01 and 0 <= g.box[1] and g.box[3] <= H + 0.01, g


def test_a_caption_set_across_both_columns_reads_on_in_the_right_column(tmp_path):
    def draw(p, truth):
        p.image((60, 60, 535, 330), seed=4)
        p.text(60, 342, "Fig. 3. Schematic model of intercellular calcium", 8)
        p.text(60, 352, "waves in glia. It shows the extracellular messen-", 8)
        p.text(312, 342, "ger by the stimulated cell and the role of the", 8)
        p.text(312, 352, "membrane potential in the waves.", 8)
        for top in range(380, 700, 12):
            p.text(60, top, "cantly higher propagation velocity and distance", 10)
            p.text(312, top, "neuronal cultures or in hippocampal slices have", 10)

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["3"]
    assert "extracellular messenger by the stimulated cell" in r.caption, r.caption
    assert r.caption.endswith("membrane potential in the waves."), r.caption


def test_a_side_captions_line_does_not_take_the_plot_text_beside_it(tmp_path):
    def draw(p, truth):
        lines = [
            "Figure 2 Subthreshold field entrainment.",
            "(d) Normalized cross correlation of the",
            "corrected for multiple comparisons. (e)",
            "xcorr of the data in c for each current.",
        ]
        for i, s in enumerate(lines):
            p.text(43, 62 + 10 * i, s, 7.5)
        p.text(207, 80, "d", 12, "Helvetica-Bold")  # the panel letter and a tick label, level with line 3
        p.text(222, 82, "0.8", 6)
        p.text(240, 82, "Frequency (Hz)", 6)
        p.plot((230, 90, 520, 200))
        p.paragraph(43, 240, 480, 20)

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["2"]
    assert "Frequency" not in r.caption and "0.8" not in r.caption, r.caption
    assert r.caption.endswith("for each current."), r.caption


def test_split_raster_panels_recursively_into_a_grid_with_one_pixel_gutters():
    a = np.full((403, 301), 255, np.uint8)
    for row in range(4):
        for col in range(2):
            a[row * 101 : row * 101 + 100, col * 151 : col * 151 + 150] = 60 + 20 * row + 10 * col
    boxes = split_raster_panels(Image.fromarray(a))
    assert len(boxes) == 8
    # reading order: row by row, left to right
    assert [b[1] // 101 for b in boxes] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [b[0] // 151 for b in boxes] == [0, 1] * 4


def test_split_raster_panels_keeps_a_thin_strip_with_its_panel():
    a = np.full((300, 400), 255, np.uint8)
    a[0:200, 0:195] = 80
    a[0:200, 205:400] = 120
    a[210:222, 0:400] = 30  # a colour bar under both panels: too thin to be a panel of its own
    boxes = split_raster_panels(Image.fromarray(a))
    assert len(boxes) == 2 and boxes[0][3] >= 222 or boxes[-1][3] >= 222, boxes
    assert all(b[3] - b[1] >= 36 for b in boxes)


def test_panels_of_a_vector_figure_follow_its_printed_letters(tmp_path):
    def draw(p, truth):
        p.paragraph(60, 60, 470, 4)
        heads = {"a": (80, 120), "b": (240, 120), "c": (400, 120), "d": (80, 260), "e": (320, 260)}
        plots = {
            "a": (95, 135, 225, 235), "b": (255, 135, 385, 235), "c": (415, 135, 530, 235),
            "d": (95, 275, 300, 375), "e": (335, 275, 530, 375),
        }
        for k, (x, t) in heads.items():
            p.text(x, t, k, 12, "Helvetica-Bold")
            p.plot(plots[k])
            p.text(plots[k][0] + 30, plots[k][3] + 3, "Time (s)", 6)
        truth["panels"], truth["heads"] = plots, heads
        p.text(60, 400, "Figure 1 Recordings. (a) Ve, (b) Vi, (c) Vm, (d) xcorr and (e) phase.", 9)
        p.paragraph(60, 425, 470, 10)

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["1"]
    assert [p.label for p in r.panels] == ["a", "b", "c", "d", "e"]
    for panel in r.panels:
        plot = truth["panels"][panel.label]
        head = truth["heads"][panel.label]
        # the panel is its letter, its plot and its axis title
        assert box_iou(panel.box, (head[0], head[1], plot[2], plot[3] + 9)) > 0.85, (panel.label, panel.box, plot)


def test_unlettered_plot_panels_keep_their_axis_titles(tmp_path):
    def draw(p, truth):
        p.paragraph(60, 60, 470, 4)
        left, right = (90, 130, 280, 280), (330, 130, 520, 280)
        for plot in (left, right):
            p.plot(plot)
            p.text(plot[0] + 60, plot[3] + 4, "Time (s)", 7)
        p.text(60, 310, "Figure 6. Heat flow (left) and mass loss (right) of the glass.", 9)
        p.paragraph(60, 335, 470, 10)
        truth["panels"] = [left, right]

    path, truth = _pdf(tmp_path, draw)
    r = _regions(path)["6"]
    assert len(r.panels) == 2
    for panel, plot in zip(r.panels, truth["panels"]):
        assert panel.box[3] >= plot[3] + 9, panel.box  # the axis title is the panel's
        assert box_iou(panel.box, plot) > 0.8
