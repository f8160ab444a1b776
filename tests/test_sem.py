from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from glassllava.sem import (
    caption_features,
    caption_for_panel,
    caption_sem_evidence,
    run_sem_benchmark,
    sem_metrics,
    sem_score,
)
from glassllava.sem_features import FEATURE_NAMES, image_features

REPO = Path(__file__).resolve().parents[1]


def sem_like(seed: int = 0, size: int = 400) -> Image.Image:
    """Grey grains with bright rims and shot noise, and a black data bar with white text at the bottom."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    grey = np.full((size, size), 0.35)
    for _ in range(60):
        cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(8, 30)
        d = np.hypot(yy - cy, xx - cx) / r
        grey = np.where(d < 1, 0.45 + 0.45 * d**4 + 0.1 * (yy - cy) / r, grey)  # bright edges, shading
    grey = np.clip(grey + rng.normal(0, 0.06, grey.shape), 0, 1)
    image = Image.fromarray((grey * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, size - 36, size, size], fill=(0, 0, 0))
    font = ImageFont.load_default(size=16)
    draw.text((8, size - 28), "HV 10.00 kV  WD 5.1 mm  20 000 x  ETD  2 um", fill=(255, 255, 255), font=font)
    return image


def white_plot() -> Image.Image:
    image = Image.new("RGB", (400, 300), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(40, 260), (380, 260)], fill="black", width=2)
    draw.line([(40, 20), (40, 260)], fill="black", width=2)
    xs = np.linspace(40, 380, 200)
    draw.line(list(zip(xs, 240 - 150 * np.exp(-((xs - 200) / 15) ** 2))), fill="black", width=1)
    draw.text((180, 275), "2 theta (deg)", fill="black")
    return image


def fluorescence_like(seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = np.zeros((300, 300, 3))
    yy, xx = np.mgrid[0:300, 0:300]
    for _ in range(25):
        cy, cx, r = rng.integers(0, 300), rng.integers(0, 300), rng.integers(5, 20)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        rgb[..., rng.integers(0, 3)] += blob
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def test_features_are_finite_and_named():
    features = image_features(sem_like())
    assert tuple(features) == FEATURE_NAMES
    assert all(np.isfinite(v) for v in features.values())
    assert features["data_bar"] > 0.5


def test_sem_like_image_scores_high():
    verdict = sem_score(sem_like())
    assert verdict.is_sem and verdict.score > 0.6
    assert 0 <= verdict.score <= 1 and "data_bar" in verdict.evidence


def test_plot_and_fluorescence_score_low():
    assert not image_features(white_plot())["data_bar"]  # axis labels under a plot are not a data bar
    assert sem_score(white_plot()).score < 0.4
    assert sem_score(fluorescence_like()).score < 0.4


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (300, 200), "white"),
        Image.new("L", (300, 200), 0),
        Image.new("RGBA", (100, 100), (0, 0, 0, 0)),
        Image.new("P", (50, 50)),
        Image.new("RGB", (300, 6), "grey"),
        Image.new("RGB", (1, 1)),
    ],
    ids=["white", "black", "transparent", "palette", "sliver", "1x1"],
)
def test_blank_and_tiny_panels_are_not_sem(image: Image.Image):
    # a flat panel once gave NaN features and, through min/max clamping, a score of 1.0
    features = image_features(image)
    assert all(np.isfinite(v) for v in features.values())
    assert not sem_score(image).is_sem


def test_threshold_keyword():
    verdict = sem_score(sem_like(), threshold=1.0)
    assert not verdict.is_sem
    with pytest.raises(ValueError):
        sem_score(sem_like(), threshold=1.5)


def test_caption_moves_score_in_the_right_direction():
    image = white_plot()
    base = sem_score(image).score
    assert sem_score(image, "Figure 2. SEM images of the fracture surface.").score > base
    assert sem_score(image, "Figure 2. TEM images of nanoparticles.").score < sem_score(image, "Figure 2.").score
    assert caption_sem_evidence("FE-SEM micrograph of the glass") > 0 > caption_sem_evidence("HRTEM lattice fringes")


def test_mean_sem_is_not_a_microscope():
    assert caption_features("Bars show mean ± SEM (n = 3).")["sem"] == 0
    assert caption_features("Scanning electron micrographs of the film")["sem"] == 1
    for text in ("SE image of the fracture surface", "BSE micrograph", "FE-SEM image", "In-lens detector image"):
        assert caption_features(text)["sem"] == 1, text
    assert caption_features("Se content of the glass")["sem"] == 0


def test_caption_naming_only_plots_speaks_against_sem():
    assert caption_features("Fig. 3 DSC curves of the glass at different heating rates.")["plots_only"] == 1
    assert caption_features("(a) XRD patterns; (b) SEM image of the film.")["plots_only"] == 0  # microscopy named
    assert caption_features("SEM image of the glass.")["plots_only"] == 0
    # a generated micrograph paired with a plot caption (a figure-extraction slip) is not called SEM
    assert not sem_score(sem_like(), "Fig. 3 DSC curves of the as annealed glass.").is_sem
    assert caption_sem_evidence("XRD patterns of the samples.") < caption_sem_evidence("Figure 2.")


def test_mixed_caption_leaves_decision_to_pixels():
    mixed = "Figure 3. (a) TEM image of the particles; (b) SEM image of the film."
    assert caption_features(mixed)["sem_and_other"] == 1
    sem_only = sem_score(white_plot(), "Figure 3. SEM image of the film.").score
    mixed_plot = sem_score(white_plot(), mixed).score
    mixed_sem = sem_score(sem_like(), mixed).score
    assert mixed_plot < sem_only  # naming TEM too weakens the caption's vote
    assert mixed_sem > mixed_plot  # and the pixels move the score


def test_sem_metrics_known_confusion():
    m = sem_metrics(tp=3, fp=1, fn=2, tn=4)
    assert m["precision"] == 0.75 and m["recall"] == 0.6 and m["accuracy"] == 0.7 and m["n"] == 10
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35, abs=1e-4)


def test_benchmark_on_tiny_manifest(tmp_path: Path):
    (tmp_path / "images").mkdir()
    sem_like(0).save(tmp_path / "images/sem.png")
    white_plot().save(tmp_path / "images/plot.png")
    fluorescence_like().save(tmp_path / "images/fluo.jpg")
    (tmp_path / "images/broken.jpg").write_bytes(b"not a jpeg")
    entries = [
        {"file": "images/sem.png", "label": {"is_sem": True, "figure_caption": "SEM image", "instrument": "SEM"}},
        {"file": "images/plot.png", "label": {"is_sem": False, "figure_caption": "XRD pattern", "instrument": "XRD"}},
        # synthetic-corpus variant: labels at top level
        {"file": "images/fluo.jpg", "is_sem": False, "caption": "Fluorescence image"},
        {"file": "images/broken.jpg", "label": {"is_sem": True, "figure_caption": "SEM"}},
        {"file": "images/missing.png", "label": {"is_sem": False, "figure_caption": ""}},
    ]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"description": "tiny", "entries": entries}))
    for image_only in (False, True):
        result = run_sem_benchmark(manifest, image_only=image_only)
        assert result["n"] == 3 and result["n_unreadable"] == 2
        assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (1, 0, 0, 2)
        assert result["precision"] == 1.0 and result["recall"] == 1.0
        assert result["mode"] == ("image-only" if image_only else "caption+image")
        assert result["images_per_second"] > 0 and result["ms_per_panel"] > 0
        # three panels cannot be split into grouped folds: the headline says it is the shipped model's, not in-sample
        assert result["headline"] == "shipped_model" and "one class" in result["held_out"]["skipped"]
        assert result["shipped_model"]["in_sample"] is False and result["shipped_model"]["n"] == 3


@pytest.mark.parametrize(
    ("caption", "panel", "flags"),
    [
        ("Figure 3. (a) TEM image of the particles; (b) SEM image of the film.", "b", {"sem", "sem_only"}),
        ("Figure 3. (a) TEM image of the particles; (b) SEM image of the film.", "a", {"tem"}),
        ("Fig. 2 SEM images of the samples: (a) the as annealed glass; (b) after 2 h at 700 C.", "b", {"sem", "sem_only"}),
        ("(a-c) SEM images of the film; (d) AFM height map.", "b", {"sem", "sem_only"}),
        ("(a-c) SEM images of the film; (d) AFM height map.", "d", {"afm"}),
        ("a) Raman map. d) Optical image and e) SEM of the device.", "e", {"sem", "sem_only"}),
        ("(d and e) FE-SEM images; (a) TEM.", "e", {"sem", "sem_only"}),
        ("SEM image of the glass.", "c", {"sem", "sem_only"}),  # the caption never names panel c: all of it counts
        ("(a) TEM image; (b) SEM image.", None, {"sem", "tem", "sem_and_other"}),
        ("(a) SEM image of the film; (b) higher magnification of (a).", "b", {"sem", "sem_only"}),  # nothing in b: all
    ],
)
def test_caption_for_panel(caption: str, panel: str | None, flags: set[str]):
    assert {k for k, v in caption_features(caption_for_panel(caption, panel)).items() if v} == flags


def test_panel_letter_sharpens_a_mixed_caption():
    mixed = "Figure 3. (a) TEM image of the particles; (b) SEM image of the film."
    image = sem_like()
    assert sem_score(image, mixed, panel="b").score > sem_score(image, mixed).score > sem_score(image, mixed, panel="a").score


def _render_plot(kind: str, seed: int) -> Image.Image:
    """An XRD or DSC plot from the synthetic-paper generator, rendered at 150 dpi as the figures stage does."""
    import io

    from reportlab.pdfgen import canvas

    from glassllava.pdfdoc import open_pdf
    from glassllava.synth import plots
    from glassllava.synth.history import sample_histories

    rng = np.random.default_rng(seed)
    samples = sample_histories("crystallisation", "lithium disilicate", rng)
    data = plots.xrd_data(samples, rng) if kind == "xrd" else plots.dsc_data(samples, rng)
    buffer = io.BytesIO()
    page = canvas.Canvas(buffer, pagesize=(260, 200), invariant=1)
    plots.draw_plot(page, data, (5, 5, 255, 195), 200, "Helvetica", "b")
    page.showPage()
    page.save()
    with open_pdf(buffer.getvalue()) as document:
        return document[0].render(scale=150 / 72).to_pil()


def test_generated_micrographs_are_sem_and_generated_plots_are_not():
    from glassllava.synth import PHENOMENA, MicrographSpec, render_micrograph

    rng = np.random.default_rng(12345)  # not the seed scripts/fit_sem.py trains on
    for k, phenomenon in enumerate(PHENOMENA[::2]):
        spec = MicrographSpec(phenomena=(phenomenon,), magnification=float(rng.choice([500, 5000])), bar_style=("fei", "zeiss")[k % 2])
        image = render_micrograph(spec, rng)[0].resize((400, 350))
        assert sem_score(image).is_sem, phenomenon
        assert sem_score(image, "Fig. 4. SEM micrographs of the heat-treated glass.").score > 0.9, phenomenon
    for kind, seed in (("xrd", 1), ("dsc", 2), ("xrd", 3)):
        plot = _render_plot(kind, seed)
        assert not sem_score(plot).is_sem, kind
        assert not sem_score(plot, "Fig. 1. (a) DSC curves of the glass; (b) XRD patterns of the samples.").is_sem, kind


@pytest.mark.slow
def test_figures_stage_sem_accuracy_on_a_generated_corpus(tmp_path: Path):
    """Every figure the stage finds in generated papers gets the right SEM decision (best panel, as figures.py)."""
    from glassllava.figures import extract_paper_figures
    from glassllava.synth import generate_corpus

    manifest = json.loads(generate_corpus(tmp_path / "corpus", 3, seed=2024).read_text())
    right = total = panels_right = panels = 0
    for doc in manifest["documents"]:
        truth = {f["label"]: f["is_sem"] for f in doc["figures"] if f["kind"] == "figure"}
        found = extract_paper_figures(tmp_path / "corpus/pdfs" / doc["pdf"], tmp_path / "images")
        for region in found.figures:
            if region.label not in truth or region.box is None:
                continue
            scores = []
            for i in range(len(region.panels)):
                with Image.open(found.panel_images[(region.label, i)].path) as image:
                    scores.append(sem_score(image, region.caption).score)  # as figures.py calls it
                    panels_right += sem_score(image).is_sem == truth[region.label]
                    panels += 1
            total += 1
            right += (max(scores, default=0.0) >= 0.5) == truth[region.label]
    assert total >= 8 and any(truth.values())
    assert right / total >= 0.97
    assert panels_right / panels >= 0.9  # image-only, per panel


# ---- the pretrained backbone ------------------------------------------------------------------------------


def test_backbone_loads_once_in_eval_mode(monkeypatch):
    import timm

    from glassllava.sem_backbone import load_panel_encoder

    sem_score(sem_like())  # loads the backbone, or finds it loaded
    encoder = load_panel_encoder()

    def second_build(*args, **kwargs):
        raise AssertionError("the SEM backbone was built a second time")

    monkeypatch.setattr(timm, "create_model", second_build)
    for seed in range(3):
        sem_score(sem_like(seed), "Fig. 1. SEM image of the glass.")
    assert load_panel_encoder() is encoder
    assert not encoder.network.training and not any(p.requires_grad for p in encoder.network.parameters())


def test_scores_are_deterministic():
    from glassllava.sem_backbone import load_panel_encoder

    image = sem_like(3)
    first, again = sem_score(image, "Fig. 2. Micrographs of the samples."), sem_score(image.copy(), "Fig. 2. Micrographs of the samples.")
    assert first.score == again.score and first.evidence == again.evidence
    assert {"backbone_logit", "pixel_logit", "image_logit", "caption_logit"} <= set(first.evidence)
    encoder = load_panel_encoder()
    assert np.array_equal(encoder.embed([image])[0], encoder.embed([image, white_plot()])[0])  # the batch does not matter


def test_model_refuses_other_backbone_weights_and_views(tmp_path: Path):
    import copy

    from glassllava.sem import SemModelError, backbone_encoder, load_sem_model

    shipped = load_sem_model()
    assert backbone_encoder(shipped).weights_sha256 == shipped["backbone"]["weights_sha256"]
    other_weights = copy.deepcopy(shipped)
    other_weights["backbone"]["weights_sha256"] = "0" * 64
    with pytest.raises(SemModelError, match="sha256"):
        backbone_encoder(other_weights)
    other_views = copy.deepcopy(shipped)
    other_views["backbone"]["views"] = "colour-320"
    (tmp_path / "sem_model.json").write_text(json.dumps(other_views))
    with pytest.raises(SemModelError, match="views"):
        load_sem_model(tmp_path / "sem_model.json")


def test_figures_cache_key_follows_the_backbone_code(monkeypatch):
    """The figures stage re-scores papers when the backbone's view recipe (sem_backbone.py) changes."""
    from glassllava import figures
    from glassllava.params import FiguresParams

    before = figures._code_key(FiguresParams())
    real_read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: real_read_bytes(self) + (b"#" if self.name == "sem_backbone.py" else b""))
    assert figures._code_key(FiguresParams()) != before


