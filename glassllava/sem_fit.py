"""Fitting the SEM classifier: shared pieces, and the CLIP linear probe (``glassllava fit-sem --clip``).

The default classifier (pixel features, ``sem_model.json``) is fitted by ``scripts/fit_sem.py``; a CLIP
head is fitted here, on any labelled manifest in the ``shared/data/micrographs`` format, because it
depends on the weights a user has. Both report held-out numbers the same way: folds grouped by paper
(DOI), so no paper has panels on both sides, and a caption combiner fitted on out-of-fold image log-odds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.optimize import minimize

from glassllava.sem import CAPTION_FEATURE_NAMES, _open_panel, caption_features, caption_prior, read_labelled_manifest, sem_metrics

log = logging.getLogger(__name__)

CAPTION_L2 = 1.0
CLIP_L2_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)  # chosen per training set by inner grouped folds
CLIP_HEAD_KIND = "clip-linear-probe"


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, offset: np.ndarray | float = 0.0) -> tuple[np.ndarray, float]:
    """Weights and bias minimising logistic loss + l2/2 |w|^2 (bias not penalised); ``offset`` is a fixed log-odds term."""
    design = np.c_[x, np.ones(len(x))]

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = design @ w + offset
        loss = np.sum(np.logaddexp(0, z) - y * z) + 0.5 * l2 * np.sum(w[:-1] ** 2)
        grad = design.T @ (1 / (1 + np.exp(-z)) - y)
        grad[:-1] += l2 * w[:-1]
        return float(loss), grad

    w = minimize(loss_and_grad, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B").x
    return w[:-1], float(w[-1])


def caption_offset(captions: np.ndarray) -> np.ndarray:
    """The fixed caption priors of glassllava.sem (caption_prior) for each row of caption flags."""
    return np.array([caption_prior(dict(zip(CAPTION_FEATURE_NAMES, row))) for row in captions])


def fit_caption_model(image_logit: np.ndarray, captions: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Combiner of the image log-odds with the caption flags (CAPTION_FEATURE_NAMES order)."""
    return fit_logistic(np.c_[image_logit, captions], y, CAPTION_L2, caption_offset(captions))


def grouped_folds(groups: list[str], folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index of each row; all rows of a group (a paper) share a fold."""
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[i]: k % folds for k, i in enumerate(order)}
    return np.array([fold_of[g] for g in groups])


def metrics(scores: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> dict:
    predicted = scores >= threshold
    truth = y > 0
    return sem_metrics(
        int((predicted & truth).sum()),
        int((predicted & ~truth).sum()),
        int((~predicted & truth).sum()),
        int((~predicted & ~truth).sum()),
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(z, -50, 50)))


class ImageLogits(Protocol):
    def logit(self, x: np.ndarray) -> np.ndarray: ...


def held_out(
    fit: Callable[[np.ndarray, ImageLogits | None], ImageLogits], x: np.ndarray, y: np.ndarray, captions: np.ndarray, fold: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold image log-odds and out-of-fold caption+image probabilities.

    ``fit(rows, outer)`` fits an image model on the boolean mask ``rows``; ``outer`` is ``None`` for a
    fold's model and that model for the nested fits inside its training part. The caption combiner's
    own training log-odds are out-of-fold too (nested folds), so it does not learn to trust an
    over-fitted image score.
    """
    oof_image = np.zeros(len(y))
    oof_combined = np.zeros(len(y))
    for k in sorted(set(fold.tolist())):
        train = fold != k
        model = fit(train, None)
        oof_image[~train] = model.logit(x[~train])
        inner = np.zeros(len(y))
        for j in set(fold[train].tolist()):
            part = train & (fold != j)
            inner[fold == j] = fit(part, model).logit(x[fold == j])
        w, b = fit_caption_model(inner[train], captions[train], y[train])
        test = ~train
        oof_combined[test] = _sigmoid(np.c_[oof_image[test], captions[test]] @ w + b + caption_offset(captions[test]))
    return oof_image, oof_combined


class _Probe:
    """Standardised embedding -> logistic log-odds, L2 chosen by inner grouped folds on the training rows."""

    def __init__(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray, l2: float | None = None) -> None:
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0) + 1e-6
        z = (x - self.mean) / self.scale
        self.l2 = l2 if l2 is not None else _choose_l2(z, y, groups)
        self.weights, self.bias = fit_logistic(z, y, self.l2)

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.weights + self.bias


