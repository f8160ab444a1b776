"""Synthetic corpus: determinism, ground-truth consistency and micrograph truth."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pdfplumber
import pytest
from scipy import ndimage

from glassllava.synth import (
    DEFECT_TYPES,
    PHENOMENA,
    PHENOMENON_KEYWORDS,
    MicrographSpec,
    generate_corpus,
    history_tendencies,
    render_micrograph,
    spec_from_history,
)
from glassllava.synth.history import sample_histories
from glassllava.synth.micrographs import BAR_HEIGHT, HEIGHT

SEED, N_PAPERS = 7, 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(out, papers=N_PAPERS, seed=SEED)
    return out


@pytest.fixture(scope="module")
def manifest(corpus) -> dict:
    return json.loads((corpus / "manifest.json").read_text())


def _figures(manifest):
    for doc in manifest["documents"]:
        for fig in doc["figures"]:
            yield doc, fig


# ---------------------------------------------------------------- micrographs


def test_crack_spec_gives_a_defect_whose_box_differs_from_the_background():
    image, truth = render_micrograph(
        MicrographSpec(phenomena=("cracks",), magnification=500, dose=40),
        np.random.default_rng(0),
    )
    assert truth["defect"] and "crack" in truth["defect_types"]
    px = np.asarray(image, dtype=float)[:HEIGHT]
    for feat in truth["features"]:
        x0, y0, x1, y1 = feat["box"]
        assert 0 <= x0 < x1 <= px.shape[1] and 0 <= y0 < y1 <= HEIGHT
    clean, _ = render_micrograph(
        MicrographSpec(phenomena=("clean_glass",), magnification=500, dose=40),
        np.random.default_rng(0),
    )
    x0, y0, x1, y1 = truth["features"][0]["box"]
    # smooth away shot noise, then a crack (dark gap, bright edges) must add structure the clean glass lacks
    crack_region = ndimage.gaussian_filter(px, 2)[y0:y1, x0:x1]
    clean_region = ndimage.gaussian_filter(np.asarray(clean, dtype=float)[:HEIGHT], 2)[
        y0:y1, x0:x1
    ]
    assert crack_region.std() > 1.5 * clean_region.std()


@pytest.mark.parametrize("phenomenon", PHENOMENA)
def test_every_phenomenon_renders_with_consistent_truth(phenomenon):
    params = {"phase_size_um": 0.2, "layer_um": 5.0}
    image, truth = render_micrograph(
        MicrographSpec(phenomena=(phenomenon,), magnification=2000, params=params),
        np.random.default_rng(1),
    )
    assert image.mode == "L" and image.size == (512, HEIGHT + BAR_HEIGHT)
    assert truth["features"], phenomenon
    assert truth["defect"] == any(f["type"] in DEFECT_TYPES for f in truth["features"])
    expected_defect = phenomenon not in (
        "clean_glass",
        "fracture_surface",
    ) and not phenomenon.startswith("phase_separation")
    assert truth["defect"] == expected_defect


@pytest.mark.parametrize("mag", [80, 1000, 5000, 50_000])
def test_scale_bar_length_matches_magnification(mag):
    image, truth = render_micrograph(
        MicrographSpec(phenomena=("clean_glass",), magnification=mag),
        np.random.default_rng(2),
    )
    assert truth["hfw_um"] == pytest.approx(127_000 / mag, rel=1e-3)
    assert truth["pixel_size_um"] == pytest.approx(truth["hfw_um"] / 512, rel=1e-3)
    assert (
        abs(truth["scale_bar_px"] * truth["pixel_size_um"] - truth["scale_bar_um"])
        <= truth["pixel_size_um"]
    )
    x0, y0, x1, _ = truth["scale_bar_box"]
    row = np.asarray(image)[y0 + 1]
    assert (
        (row[x0:x1] == 255).all() and row[x0 - 1] < 255 and row[x1] < 255
    )  # the drawn bar is exactly that long


def test_micrographs_are_deterministic():
    spec = MicrographSpec(
        phenomena=("bubbles", "cracks"), magnification=300, charging=True
    )
    a, ta = render_micrograph(spec, np.random.default_rng(5))
    b, tb = render_micrograph(spec, np.random.default_rng(5))
    c, _ = render_micrograph(spec, np.random.default_rng(6))
    assert a.tobytes() == b.tobytes() and ta == tb
    assert a.tobytes() != c.tobytes()


def test_processing_history_drives_the_phenomena():
    rng = np.random.default_rng(0)
    quenched = sample_histories("quenching", "soda-lime", rng)
    odds = {h["sample_id"]: history_tendencies(h) for h in quenched}
    assert odds["SLS-W"].get("crack_network", 0) > 0.5  # water quench, not annealed
    assert (
        odds["SLS-A"].get("crack_network", 0) == 0
        and odds["SLS-A"].get("cracks", 0) < 0.5
    )
    corroded = sample_histories("corrosion", "soda-lime", rng)[1]
    assert history_tendencies(corroded)["leached_layer"] > 0.5
    separated = sample_histories("phase_separation", "borosilicate", rng)
    assert any(
        p.startswith("phase_separation") for p in history_tendencies(separated[-1])
    )
    assert not any(
        p.startswith("phase_separation") for p in history_tendencies(separated[0])
    )  # no heat treatment
    spec = spec_from_history(separated[-1], np.random.default_rng(1), focus=None)
    assert any(p.startswith("phase_separation") for p in spec.phenomena)


# ---------------------------------------------------------------- corpus


def test_same_seed_same_bytes_different_seed_different(corpus, tmp_path):
    again = tmp_path / "again"
    generate_corpus(again, papers=N_PAPERS, seed=SEED)
    assert (again / "manifest.json").read_bytes() == (
        corpus / "manifest.json"
    ).read_bytes()
    for pdf in sorted((corpus / "pdfs").glob("*.pdf")):
        assert (again / "pdfs" / pdf.name).read_bytes() == pdf.read_bytes(), pdf.name
    other = tmp_path / "other"
    generate_corpus(other, papers=1, seed=SEED + 1)
    first = min((other / "pdfs").glob("*.pdf")).read_bytes()
    assert first not in {p.read_bytes() for p in (corpus / "pdfs").glob("*.pdf")}


def test_manifest_format(corpus, manifest):
    assert manifest["generator"] == {
        "name": "glassllava.synth",
        "seed": SEED,
        "papers": N_PAPERS,
        "version": "2",
    }
    assert len(manifest["documents"]) == N_PAPERS
    for doc in manifest["documents"]:
        assert (corpus / "pdfs" / doc["pdf"]).is_file()
        assert (corpus / "truth" / doc["pdf"].replace(".pdf", ".json")).is_file()
        assert doc["gt_kind"] == "synthetic" and doc["layout"] in (
            "one-column",
            "two-column",
        )
        assert (
            doc["n_figures"] == sum(f["kind"] == "figure" for f in doc["figures"]) >= 3
        )
        for fig in doc["figures"]:
            assert fig["caption_position"] in ("below", "above", "side")
            assert fig["caption"] == " ".join(fig["caption"].split())
            if fig["kind"] == "figure":
                assert fig["panels"] and all(
                    p["is_sem"] == (p["micrograph"] is not None) for p in fig["panels"]
                )
                assert fig["is_sem"] == any(p["is_sem"] for p in fig["panels"])
                labels = [p["label"] for p in fig["panels"]]
                assert labels == (
                    [None]
                    if len(labels) == 1
                    else [chr(97 + k) for k in range(len(labels))]
                )


def test_every_box_lies_inside_its_page(corpus, manifest):
    for doc in manifest["documents"]:
        with pdfplumber.open(corpus / "pdfs" / doc["pdf"]) as pdf:
            assert len(pdf.pages) == doc["pages"]
            for fig in doc["figures"]:
                page = pdf.pages[fig["page"] - 1]
                boxes = [fig["figure_bbox"], fig["caption_bbox"]] + [
                    p["bbox"] for p in fig["panels"]
                ]
                for x0, top, x1, bottom in boxes:
                    assert (
                        0 <= x0 < x1 <= page.width and 0 <= top < bottom <= page.height
                    ), (doc["pdf"], fig["label"])
                fx0, ft, fx1, fb = fig["figure_bbox"]
                for p in fig[
                    "panels"
                ]:  # panels inside the figure box, caption outside it
                    x0, top, x1, bottom = p["bbox"]
                    assert (
                        fx0 - 0.5 <= x0
                        and x1 <= fx1 + 0.5
                        and ft - 0.5 <= top
                        and bottom <= fb + 0.5
                    )
                cx0, ct, _, cb = fig["caption_bbox"]
                assert cb <= ft or ct >= fb or cx0 >= fx1, "caption overlaps its figure"


_CITE = re.compile(
    r"\b(Figs?\.|Figures?|FIGS?\.)\s*(\d+)(?:[a-z]|\([a-z]\))?(?:\s*(and|-)\s*(\d+))?"
)


def _cited_labels(text: str) -> set[str]:
    labels = set()
    for m in _CITE.finditer(text):
        a = int(m.group(2))
        if m.group(3) == "-":
            labels.update(str(k) for k in range(a, int(m.group(4)) + 1))
        else:
            labels.add(str(a))
            if m.group(4):
                labels.add(m.group(4))
    return labels


def test_every_figure_is_cited_in_the_text(corpus, manifest):
    for doc in manifest["documents"]:
        with pdfplumber.open(corpus / "pdfs" / doc["pdf"]) as pdf:
            body = []
            for page in pdf.pages:
                captions = [
                    f["caption_bbox"]
                    for f in doc["figures"]
                    if f["page"] == page.page_number
                ]
                words = [
                    w
                    for w in page.extract_words()
                    if not any(
                        x0 - 1 <= w["x0"]
                        and w["x1"] <= x1 + 1
                        and t - 1 <= w["top"]
                        and w["bottom"] <= b + 1
                        for x0, t, x1, b in captions
                    )
                ]
                body.append(" ".join(w["text"] for w in words))
        cited = _cited_labels(" ".join(body))
        for fig in doc["figures"]:
            if fig["kind"] == "figure":
                assert fig["label"] in cited, (
                    f"{doc['pdf']}: Fig. {fig['label']} never cited in the body text"
                )


def test_truth_lists_the_citing_paragraphs(corpus, manifest):
    for doc in manifest["documents"]:
        truth = json.loads(
            (corpus / "truth" / doc["pdf"].replace(".pdf", ".json")).read_text()
        )
        assert truth["samples"] and truth["composition_mol_pct"]
        assert sum(truth["composition_mol_pct"].values()) == pytest.approx(
            100.0, abs=0.05
        )
        for fig in truth["figures"]:
            if fig["kind"] == "figure":
                assert fig["citing_paragraphs"]
                assert all(
                    fig["label"] in _cited_labels(p) for p in fig["citing_paragraphs"]
                )


def test_captions_name_the_phenomena_in_the_truth(manifest):
    n = 0
    for _, fig in _figures(manifest):
        for panel in fig["panels"]:
            if panel["micrograph"]:
                for phenomenon in panel["micrograph"]["phenomena"]:
                    assert PHENOMENON_KEYWORDS[phenomenon] in fig["caption"].lower(), (
                        phenomenon,
                        fig["caption"],
                    )
                    n += 1
    assert n >= 3


def test_captions_are_found_on_their_page_inside_the_caption_box(corpus, manifest):
    for doc in manifest["documents"]:
        with pdfplumber.open(corpus / "pdfs" / doc["pdf"]) as pdf:
            for fig in doc["figures"]:
                x0, top, x1, bottom = fig["caption_bbox"]
                page = pdf.pages[fig["page"] - 1]
                inside = page.crop((x0 - 3, top - 3, x1 + 3, bottom + 3)).extract_text()
                assert " ".join(inside.split()) == fig["caption"], (
                    doc["pdf"],
                    fig["label"],
                )
                chars = [
                    c
                    for c in page.chars
                    if x0 - 3 <= c["x0"]
                    and c["x1"] <= x1 + 3
                    and top - 3 <= c["top"]
                    and c["bottom"] <= bottom + 3
                ]
                assert (
                    abs(min(c["top"] for c in chars) - top) <= 3
                    and abs(max(c["x1"] for c in chars) - x1) <= 3
                )


def test_micrograph_panels_are_embedded_images(corpus, manifest):
    for doc in manifest["documents"]:
        with pdfplumber.open(corpus / "pdfs" / doc["pdf"]) as pdf:
            for fig in doc["figures"]:
                if not fig["is_sem"]:
                    continue
                images = pdf.pages[fig["page"] - 1].images
                fx0, ft, fx1, fb = fig["figure_bbox"]
                inside = [
                    im
                    for im in images
                    if im["x0"] >= fx0 - 1
                    and im["x1"] <= fx1 + 1
                    and im["top"] >= ft - 1
                    and im["bottom"] <= fb + 1
                ]
                assert len(inside) == (1 if fig["single_image"] else len(fig["panels"]))


def test_figure_box_holds_everything_drawn_for_the_figure(corpus, manifest):
    """The truth box is the figure's ink: a plot's last tick label, centred on the frame's end,
    sticks out of the box the plot was drawn in and must still be inside the figure box."""
    n = 0
    for doc in manifest["documents"]:
        with pdfplumber.open(corpus / "pdfs" / doc["pdf"]) as pdf:
            for fig in doc["figures"]:
                if fig["kind"] != "figure" or fig["is_sem"]:
                    continue
                page = pdf.pages[fig["page"] - 1]
                fx0, ft, fx1, fb = fig["figure_bbox"]
                cx0, ct, cx1, cb = fig["caption_bbox"]
                near = [
                    c
                    for c in page.chars
                    if c["x1"] > fx0 - 6 and c["x0"] < fx1 + 6 and c["bottom"] > ft and c["top"] < fb
                    and not (c["x0"] >= cx0 - 1 and c["x1"] <= cx1 + 1 and c["top"] >= ct - 1 and c["bottom"] <= cb + 1)
                ]
                for c in near:
                    assert fx0 - 0.5 <= c["x0"] and c["x1"] <= fx1 + 0.5, (doc["pdf"], fig["label"], c["text"])
                    n += 1
    assert n > 0
