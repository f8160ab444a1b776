"""SEM-micrograph classifier: a figure panel (PIL image) and optionally its caption in, an SEM score out.

Two small models, fitted by ``scripts/fit_sem.py`` and stored in ``sem_model.json``:

1. image model: standardised pixel features (``glassllava.sem_features``) -> logistic log-odds, plus
   200 boosted depth-2 trees on the raw features (``trees_logit``) -> image log-odds;
2. caption combiner: image log-odds + caption keyword flags (SEM, TEM, optical, AFM, fluorescence,
   EDX, STM, "plots only") -> final log-odds. A caption often describes several panels ("(a) TEM ...
   (b) SEM ..."), so when it names SEM and another technique the fitted weights leave the decision to
   the pixels; when the panel letter is known, ``sem_score(..., panel="b")`` reads only that panel's clause.

Optionally a CLIP head (``glassllava fit-sem --clip``, ``glassllava.sem_fit``) replaces the image model:
a linear probe on a CLIP image embedding, with its own caption combiner (``sem_score(..., clip_head=...)``).

``run_sem_benchmark`` scores a labelled manifest (the ``shared/data/micrographs`` format) and returns
precision/recall/accuracy with a per-instrument error breakdown.
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
        r"|\bBSED?\b|\bSE2? (?:images?|micrographs?|detector)\b"
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
}
# Non-imaging measurements: a caption that names only these ("DSC curves ...", "XRD patterns of ...") describes plots.
MEASUREMENT_PLOTS = re.compile(
    r"(?i:\b(?:curves?|patterns?|spectra|spectrum|isotherms?|plots?|histograms?|diffractograms?|thermograms?|profiles?)\b)"
    r"|\b(?:DSC|XRD|TGA|DTA|FTIR|XPS|NMR)\b"
)
CAPTION_FEATURE_NAMES: tuple[str, ...] = (*CAPTION_TECHNIQUES, "sem_only", "sem_and_other", "plots_only")


# An instrument data bar on a grey image is close to proof of SEM, but the weak literature labels cannot
# teach it (only ~10% of literature crops keep the bar, and TEM crops sometimes have a similar strip), so
# the fitted weight is small. This prior restores it; it costs ~1 point of image-only precision on the
# shared manifest (scripts/fit_sem.py reports numbers with it applied).
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
    """Read and check the fitted coefficients (cached)."""
    try:
        model = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SemModelError(f"cannot read SEM model {path}: {err}") from err
    image_names = tuple(model.get("image_model", {}).get("features", ()))
    if image_names != FEATURE_NAMES or "trees" not in model.get("image_model", {}):
        raise SemModelError(
            f"{path} was fitted on features {image_names}, the code computes {FEATURE_NAMES}; rerun scripts/fit_sem.py"
        )
    caption_names = tuple(model.get("caption_model", {}).get("features", ()))
    if caption_names != ("image_logit", *CAPTION_FEATURE_NAMES):
        raise SemModelError(f"{path} caption features {caption_names} do not match the code; rerun scripts/fit_sem.py")
    return model


def caption_sem_evidence(caption: str, model: dict[str, Any] | None = None) -> float:
    """Log-odds that a panel is SEM contributed by its caption alone (positive: the caption says SEM)."""
    model = model or load_sem_model()
    weights = model["caption_model"]["weights"]
    flags = caption_features(caption)
    return float(sum(weights[name] * flags[name] for name in CAPTION_FEATURE_NAMES)) + caption_prior(flags)


def caption_prior(flags: dict[str, float]) -> float:
    """Fixed log-odds offset for a caption that names only plots (see PLOTS_ONLY_PRIOR_LOGIT)."""
    return PLOTS_ONLY_PRIOR_LOGIT * flags["plots_only"]


def image_sem_logit(features: dict[str, float], model: dict[str, Any] | None = None) -> float:
    """Log-odds from pixel features alone."""
    model = model or load_sem_model()
    image_model = model["image_model"]
    x = np.array([features[n] for n in FEATURE_NAMES])
    z = (x - image_model["mean"]) / np.array(image_model["scale"])
    linear = float(z @ np.array(image_model["weights"]) + image_model["bias"])
    return linear + float(trees_logit(image_model["trees"], x[None])[0]) + data_bar_prior(features)


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


def data_bar_prior(features: dict[str, float]) -> float:
    """Extra log-odds for a grey image with an instrument data bar (see DATA_BAR_PRIOR_LOGIT)."""
    grey = features["colour_fraction"] <= GREY_COLOUR_FRACTION
    return DATA_BAR_PRIOR_LOGIT * features["data_bar"] if grey else 0.0


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
            instead of the pixel features of ``sem_model.json``.

    Returns:
        SemVerdict with the score, the decision and the main features as evidence.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if clip_head is not None:
        model = clip_head
        logit = clip_image_logit(clip_encoder(clip_head).embed([image])[0], clip_head)
        evidence = {"clip_logit": round(logit, 4)}
    else:
        model = load_sem_model()
        features = image_features(image)
        logit = image_sem_logit(features, model)
        evidence = {name: round(features[name], 4) for name in FEATURE_NAMES}
        evidence["image_logit"] = round(logit, 4)
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
    manifest: Path, image_only: bool = False, threshold: float = 0.5, clip_head: str | Path | None = None
) -> dict[str, Any]:
    """Score the classifier on a labelled manifest.

    The manifest is ``{"entries": [{"file": "images/x.jpg", "label": {"is_sem": bool,
    "figure_caption": str, "instrument": str, ...}}]}`` with files relative to the manifest's folder;
    ``is_sem``/``figure_caption``/``instrument`` may also sit at the entry's top level (synthetic corpus),
    and an optional ``panel_label`` ("b") narrows the caption to that panel's clause.
    Unreadable images are counted in ``n_unreadable`` and skipped. With ``clip_head`` the image
    log-odds come from that CLIP head (``glassllava fit-sem --clip``) instead of the pixel features.

    Returns:
        precision, recall, accuracy, f1, n, n_positive, tp/fp/fn/tn, mode, images_per_second,
        n_unreadable, and ``errors_by_instrument`` ({instrument: {"n", "fp", "fn"}}).
    """
    manifest = Path(manifest)
    entries = read_labelled_manifest(manifest)
    head = load_clip_head(clip_head) if clip_head else None
    if head is not None:
        clip_encoder(head)  # load (and check) the backbone before the clock starts
    counts = Counter()
    by_instrument: dict[str, Counter] = {}
    unreadable: list[str] = []
    started = time.perf_counter()
    for entry in entries:
        truth = entry.is_sem
        caption = None if image_only else entry.caption
        try:
            with _open_panel(manifest.parent / entry.file) as image:
                verdict = sem_score(image, caption, threshold=threshold, panel=entry.panel, clip_head=head)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on broken files
            log.warning("skipping unreadable image %s: %s", entry.file, err)
            unreadable.append(entry.file)
            continue
        outcome = {(True, True): "tp", (False, True): "fp", (True, False): "fn", (False, False): "tn"}
        key = outcome[(truth, verdict.is_sem)]
        counts[key] += 1
        instrument = entry.instrument or ("SEM" if truth else "other")
        by_instrument.setdefault(instrument, Counter())["n"] += 1
        by_instrument[instrument][key] += 1
    elapsed = time.perf_counter() - started
    return {
        "mode": "image-only" if image_only else "caption+image",
        "classifier": f"clip head ({head['backbone']['model']}, {head['backbone']['fingerprint']})" if head else "pixel features",
        "threshold": threshold,
        **sem_metrics(counts["tp"], counts["fp"], counts["fn"], counts["tn"]),
        "n_unreadable": len(unreadable),
        "unreadable": unreadable,
        "images_per_second": round((counts.total()) / elapsed, 1) if elapsed > 0 else 0.0,
        "errors_by_instrument": {
            name: {"n": c["n"], "fp": c["fp"], "fn": c["fn"]}
            for name, c in sorted(by_instrument.items(), key=lambda item: -(item[1]["fp"] + item[1]["fn"]))
        },
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