def _choose_l2(z: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """The L2 of CLIP_L2_GRID with the lowest out-of-fold log loss (3 folds grouped by paper)."""
    if len(set(groups.tolist())) < 3:
        return CLIP_L2_GRID[1]
    folds = grouped_folds(groups.tolist(), folds=3, seed=1)
    best, best_loss = CLIP_L2_GRID[0], np.inf
    for l2 in CLIP_L2_GRID:
        loss = 0.0
        for k in range(3):
            train = folds != k
            if len(set(y[train].tolist())) < 2:
                continue
            w, b = fit_logistic(z[train], y[train], l2)
            logit = z[~train] @ w + b
            loss += float(np.sum(np.logaddexp(0, logit) - y[~train] * logit))
        if loss < best_loss:
            best, best_loss = l2, loss
    return best


def fit_clip_head(
    manifest: Path,
    model: str,
    weights: str | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Fit a CLIP linear probe plus caption combiner on a labelled manifest; returns the head (JSON-ready).

    The head records the backbone (model, weights, fingerprint): scoring refuses other weights.
    ``evaluation`` holds grouped cross-validated numbers (quote these) and in-sample ones.
    """
    from glassllava.vision import ClipSpec, load_clip

    manifest = Path(manifest)
    spec = ClipSpec(model, weights)
    encoder = load_clip(spec)
    rows = read_labelled_manifest(manifest)
    embeddings, kept = [], []
    batch = 16
    for start in range(0, len(rows), batch):
        images, ok = [], []
        for row in rows[start : start + batch]:
            try:
                with _open_panel(manifest.parent / row.file) as image:
                    images.append(image.convert("RGB"))
                ok.append(row)
            except (OSError, ValueError, SyntaxError) as err:
                log.warning("skipping unreadable image %s: %s", row.file, err)
        if images:
            embeddings.append(encoder.embed(images))
            kept += ok
        if progress:
            progress(min(start + batch, len(rows)), len(rows))
    x = np.concatenate(embeddings).astype(np.float64) if embeddings else np.zeros((0, encoder.dim))
    y = np.array([float(r.is_sem) for r in kept])
    groups = np.array([r.paper for r in kept])
    captions = np.array([[caption_features(r.caption)[n] for n in CAPTION_FEATURE_NAMES] for r in kept])
    head = fit_head(x, y, groups, captions, folds=folds, seed=seed)
    head["backbone"] = {"model": model, "weights": weights, "fingerprint": encoder.fingerprint, "dim": encoder.dim}
    head["fitted_on"]["manifest"] = str(manifest)
    return head


def fit_head(x: np.ndarray, y: np.ndarray, groups: np.ndarray, captions: np.ndarray, *, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """The linear probe and caption combiner on embeddings ``x`` (rows: panels of papers ``groups``),
    with held-out numbers from folds grouped by paper; the head without its ``backbone``."""
    if len(set(y.tolist())) < 2:
        raise ValueError("need both SEM and non-SEM panels to fit a head")
    n_groups = len(set(groups.tolist()))
    if n_groups < 3:  # held-out numbers and the combiner's nested folds need three papers at least
        raise ValueError(f"need panels from at least 3 papers to fit and evaluate a head, got {n_groups}")
    folds = max(3, min(folds, n_groups))
    fold = grouped_folds(groups.tolist(), folds=folds, seed=seed)

    # inner fits reuse their outer fold's L2 rather than choosing it again
    oof_image, oof_combined = held_out(
        lambda rows, outer: _Probe(x[rows], y[rows], groups[rows], l2=outer.l2 if outer else None), x, y, captions, fold
    )

    probe = _Probe(x, y, groups)
    caption_w, caption_b = fit_caption_model(oof_image, captions, y)
    full_image = _sigmoid(probe.logit(x))
    full_combined = _sigmoid(np.c_[probe.logit(x), captions] @ caption_w + caption_b + caption_offset(captions))
    names = ["image_logit", *CAPTION_FEATURE_NAMES]
    return {
        "kind": CLIP_HEAD_KIND,
        "description": "SEM panel classifier: logistic regression on standardised CLIP image embeddings, then the "
        "caption combiner. Written by `glassllava fit-sem --clip`.",
        "fitted_on": {
            "n": len(y),
            "n_positive": int(y.sum()),
            "n_papers": n_groups,
            "l2": probe.l2,
            "cv": f"{folds}-fold grouped by paper, seed {seed}; L2 chosen by inner folds from {list(CLIP_L2_GRID)}",
        },
        "evaluation": {
            "image_only": {"grouped_cv": metrics(_sigmoid(oof_image), y), "full_manifest": metrics(full_image, y)},
            "caption+image": {"grouped_cv": metrics(oof_combined, y), "full_manifest": metrics(full_combined, y)},
        },
        "image_model": {
            "mean": np.round(probe.mean, 7).tolist(),
            "scale": np.round(probe.scale, 7).tolist(),
            "weights": np.round(probe.weights, 7).tolist(),
            "bias": round(probe.bias, 7),
        },
        "caption_model": {"features": names, "weights": dict(zip(names, np.round(caption_w, 6).tolist())), "bias": round(caption_b, 6)},
    }