def test_caption_names_x_ray_ct_and_backscatter_composition():
    assert caption_features("(a) Cross-section reconstructed from X-ray attenuation projections of a micro CT")["xray_ct"] == 1
    assert caption_features("Figure 3. X-ray tomography slices of the foam.")["xray_ct"] == 1
    assert caption_features("Charge-transfer (CT) band of the complex.")["xray_ct"] == 0
    assert caption_features("Fig. 10. BSC images of composites")["sem_only"] == 1
    assert caption_sem_evidence("Figure 1. Micro-CT slice of the electrode.") < caption_sem_evidence("Figure 1.")


def _panel_set(x: np.ndarray, y: np.ndarray, papers: np.ndarray):
    from glassllava.sem import CAPTION_FEATURE_NAMES
    from glassllava.sem_fit import PanelSet

    rng = np.random.default_rng(1)
    n = len(y)
    return PanelSet(
        x, rng.normal(size=(n, len(FEATURE_NAMES))), np.zeros((n, len(CAPTION_FEATURE_NAMES))), y, papers, ["x"] * n, np.zeros(n, bool)
    )


def test_grouped_predictions_follow_the_embeddings():
    """Held out with folds grouped by paper: separable embeddings score high, shuffled labels at chance."""
    from glassllava.sem_fit import grouped_predictions, held_out_obstacle, metrics

    rng = np.random.default_rng(0)
    n, dim = 90, 12
    y = (rng.random(n) < 0.4).astype(float)
    x = rng.normal(size=(n, dim)) + np.outer(y - 0.5, rng.normal(size=dim)) * 1.5
    papers = np.array([f"paper-{i % 15}" for i in range(n)], dtype=object)
    separable = grouped_predictions(_panel_set(x, y, papers), None, folds=3)
    assert metrics(1 / (1 + np.exp(-separable.image)), y)["accuracy"] >= 0.85
    assert len(set(separable.fold.tolist())) == 3 and all(len(set(separable.fold[papers == p].tolist())) == 1 for p in set(papers))
    shuffled = grouped_predictions(_panel_set(x, rng.permutation(y), papers), None, folds=3)
    assert metrics(1 / (1 + np.exp(-shuffled.image)), y)["accuracy"] < 0.75  # nothing to learn: must not look good
    assert "3 papers" in held_out_obstacle(_panel_set(x, y, np.array(["a", "b"] * (n // 2), dtype=object)))


def test_backbone_probe_weighs_papers_not_panels():
    """paper_weights: a paper's panels count (panels of it)^-0.5 each, mean 1; a row weight of 2 is that row twice."""
    from glassllava.sem_fit import fit_logistic, paper_weights

    weights = paper_weights(np.array(["big"] * 4 + ["small"], dtype=object))
    assert np.isclose(weights.mean(), 1.0) and np.isclose(weights[-1], 2 * weights[0])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), (rng.random(30) < 0.5).astype(float)
    twice = fit_logistic(np.r_[x, x[:1]], np.r_[y, y[:1]], 1.0)
    weighted = fit_logistic(x, y, 1.0, row_weights=np.r_[2.0, np.ones(29)])
    assert np.allclose(twice[0], weighted[0], atol=1e-4) and np.isclose(twice[1], weighted[1], atol=1e-4)


# ---- real panels from ../shared -----------------------------------------------------------------------------


@pytest.mark.shared
def test_known_shared_micrographs(shared_dir: Path):
    """X-ray CT slices and an EDX map score low, an SEM cross-section high, with and without the caption.
    The shipped model was fitted on these crops (in-sample): a regression check, not an accuracy claim."""
    from glassllava.sem import _open_panel, read_labelled_manifest

    manifest = shared_dir / "data/micrographs/manifest.json"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not found")
    cases = {
        "images/chemrxiv_10_26434_2023_wqvkv_fig_3_0.jpg": False,  # X-ray tomography slice of concrete
        "images/chemrxiv_10_26434_2022_62zdk_fig_3_0.jpg": False,  # synchrotron X-ray tomography slice of a cell
        "images/chemrxiv_10_26434_13153976_v1_fig_4_1.jpg": False,  # EDX element map
        "images/chemrxiv_10_26434_13153976_v1_fig_2_2.jpg": True,  # FIB cross-section, SEM
    }
    entries = {e.file: e for e in read_labelled_manifest(manifest)}
    for file, is_sem in cases.items():
        assert entries[file].is_sem is is_sem, file
        with _open_panel(manifest.parent / file) as image:
            for caption in (None, entries[file].caption):
                assert sem_score(image, caption).is_sem is is_sem, (file, caption is not None)


@pytest.mark.shared
@pytest.mark.slow
def test_real_papers_ct_spectra_and_charts_low_micrographs_high(shared_dir: Path, tmp_path: Path):
    """Papers the classifier never saw, through the figures stage's own scoring (figure_sem_verdicts: caption,
    panel letter, best panel): X-ray CT slices, EDX spectra, XRD patterns and bar charts are not SEM figures;
    SEM-BSE, BSC and SE micrographs are."""
    from glassllava.figures import extract_paper_figures, figure_sem_verdicts

    kintsugi = shared_dir / "data/papers/kintsugi_imaging_battery_electrodes_JES2022.pdf"
    # X-ray CT slices of an electrode look like its BSE cross-sections (Fig. 4): only the caption ("micro CT") tells them apart
    caption_decides = {(kintsugi.name, "1")}
    papers = {
        kintsugi: {"1": False, "3": True, "4": True},
        shared_dir / "bench/figures/pdfs/mineru_academic_literature_0b2c9c91.pdf": {
            "2": False, "3": True, "4": True, "5": False, "10": True  # XRD; SEM; SEM; XRD and EDX spectra; BSC
        },  # fmt: skip
        shared_dir / "bench/figures/pdfs/mineru_paper_iop_ees.pdf": {"3": False, "4": False, "5": False, "6": False, "7": False},
    }
    for pdf, truth in papers.items():
        if not pdf.is_file():
            pytest.skip(f"{pdf} not found")
        result = extract_paper_figures(pdf, tmp_path / pdf.stem)
        found = {r.label: r for r in result.figures if r.box is not None}
        for label, is_sem in truth.items():
            scores = [v.score for v in figure_sem_verdicts(found[label], result)]
            assert (max(scores) >= 0.5) is is_sem, (pdf.name, label, [round(s, 2) for s in scores])
            if not is_sem and (pdf.name, label) not in caption_decides:  # plots and spectra: not SEM from pixels alone either
                for i in range(len(found[label].panels)):
                    with Image.open(result.panel_images[(label, i)].path) as image:
                        assert not sem_score(image).is_sem, (pdf.name, label, i)


@pytest.mark.shared
@pytest.mark.slow
def test_shipped_numbers_on_shared_micrographs(shared_dir: Path):
    """All 623 crops through the benchmark's shipped-model path (held-out refit skipped): labelled in-sample, and
    equal to the in-sample numbers recorded at fit time; the held-out ones are checked in the test below."""
    manifest = shared_dir / "data/micrographs/manifest.json"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not found")
    recorded = json.loads((REPO / "glassllava/sem_model.json").read_text())["evaluation"]
    for image_only, key in ((False, "caption+image"), (True, "image_only")):
        result = run_sem_benchmark(manifest, image_only=image_only, held_out=False)
        assert result["n"] == 623 and result["n_unreadable"] == 0 and result["headline"] == "shipped_model"
        assert result["shipped_model"]["in_sample"] is True
        for metric in ("precision", "recall", "accuracy"):
            assert result[metric] == pytest.approx(recorded[key]["full_manifest"][metric], abs=0.005), (key, metric)


def assert_close(a, b, path="model", tol=1e-2):
    """Equal structure and strings; counts within 2; other numbers within ``tol`` (absolute, or relative for large ones)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}", tol)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]", tol)
    elif isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
        assert abs(a - b) <= 2, f"{path}: {a} != {b}"  # confusion counts: a borderline image may flip
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        assert abs(a - b) <= tol * max(1.0, abs(b)), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.shared
@pytest.mark.slow
def test_fit_reproduces_model_and_held_out_numbers(shared_dir: Path, tmp_path: Path):
    """scripts/fit_sem.py rebuilds sem_model.json; its grouped (by paper) 5-fold numbers are the honest ones."""
    import subprocess
    import sys

    manifest = shared_dir / "data/micrographs/manifest.json"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not found")
    out = tmp_path / "sem_model.json"
    subprocess.run([sys.executable, str(REPO / "scripts/fit_sem.py"), "--manifest", str(manifest), "--out", str(out)], check=True)
    refit = json.loads(out.read_text())
    committed = json.loads((REPO / "glassllava/sem_model.json").read_text())
    # the same model up to floating-point noise: BLAS kernels differ between CPUs (trees then pick other split
    # points), so the refit must match in structure and in its numbers, not bit for bit
    assert refit.keys() == committed.keys() and refit["backbone"] == committed["backbone"]
    assert refit["pixel_model"]["features"] == committed["pixel_model"]["features"]
    assert_close(refit["evaluation"], committed["evaluation"], "evaluation")
    held_out_caption = refit["evaluation"]["caption+image"]["grouped_cv"]
    held_out_image = refit["evaluation"]["image_only"]["grouped_cv"]
    # measured held out: caption 0.949 / 0.916 / 0.944, image only 0.842 / 0.714 / 0.823 (P / R / accuracy; before the
    # paper-weighted backbone probe 0.948 / 0.905 / 0.939 and 0.826 / 0.706 / 0.814); the pixel model alone: caption
    # 0.935 / 0.928 / 0.942, image only 0.718 / 0.679 / 0.753. Floors just under the measurements.
    assert held_out_caption["precision"] >= 0.935 and held_out_caption["recall"] >= 0.90 and held_out_caption["accuracy"] >= 0.935
    assert held_out_image["precision"] >= 0.825 and held_out_image["recall"] >= 0.70 and held_out_image["accuracy"] >= 0.81
    # the stack must beat each image model alone, or the pixel features no longer earn their place
    for alone in ("backbone_only", "pixel_only"):
        assert held_out_image["accuracy"] > refit["evaluation"][alone]["grouped_cv"]["accuracy"], alone
    if min(held_out_caption["precision"], held_out_caption["recall"]) < 0.95 or min(
        held_out_image["precision"], held_out_image["recall"]
    ) < 0.85:
        keys = ("precision", "recall", "accuracy")
        pytest.xfail(
            "held-out targets (0.95 caption, 0.85 image only) not met: caption "
            f"{[held_out_caption[k] for k in keys]}, image-only {[held_out_image[k] for k in keys]}"
        )


@pytest.mark.slow
def test_fit_sem_cli_refits_the_default_model(tmp_path: Path):
    """`glassllava fit-sem` without --clip fits the shipped kind of model on any labelled manifest and prints
    its grouped held-out numbers; the file it writes loads and scores."""
    from typer.testing import CliRunner

    from glassllava.cli import app
    from glassllava.sem import load_sem_model

    (tmp_path / "images").mkdir()
    entries = []
    for k in range(18):
        is_sem = k % 2 == 0
        name = f"images/p{k}.png"
        (sem_like(k) if is_sem else (white_plot() if k % 4 == 1 else fluorescence_like(k))).save(tmp_path / name)
        caption = "Fig. 2. SEM micrograph of the glass." if is_sem and k % 3 else "Fig. 3. Images of the samples."
        entries.append({"file": name, "label": {"is_sem": is_sem, "figure_caption": caption, "doi": f"10.0/p{(k // 2) % 6}"}})  # both kinds
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"entries": entries}))
    out = tmp_path / "sem_model.json"
    result = CliRunner().invoke(app, ["fit-sem", "--manifest", str(manifest), "--out", str(out), "--folds", "3"])
    assert result.exit_code == 0, result.output
    model = load_sem_model(out)
    assert model["fitted_on"]["n"] == 18 and model["fitted_on"]["n_papers"] == 6
    assert model["evaluation"]["image_only"]["grouped_cv"]["accuracy"] >= 0.8  # easy panels, held out by paper
    assert '"grouped_cv"' in result.output
