"""CLIP image encoders and the SEM classifier's CLIP head, with a tiny open_clip model saved locally."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from glassllava.cli import app  # noqa: E402
from glassllava.sem import SemModelError, clip_encoder, load_clip_head, sem_score  # noqa: E402
from glassllava.vision import ClipEncoder, ClipSpec, VisionModelError, load_clip  # noqa: E402

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
}


def save_tiny_clip(folder: Path, seed: int = 0) -> str:
    """An open_clip model folder as the hub lays it out: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TINY, "preprocess_cfg": {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    load_clip.cache_clear()
    return f"local-dir:{folder}"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


def _coloured(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A smooth colour field, like a stained optical or fluorescence micrograph."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.random((size, size, 3)), (6, 6, 0))
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    tint = rng.random(3) * 0.8 + 0.2
    return Image.fromarray((255 * field * tint).astype(np.uint8))


@pytest.fixture(scope="module")
def micrograph_manifest(tmp_path_factory) -> Path:
    """12 generated SEM micrographs and 12 colour fields from six 'papers', in the shared manifest's format."""
    from glassllava.synth import PHENOMENA, MicrographSpec, render_micrograph

    root = tmp_path_factory.mktemp("micrographs")
    (root / "images").mkdir()
    rng = np.random.default_rng(3)
    entries = []
    for k in range(24):
        is_sem = (k // 6) % 2 == 0  # every paper has both kinds
        if is_sem:
            spec = MicrographSpec(phenomena=(PHENOMENA[k % len(PHENOMENA)],), magnification=2000.0, bar_style="fei")
            image = render_micrograph(spec, rng)[0].resize((96, 84))
        else:
            image = _coloured(rng)
        name = f"images/p{k % 6}_{k}.png"
        image.convert("RGB").save(root / name)
        caption = "Fig. 2. SEM micrograph of the annealed glass." if is_sem and k % 3 == 0 else "Fig. 3. Images of the samples."
        entries.append({"file": name, "label": {"is_sem": is_sem, "figure_caption": caption, "doi": f"10.0/p{k % 6}", "instrument": "SEM" if is_sem else "Optical"}})
    (root / "manifest.json").write_text(json.dumps({"entries": entries}))
    return root / "manifest.json"


def test_encoder_loads_a_local_folder_and_gives_unit_embeddings(tiny_clip, tmp_path):
    encoder = load_clip(ClipSpec(tiny_clip))
    images = [Image.new("RGB", (120, 80), "red"), Image.new("L", (40, 40), 128), Image.new("RGB", (64, 64), "white")]
    x = encoder.embed(images, batch_size=2)
    assert x.shape == (3, 32) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    torch.manual_seed(123)  # a fresh load reads the saved weights, whatever the random state
    again = ClipEncoder(ClipSpec(tiny_clip)).embed(images)
    assert np.allclose(x, again, atol=1e-5)
    # the fingerprint names the bytes, not the folder: a copy elsewhere has the same one, other weights do not
    copy = save_tiny_clip(tmp_path / "copy")
    other = save_tiny_clip(tmp_path / "other", seed=1)
    assert ClipSpec(copy).fingerprint() == encoder.fingerprint != ClipSpec(other).fingerprint()


def test_missing_weights_say_what_was_looked_for(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VisionModelError, match="open_clip_config.json"):
        ClipSpec(f"local-dir:{empty}").fingerprint()
    (empty / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    with pytest.raises(VisionModelError, match="open_clip_model.safetensors"):
        load_clip(ClipSpec(f"local-dir:{empty}"))
    with pytest.raises(VisionModelError, match="does not exist"):
        ClipSpec("ViT-B-32", str(tmp_path / "missing.pt")).fingerprint()


def test_fit_sem_then_bench_and_score_with_the_head(tiny_clip, micrograph_manifest, tmp_path):
    head_path = tmp_path / "head.json"
    runner = CliRunner()
    fit = runner.invoke(app, ["fit-sem", "--manifest", str(micrograph_manifest), "--clip", tiny_clip, "--out", str(head_path), "--folds", "3"])
    assert fit.exit_code == 0, fit.output
    head = load_clip_head(head_path)
    assert head["kind"] == "clip-linear-probe" and head["backbone"]["dim"] == 32
    assert head["backbone"]["fingerprint"] == ClipSpec(tiny_clip).fingerprint()
    assert head["fitted_on"]["n"] == 24 and head["fitted_on"]["n_papers"] == 6
    # a random tiny backbone cannot generalise (test_fit_head_... checks the held-out numbers); these prove the plumbing
    assert {m: head["evaluation"][m]["grouped_cv"]["n"] for m in ("image_only", "caption+image")} == {"image_only": 24, "caption+image": 24}

    out = tmp_path / "bench.json"
    bench = runner.invoke(app, ["bench", "sem", "--manifest", str(micrograph_manifest), "--image-only", "--clip-head", str(head_path), "--out", str(out)])
    assert bench.exit_code == 0, bench.output
    result = json.loads(out.read_text())
    assert result["classifier"].startswith("clip head") and result["n"] == 24 and result["accuracy"] >= 0.9

    sem_image = Image.open(micrograph_manifest.parent / "images/p0_0.png")
    verdict = sem_score(sem_image, "Fig. 2. SEM micrograph of the annealed glass.", clip_head=head)
    assert verdict.is_sem and set(verdict.evidence) == {"clip_logit", "caption_logit"}
    generic = sem_score(sem_image, "Fig. 3. Images of the samples.", clip_head=head)
    assert verdict.score > generic.score  # the head's combiner learnt that a caption naming SEM speaks for SEM


def test_fit_head_held_out_numbers_follow_the_embeddings():
    """Grouped cross-validation: separable embeddings score high held out, shuffled labels score at chance."""
    from glassllava.sem import CAPTION_FEATURE_NAMES, caption_features
    from glassllava.sem_fit import fit_head

    rng = np.random.default_rng(0)
    n, dim = 160, 48
    y = (rng.random(n) < 0.4).astype(float)
    direction = rng.normal(size=dim)
    x = rng.normal(size=(n, dim)) + np.outer(y - 0.5, direction) * 0.8
    groups = np.array([f"paper-{i % 20}" for i in range(n)])
    captions = np.array([[caption_features("Fig. 1. Images of the samples.")[k] for k in CAPTION_FEATURE_NAMES]] * n)
    head = fit_head(x, y, groups, captions)
    assert head["evaluation"]["image_only"]["grouped_cv"]["accuracy"] >= 0.9
    assert head["fitted_on"]["n_papers"] == 20 and len(head["image_model"]["weights"]) == dim
    shuffled = fit_head(x, rng.permutation(y), groups, captions)["evaluation"]["image_only"]["grouped_cv"]
    assert shuffled["accuracy"] < 0.75, shuffled  # nothing to learn: held-out numbers must not look good
    with pytest.raises(ValueError, match="both"):
        fit_head(x, np.ones(n), groups, captions)
    with pytest.raises(ValueError, match="3 papers"):
        fit_head(x, y, np.array(["a", "b"] * (n // 2)), captions)


def test_a_head_refuses_other_backbone_weights(tiny_clip, micrograph_manifest, tmp_path):
    from glassllava.sem_fit import fit_clip_head

    folder = tmp_path / "clip"
    model = save_tiny_clip(folder)
    head = fit_clip_head(micrograph_manifest, model, folds=3)
    head_path = tmp_path / "head.json"
    head_path.write_text(json.dumps(head))
    assert clip_encoder(load_clip_head(head_path)).dim == 32
    save_tiny_clip(folder, seed=7)  # someone replaced the weights in place
    with pytest.raises(SemModelError, match="refit"):
        clip_encoder(load_clip_head(head_path))
    result = CliRunner().invoke(app, ["bench", "sem", "--manifest", str(micrograph_manifest), "--clip-head", str(head_path)])
    assert result.exit_code == 1 and "refit" in result.output
    (tmp_path / "bad.json").write_text(json.dumps({**head, "kind": "something-else"}))
    with pytest.raises(SemModelError, match="not a CLIP head"):
        load_clip_head(tmp_path / "bad.json")


def test_figures_stage_scores_panels_with_the_configured_head(tiny_clip, micrograph_manifest, tmp_path):
    """figures.sem_clip_head switches the stage's classifier and its cache key; a missing head fails the stage at once."""
    import pyarrow.parquet as pq

    from glassllava.figures import _code_key, run_figures
    from glassllava.ingest import run_ingest
    from glassllava.params import CorpusParams, DataLayout, FiguresParams, IngestParams
    from glassllava.sem_fit import fit_clip_head
    from glassllava.synth import generate_corpus

    head_path = tmp_path / "head.json"
    head_path.write_text(json.dumps(fit_clip_head(micrograph_manifest, tiny_clip, folds=3)))
    layout = DataLayout(tmp_path / "data")
    generate_corpus(layout.corpus, papers=1, seed=5)
    run_ingest(CorpusParams(sources=["generated"], inbox=str(tmp_path / "inbox")), IngestParams(), layout)

    default = FiguresParams(dpi=72)
    with_head = FiguresParams(dpi=72, sem_clip_head=str(head_path))
    assert _code_key(default) != _code_key(with_head)
    run_figures(default, layout)
    pixel_scores = [p["sem_score"] for p in pq.read_table(layout.figures / "panels.parquet").to_pylist()]
    report = run_figures(with_head, layout)
    assert report.papers_processed == 1
    clip_scores = [p["sem_score"] for p in pq.read_table(layout.figures / "panels.parquet").to_pylist()]
    assert len(clip_scores) == len(pixel_scores) >= 3 and clip_scores != pixel_scores
    with pytest.raises(SemModelError, match="does not exist"):
        run_figures(FiguresParams(dpi=72, sem_clip_head=str(tmp_path / "missing.json")), layout)
