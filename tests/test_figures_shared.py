"""Figure and panel extraction on the real PDFs in ../shared (skipped where it is absent).

Each test pins a failure seen on real papers: boxes off by a PDF's CropBox, captions cut or
mixed with plot text, journal banners and running titles taken for figures, panels that
changed with the render resolution, panels dropped or merged, letters lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glassllava.figures import extract_paper_figures, figure_sem_verdicts
from glassllava.pagegraphics import box_iou
from glassllava.pdfdoc import open_pdf
from glassllava.regions import extract_figure_regions

PDFS = Path("bench/figures/pdfs")
KINTSUGI = Path("data/papers/kintsugi_imaging_battery_electrodes_JES2022.pdf")


def _regions(path: Path) -> dict:
    with open_pdf(path) as pdf:
        return {r.label: r for r in extract_figure_regions(pdf)}


def _pdf(shared: Path, rel: Path) -> Path:
    path = shared / rel
    if not path.exists():
        pytest.skip(f"{path} is not in ../shared")
    return path


def test_boxes_of_a_pdf_with_a_cropbox_match_the_benchmark(shared_dir):
    manifest = json.loads((shared_dir / "bench/figures/manifest.json").read_text())
    doc = next(d for d in manifest["documents"] if d["pdf"] == "doclingeval_case01_32a7d8aa.pdf")
    regions = _regions(_pdf(shared_dir, PDFS / doc["pdf"]))
    for fig in doc["figures"]:
        if fig.get("figure_bbox"):
            # was 0.76: every box 17 pt off, the CropBox-to-MediaBox offset
            assert box_iou(regions[fig["label"]].box, tuple(fig["figure_bbox"])) > 0.85, fig["label"]


def test_captions_read_on_and_leave_the_plot_text_out(shared_dir):
    glia = _regions(_pdf(shared_dir, PDFS / "pdffigures2_3a9202f9.pdf"))
    # the caption runs on at the top of the right column after "the extracellular messen-"
    assert "extracellular messenger by" in glia["3"].caption
    assert glia["3"].caption.endswith("change in membrane potential.")
    neuro = _regions(_pdf(shared_dir, PDFS / "pdffigures2_f63cb207.pdf"))
    assert neuro["2"].caption.endswith("at f = 8 Hz.")
    assert "Frequency (Hz)" not in neuro["2"].caption and "xcorr(Vi, Ve; blue)" in neuro["2"].caption


def test_banners_and_running_titles_never_join_a_figure(shared_dir):
    neuro = _regions(_pdf(shared_dir, PDFS / "pdffigures2_f63cb207.pdf"))
    for label in "1234":
        box = neuro[label].box
        # was (0, 0, 594, 40), the "ARTICLES" banner, for all four figures
        assert box is not None and box[1] > 50 and box[0] > 200, (label, box)
    glia = _regions(_pdf(shared_dir, PDFS / "pdffigures2_3a9202f9.pdf"))
    for label in "123":
        # the running title "CALCIUM WAVES IN GLIA 41" sits at 60-69 pt, the pictures from 78 pt
        assert glia[label].box[1] >= 75, (label, glia[label].box)


def test_printed_panel_letters_split_a_vector_figure(shared_dir):
    neuro = _regions(_pdf(shared_dir, PDFS / "pdffigures2_f63cb207.pdf"))
    assert [p.label for p in neuro["1"].panels] == list("abcde")  # was 2 panels, "a" and unlabelled
    assert [p.label for p in neuro["3"].panels] == list("abcdef")


def test_panels_labels_and_sem_verdicts_do_not_depend_on_the_render_resolution(shared_dir, tmp_path):
    path = _pdf(shared_dir, KINTSUGI)
    seen = {}
    for dpi in (100, 150, 300):
        result = extract_paper_figures(path, tmp_path / str(dpi), dpi=dpi)
        seen[dpi] = [
            (
                f.label,
                [(tuple(round(v, 1) for v in p.box), p.label) for p in f.panels],
                [v.is_sem for v in figure_sem_verdicts(f, result)],
            )
            for f in result.figures
            if f.box is not None
        ]
    assert seen[100] == seen[150] == seen[300]
    panels = {label: "".join(letter or "-" for _, letter in ps) for label, ps, _ in seen[150]}
    # Fig. 2: a 2 x 3 grid; Fig. 3: SEM image, EDS map and F map apart; Fig. 4: 8 panels a-h
    assert panels["2"] == "abcdef" and panels["3"] == "abc" and panels["4"] == "abcdefgh", panels
