"""Fitting the SEM classifier and measuring it held out: the default model and the optional CLIP head.

The default classifier (``sem_model.json``, fitted by ``glassllava fit-sem`` / ``scripts/fit_sem.py``):

1. backbone probe: logistic regression on the standardised EfficientNet-Lite0 embedding of the panel
   (``glassllava.sem_backbone``), its L2 chosen per training set by inner folds grouped by paper, each
   panel's loss weighed by (panels of its paper)^-0.5 (``paper_weights``);
2. pixel model: logistic regression on the 67 standardised pixel features (``glassllava.sem_features``)
   plus boosted depth-2 trees on the raw features, plus the data-bar prior;
3. image stack: a logistic regression of the two log-odds, fitted on out-of-fold log-odds;
4. caption combiner: the stacked image log-odds and the caption keyword flags, fitted on out-of-fold
   image log-odds too, so it does not learn to trust an over-fitted image score.

Generated panels (``synthetic_panels``: SE micrographs with data bars, XRD/DSC plots) join every training
fold of the two image models, never an evaluation, so that they also know the pipeline's own panels.

Held-out numbers come from folds grouped by paper (DOI), so no paper has panels on both sides; every
fitted piece (L2 choice, both image models, the stack, the combiner) sees only the training folds.
``glassllava bench sem`` reruns the same procedure (``grouped_predictions``).

A CLIP head (``glassllava fit-sem --clip``, ``fit_clip_head``) is a linear probe on a CLIP embedding with
its own caption combiner, fitted on any labelled manifest in the ``shared/data/micrographs`` format.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.optimize import minimize

from glassllava.sem import (
    CAPTION_FEATURE_NAMES,
    IMAGE_STACK_FEATURES,
    _open_panel,
    caption_features,
    caption_prior,
    data_bar_prior,
    read_labelled_manifest,
    sem_metrics,
    trees_logit,
)
from glassllava.sem_features import FEATURE_NAMES, image_features

log = logging.getLogger(__name__)

CAPTION_L2 = 1.0
CLIP_L2_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)  # chosen per training set by inner grouped folds
CLIP_HEAD_KIND = "clip-linear-probe"


def fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float, offset: np.ndarray | float = 0.0, row_weights: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Weights and bias minimising logistic loss + l2/2 |w|^2 (bias not penalised); ``offset`` is a fixed log-odds
    term, ``row_weights`` (default 1) weigh each row's loss."""
    design = np.c_[x, np.ones(len(x))]
    rw = np.ones(len(x)) if row_weights is None else np.asarray(row_weights, np.float64)

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = design @ w + offset
        loss = np.sum(rw * (np.logaddexp(0, z) - y * z)) + 0.5 * l2 * np.sum(w[:-1] ** 2)
        grad = design.T @ (rw * (1 / (1 + np.exp(-z)) - y))
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
    """Standardised embedding -> logistic log-odds, L2 chosen from ``grid`` by inner grouped folds on the training rows."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        groups: np.ndarray,
        l2: float | None = None,
        grid: tuple[float, ...] = CLIP_L2_GRID,
        row_weights: np.ndarray | None = None,
    ) -> None:
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0) + 1e-6
        z = (x - self.mean) / self.scale
        self.l2 = l2 if l2 is not None else _choose_l2(z, y, groups, grid)
        self.weights, self.bias = fit_logistic(z, y, self.l2, row_weights=row_weights)

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.weights + self.bias

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": np.round(self.mean, 7).tolist(),
            "scale": np.round(self.scale, 7).tolist(),
            "weights": np.round(self.weights, 7).tolist(),
            "bias": round(self.bias, 7),
            "l2": self.l2,
        }


def _choose_l2(z: np.ndarray, y: np.ndarray, groups: np.ndarray, grid: tuple[float, ...] = CLIP_L2_GRID) -> float:
    """The L2 of ``grid`` with the lowest out-of-fold log loss (3 folds grouped by paper)."""
    if len(set(groups.tolist())) < 3:
        return grid[1]
    folds = grouped_folds(groups.tolist(), folds=3, seed=1)
    best, best_loss = grid[0], np.inf
    for l2 in grid:
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
        "image_model": {k: v for k, v in probe.to_json().items() if k != "l2"},
        "caption_model": {"features": names, "weights": dict(zip(names, np.round(caption_w, 6).tolist())), "bias": round(caption_b, 6)},
    }


# ---- the default classifier: backbone probe + pixel model, stacked, then the caption combiner ------------

BACKBONE_L2_GRID = (10.0, 30.0, 100.0, 300.0, 1000.0)  # on the standardised embedding; chosen per training set
PAPER_WEIGHT_POWER = 0.5  # the backbone probe weighs each panel by (panels of its paper)^-0.5 (paper_weights)
PIXEL_L2 = 3.0  # on standardised pixel features; 0.1-30 gave the same held-out accuracy within 2 points
STACK_L2 = 1.0  # the two image log-odds -> one
TREE_ROUNDS = 200  # boosted depth-2 trees on top of the pixel model's logistic part
TREE_LEARNING_RATE = 0.05
TREE_L2 = 1.0
TREE_MIN_LEAF = 10  # panels per leaf
TREE_SUBSAMPLE = 0.8
TREE_BINS = 32
SYNTHETIC_MICROGRAPHS = 40  # generated panels added to every training fold of the image models (synthetic_panels)
SYNTHETIC_PLOTS = 20
FOLDS = 5
SEED = 0


@dataclass
class PanelSet:
    """Panels with what the classifier is fitted on: backbone embeddings, pixel features, caption flags, labels."""

    embeddings: np.ndarray  # (n, embedding dim)
    pixels: np.ndarray  # (n, len(FEATURE_NAMES)), raw pixel features
    captions: np.ndarray  # (n, len(CAPTION_FEATURE_NAMES)), 0/1 flags of each panel's caption part
    y: np.ndarray  # 1.0 SEM, 0.0 not
    papers: np.ndarray  # what the folds keep together
    instruments: list[str]
    has_caption: np.ndarray  # bool; a panel without a caption is scored from its pixels alone, as sem_score does

    def __len__(self) -> int:
        return len(self.y)

    def rows(self, mask: np.ndarray) -> PanelSet:
        index = np.flatnonzero(mask)
        return PanelSet(
            self.embeddings[index], self.pixels[index], self.captions[index], self.y[index], self.papers[index],
            [self.instruments[i] for i in index], self.has_caption[index],
        )  # fmt: skip

    @staticmethod
    def join(a: PanelSet, b: PanelSet) -> PanelSet:
        return PanelSet(
            np.r_[a.embeddings, b.embeddings], np.r_[a.pixels, b.pixels], np.r_[a.captions, b.captions], np.r_[a.y, b.y],
            np.r_[a.papers, b.papers], a.instruments + b.instruments, np.r_[a.has_caption, b.has_caption],
        )  # fmt: skip


def panel_set(images: list, labels: list[bool], captions: list[str], papers: list[str], instruments: list[str], encoder) -> PanelSet:
    """Embeddings (``encoder.embed``), pixel features and caption flags of the given PIL images."""
    pixels = [[features[n] for n in FEATURE_NAMES] for features in map(image_features, images)]
    return PanelSet(
        encoder.embed(images) if images else np.zeros((0, encoder.describe()["dim"])),
        np.array(pixels, dtype=np.float64).reshape(len(images), len(FEATURE_NAMES)),
        np.array([[caption_features(c)[n] for n in CAPTION_FEATURE_NAMES] for c in captions], dtype=np.float64).reshape(
            len(images), len(CAPTION_FEATURE_NAMES)
        ),
        np.array(labels, dtype=np.float64),
        np.array(papers, dtype=object),
        list(instruments),
        np.array([bool(c and c.strip()) for c in captions], dtype=bool),
    )


def read_panel_set(
    manifest: Path, encoder, progress: Callable[[int, int], None] | None = None, batch: int = 32
) -> tuple[PanelSet, list[str], list[str]]:
    """The labelled manifest's panels (decoded as ``run_sem_benchmark`` decodes them, each caption narrowed to
    its panel's clause when the entry names one); also the files read and those unreadable (skipped)."""
    from glassllava.sem import caption_for_panel

    manifest = Path(manifest)
    entries = read_labelled_manifest(manifest)
    parts, kept, unreadable = [], [], []
    for start in range(0, len(entries), batch):
        images, rows = [], []
        for entry in entries[start : start + batch]:
            try:
                with _open_panel(manifest.parent / entry.file) as image:
                    images.append(image.copy())
                rows.append(entry)
            except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on broken files
                log.warning("skipping unreadable image %s: %s", entry.file, err)
                unreadable.append(entry.file)
        parts.append(
            panel_set(
                images,
                [r.is_sem for r in rows],
                [caption_for_panel(r.caption, r.panel) for r in rows],
                [r.paper for r in rows],
                [r.instrument or ("SEM" if r.is_sem else "other") for r in rows],
                encoder,
            )
        )
        kept += [r.file for r in rows]
        if progress:
            progress(min(start + batch, len(entries)), len(entries))
    data = parts[0] if parts else panel_set([], [], [], [], [], encoder)
    for part in parts[1:]:
        data = PanelSet.join(data, part)
    return data, kept, unreadable


def synthetic_panels(n_micrographs: int, n_plots: int, seed: int) -> list[tuple[Any, bool]]:
    """Panels the pipeline itself produces: generated SE micrographs (with data bar) and vector plots (XRD, DSC).

    They join the training folds (never the evaluation) so that the image models, which know only
    literature crops, also say SEM for the generator's noisy micrographs and not-SEM for its plots.
    Micrographs are shrunk to the 330-620 px a 150 dpi page render gives; plots are rendered from a
    reportlab canvas with pypdfium2, as the figures stage renders them.
    """
    from PIL import Image
    from reportlab.pdfgen import canvas

    from glassllava.pdfdoc import open_pdf
    from glassllava.synth import PHENOMENA, MicrographSpec, plots, render_micrograph
    from glassllava.synth.history import THEMES, family_for_theme, sample_histories

    rng = np.random.default_rng(seed)
    panels: list[tuple[Any, bool]] = []
    for _ in range(n_micrographs):
        chosen = rng.choice(len(PHENOMENA), size=int(rng.integers(1, 3)), replace=False)
        spec = MicrographSpec(
            phenomena=tuple(PHENOMENA[i] for i in sorted(chosen)),
            magnification=float(rng.choice([200, 500, 1000, 2000, 5000, 10000, 20000])),
            bar_style=str(rng.choice(["fei", "zeiss"])),
            charging=bool(rng.random() < 0.2),
            dose=float(rng.uniform(10, 80)),
        )
        image = render_micrograph(spec, rng)[0]
        width = int(rng.integers(330, 620))
        panels.append((image.resize((width, round(image.height * width / image.width)), Image.Resampling.BILINEAR), True))
    for k in range(n_plots):
        theme = str(rng.choice(THEMES))
        samples = sample_histories(theme, family_for_theme(theme, rng), rng)
        data = (plots.xrd_data if k % 2 else plots.dsc_data)(samples, rng)
        width = float(rng.uniform(160, 300))
        height = width * float(rng.uniform(0.65, 0.8))
        buffer = io.BytesIO()
        page = canvas.Canvas(buffer, pagesize=(width + 20, height + 20), invariant=1)
        plots.draw_plot(page, data, (10, 10, 10 + width, 10 + height), height + 20, "Helvetica", "ab"[k % 2] if k % 3 else None)
        page.showPage()
        page.save()
        with open_pdf(buffer.getvalue()) as document:
            panels.append((document[0].render(scale=150 / 72).to_pil().convert("RGB"), False))
    return panels


def synthetic_panel_set(encoder, n_micrographs: int = SYNTHETIC_MICROGRAPHS, n_plots: int = SYNTHETIC_PLOTS, seed: int = SEED) -> PanelSet:
    panels = synthetic_panels(n_micrographs, n_plots, seed)
    n = len(panels)
    return panel_set([p for p, _ in panels], [s for _, s in panels], [""] * n, ["synthetic"] * n, ["synthetic"] * n, encoder)


class PixelModel:
    """Pixel features: standardise, logistic regression, then boosted depth-2 trees on top of its log-odds.

    The linear part carries the trend and extrapolates sensibly to panels unlike the training set (plots,
    synthetic micrographs); the trees, which start from its log-odds, add the interactions it cannot express
    (grey *and* flat background, coloured *and* dark, ...). Each tree's output is bounded by its leaves.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0) + 1e-9
        z = (x - self.mean) / self.scale
        self.weights, self.bias = fit_logistic(z, y, PIXEL_L2)
        self.trees = fit_boosted_trees(x, y, z @ self.weights + self.bias)

    def logit(self, x: np.ndarray) -> np.ndarray:
        linear = ((x - self.mean) / self.scale) @ self.weights + self.bias
        return linear + trees_logit(self.trees, x) + data_bar_prior(x)

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(FEATURE_NAMES),
            "mean": np.round(self.mean, 6).tolist(),
            "scale": np.round(self.scale, 6).tolist(),
            "weights": np.round(self.weights, 6).tolist(),
            "bias": round(self.bias, 6),
            "trees": self.trees,
        }


def fit_boosted_trees(x: np.ndarray, y: np.ndarray, base: np.ndarray) -> dict[str, list]:
    """Newton-boosted depth-2 trees for logistic loss, starting from log-odds ``base``.

    Splits are searched over per-feature quantile edges (TREE_BINS), with L2 on the leaf values
    (TREE_L2), at least TREE_MIN_LEAF panels per leaf and row subsampling (TREE_SUBSAMPLE, fixed seed).
    Returns the trees as flat lists: per tree the three split features and thresholds (root, left child,
    right child; feature -1 = no split) and the four leaf values.
    """
    rng = np.random.default_rng(SEED)
    edges = [np.unique(np.quantile(col, np.linspace(0, 1, TREE_BINS + 1)[1:-1])) for col in x.T]
    binned = np.stack([np.searchsorted(e, col, side="left") for e, col in zip(edges, x.T)], axis=1)
    score = base.copy()
    trees: dict[str, list] = {"feature": [], "threshold": [], "leaf": []}
    for _ in range(TREE_ROUNDS):
        p = 1 / (1 + np.exp(-score))
        grad, hess = y - p, p * (1 - p)
        rows = rng.random(len(y)) < TREE_SUBSAMPLE
        root = _best_split(binned, grad, hess, rows, edges)
        features, thresholds, leaves = [-1, -1, -1], [0.0, 0.0, 0.0], [0.0] * 4
        if root is not None:
            features[0], thresholds[0] = root
            left = x[:, root[0]] <= root[1]
            for child, side in ((1, left), (2, ~left)):
                split = _best_split(binned, grad, hess, rows & side, edges)
                cells = [side, side] if split is None else [side & (x[:, split[0]] <= split[1]), side & (x[:, split[0]] > split[1])]
                if split is not None:
                    features[child], thresholds[child] = split
                for k, cell in enumerate(cells):
                    g, h = grad[rows & cell].sum(), hess[rows & cell].sum()
                    leaves[2 * (child - 1) + k] = TREE_LEARNING_RATE * g / (h + TREE_L2)
        trees["feature"].append(features)
        trees["threshold"].append(thresholds)
        trees["leaf"].append([round(v, 6) for v in leaves])
        score = base + trees_logit(trees, x)
    return trees


def _best_split(binned: np.ndarray, grad: np.ndarray, hess: np.ndarray, rows: np.ndarray, edges: list) -> tuple[int, float] | None:
    """(feature, threshold) maximising the Newton gain on ``rows``, or None when no split helps."""
    if rows.sum() < 2 * TREE_MIN_LEAF:
        return None
    b, g, h = binned[rows], grad[rows], hess[rows]
    n_bins = TREE_BINS + 1
    flat = (b + np.arange(b.shape[1]) * n_bins).ravel()
    g_hist = np.bincount(flat, np.repeat(g[None], b.shape[1], axis=0).T.ravel(), minlength=n_bins * b.shape[1])
    h_hist = np.bincount(flat, np.repeat(h[None], b.shape[1], axis=0).T.ravel(), minlength=n_bins * b.shape[1])
    n_hist = np.bincount(flat, minlength=n_bins * b.shape[1])
    g_left = np.cumsum(g_hist.reshape(-1, n_bins), axis=1)[:, :-1]
    h_left = np.cumsum(h_hist.reshape(-1, n_bins), axis=1)[:, :-1]
    n_left = np.cumsum(n_hist.reshape(-1, n_bins), axis=1)[:, :-1]
    g_all, h_all, n_all = g.sum(), h.sum(), len(g)
    gain = g_left**2 / (h_left + TREE_L2) + (g_all - g_left) ** 2 / (h_all - h_left + TREE_L2) - g_all**2 / (h_all + TREE_L2)
    valid = (n_left >= TREE_MIN_LEAF) & (n_all - n_left >= TREE_MIN_LEAF)
    valid &= np.arange(TREE_BINS)[None, :] < np.array([len(e) for e in edges])[:, None]
    gain = np.where(valid, gain, -np.inf)
    feature, cut = np.unravel_index(np.argmax(gain), gain.shape)
    if not gain[feature, cut] > 1e-9:
        return None
    return int(feature), float(edges[feature][cut])


def paper_weights(papers: np.ndarray, power: float = PAPER_WEIGHT_POWER) -> np.ndarray:
    """Loss weight of each panel: (panels of its paper)^-power, scaled to mean 1.

    Papers differ more than the classes do (a probe right on 0.90 of panels with random folds is right on
    0.80 with folds grouped by paper), so a paper with 40 crops of one kind should not teach the probe 40
    times what a paper with one crop teaches it. With power 0.5 the grouped held-out image-only numbers
    rose by about a point (README, "SEM classifier"); the generated panels count as one paper ("synthetic").
    """
    counts = Counter(papers.tolist())
    weights = np.array([counts[p] ** -power for p in papers.tolist()], dtype=np.float64)
    return weights * len(weights) / weights.sum() if len(weights) else weights


def _choose_backbone_l2(train: PanelSet, anchors: PanelSet | None) -> float:
    """The L2 of BACKBONE_L2_GRID with the lowest log loss on 3 inner folds of the training panels, grouped by
    paper (the probes weighted as the final one, ``paper_weights``; the generated panels stay in every inner
    training part and are never scored)."""
    if len(set(train.papers.tolist())) < 3:
        return BACKBONE_L2_GRID[1]
    x = train.embeddings if anchors is None else np.r_[train.embeddings, anchors.embeddings]
    y = train.y if anchors is None else np.r_[train.y, anchors.y]
    papers = train.papers if anchors is None else np.r_[train.papers, anchors.papers]
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    inner = np.r_[grouped_folds(train.papers.tolist(), folds=3, seed=1), np.full(len(x) - len(train), -1)]
    best, best_loss = BACKBONE_L2_GRID[0], np.inf
    for l2 in BACKBONE_L2_GRID:
        loss = 0.0
        for k in range(3):
            fit_rows = inner != k
            if len(set(y[fit_rows].tolist())) < 2:
                continue
            w, b = fit_logistic(z[fit_rows], y[fit_rows], l2, row_weights=paper_weights(papers[fit_rows]))
            logit = z[inner == k] @ w + b
            loss += float(np.sum(np.logaddexp(0, logit) - y[inner == k] * logit))
        if loss < best_loss:
            best, best_loss = l2, loss
    return best


class ImageModels:
    """The backbone probe and the pixel model, fitted on the same training panels plus the generated ones."""

    def __init__(self, train: PanelSet, anchors: PanelSet | None, backbone_l2: float | None = None) -> None:
        if len(set(train.y.tolist())) < 2:
            raise ValueError("need both SEM and non-SEM panels in every training fold")
        every = train if anchors is None else PanelSet.join(train, anchors)
        l2 = backbone_l2 if backbone_l2 is not None else _choose_backbone_l2(train, anchors)
        self.backbone = _Probe(every.embeddings, every.y, every.papers, l2=l2, row_weights=paper_weights(every.papers))
        self.pixel = PixelModel(every.pixels, every.y)

    def logits(self, panels: PanelSet) -> np.ndarray:
        """(n, 2): backbone and pixel log-odds (IMAGE_STACK_FEATURES order)."""
        return np.c_[self.backbone.logit(panels.embeddings), self.pixel.logit(panels.pixels)]


@dataclass
class CombinerFit:
    """The image stack and the caption combiner, fitted on out-of-fold image log-odds."""

    stack_weights: np.ndarray
    stack_bias: float
    caption_weights: np.ndarray
    caption_bias: float

    @staticmethod
    def fit(image_logits: np.ndarray, panels: PanelSet) -> CombinerFit:
        """The stack on every panel, the combiner on those with a caption."""
        stack_w, stack_b = fit_logistic(image_logits, panels.y, STACK_L2)
        rows = panels.has_caption
        caption_w, caption_b = fit_caption_model(image_logits[rows] @ stack_w + stack_b, panels.captions[rows], panels.y[rows])
        return CombinerFit(stack_w, stack_b, caption_w, caption_b)

    def image_logit(self, image_logits: np.ndarray) -> np.ndarray:
        return image_logits @ self.stack_weights + self.stack_bias

    def combined_probability(self, image_logits: np.ndarray, panels: PanelSet) -> np.ndarray:
        """Caption+image probability; from the image alone where a panel has no caption (as sem_score)."""
        image = self.image_logit(image_logits)
        z = np.c_[image, panels.captions] @ self.caption_weights + self.caption_bias + caption_offset(panels.captions)
        return _sigmoid(np.where(panels.has_caption, z, image))


@dataclass
class GroupedPredictions:
    """Out-of-fold log-odds and probabilities of every panel, folds grouped by paper."""

    fold: np.ndarray
    image_logits: np.ndarray  # (n, 2) backbone, pixel: each model fitted without the panel's paper
    image: np.ndarray  # stacked image log-odds
    combined: np.ndarray  # caption+image probability
    backbone_l2: list[float]

    def metrics(self, y: np.ndarray) -> dict[str, dict]:
        return {
            "image_only": metrics(_sigmoid(self.image), y),
            "caption+image": metrics(self.combined, y),
            "backbone_only": metrics(_sigmoid(self.image_logits[:, 0]), y),
            "pixel_only": metrics(_sigmoid(self.image_logits[:, 1]), y),
        }


def held_out_obstacle(data: PanelSet, folds: int = FOLDS, seed: int = SEED) -> str | None:
    """Why ``grouped_predictions`` cannot run on these panels (None when it can): every training part, outer
    and nested, needs panels of both classes, and there must be 3 papers at least."""
    n_papers = len(set(data.papers.tolist()))
    if n_papers < 3:
        return f"need panels from at least 3 papers for held-out numbers, got {n_papers}"
    fold = grouped_folds(data.papers.tolist(), folds=max(3, min(folds, n_papers)), seed=seed)
    for k in set(fold.tolist()):
        for j in {None, *set(fold.tolist())} - {k}:
            part = (fold != k) & (fold != j) if j is not None else fold != k
            if len(set(data.y[part].tolist())) < 2:
                return "a training part of the grouped folds holds panels of one class only"
    return None


def grouped_predictions(data: PanelSet, anchors: PanelSet | None, folds: int = FOLDS, seed: int = SEED) -> GroupedPredictions:
    """Held-out predictions: per outer fold, both image models on the other folds (L2 chosen inside them),
    the stack and combiner on nested out-of-fold log-odds of those folds; raises ValueError when the
    panels cannot be split that way (fewer than 3 papers, a training fold with one class)."""
    obstacle = held_out_obstacle(data, folds, seed)
    if obstacle:
        raise ValueError(obstacle)
    folds = max(3, min(folds, len(set(data.papers.tolist()))))
    fold = grouped_folds(data.papers.tolist(), folds=folds, seed=seed)
    image_logits = np.zeros((len(data), 2))
    image, combined, l2s = np.zeros(len(data)), np.zeros(len(data)), []
    for k in range(folds):
        train, test = fold != k, fold == k
        outer = ImageModels(data.rows(train), anchors)
        l2s.append(outer.backbone.l2)
        image_logits[test] = outer.logits(data.rows(test))
        inner = np.zeros((len(data), 2))
        for j in sorted(set(fold[train].tolist())):
            part = train & (fold != j)
            inner[fold == j] = ImageModels(data.rows(part), anchors, backbone_l2=outer.backbone.l2).logits(data.rows(fold == j))
        combiner = CombinerFit.fit(inner[train], data.rows(train))
        image[test] = combiner.image_logit(image_logits[test])
        combined[test] = combiner.combined_probability(image_logits[test], data.rows(test))
    return GroupedPredictions(fold, image_logits, image, combined, l2s)


def fit_sem_model(
    data: PanelSet, anchors: PanelSet | None, backbone: dict[str, Any], *, folds: int = FOLDS, seed: int = SEED
) -> dict[str, Any]:
    """The default classifier (JSON-ready, the layout of ``sem_model.json``) fitted on ``data`` plus the
    generated ``anchors``, with its grouped held-out numbers and, labelled as such, its in-sample ones."""
    held_out = grouped_predictions(data, anchors, folds, seed)
    final = ImageModels(data, anchors)
    combiner = CombinerFit.fit(held_out.image_logits, data)  # on out-of-fold image log-odds
    in_sample = final.logits(data)
    grouped = held_out.metrics(data.y)
    in_sample_image = _sigmoid(combiner.image_logit(in_sample))
    in_sample_combined = combiner.combined_probability(in_sample, data)
    evaluation: dict[str, Any] = {
        "image_only": {"grouped_cv": grouped["image_only"], "full_manifest": metrics(in_sample_image, data.y)},
        "caption+image": {"grouped_cv": grouped["caption+image"], "full_manifest": metrics(in_sample_combined, data.y)},
        "backbone_only": {"grouped_cv": grouped["backbone_only"]},
        "pixel_only": {"grouped_cv": grouped["pixel_only"]},
        "caption_rule_sem_mentioned": metrics(data.captions[:, CAPTION_FEATURE_NAMES.index("sem")], data.y),
    }
    if anchors is not None:
        right = (combiner.image_logit(final.logits(anchors)) >= 0) == (anchors.y > 0)
        evaluation["synthetic_training_panels_accuracy"] = round(float(right.mean()), 4)
    caption_names = ["image_logit", *CAPTION_FEATURE_NAMES]
    n_folds = len(set(held_out.fold.tolist()))
    return {
        "description": "SEM panel classifier: a linear probe on ImageNet EfficientNet-Lite0 embeddings of the grey panel "
        "and a pixel-feature model (logistic regression plus boosted depth-2 trees), stacked into one image log-odds, "
        "then a logistic combiner of it with caption keyword flags. Written by `glassllava fit-sem` (scripts/fit_sem.py).",
        "fitted_on": {
            "n": len(data),
            "n_positive": int(data.y.sum()),
            "n_papers": len(set(data.papers.tolist())),
            "backbone_l2": final.backbone.l2,
            "backbone_l2_per_fold": held_out.backbone_l2,
            "backbone_paper_weight_power": PAPER_WEIGHT_POWER,
            "pixel_l2": PIXEL_L2,
            "stack_l2": STACK_L2,
            "caption_l2": CAPTION_L2,
            "trees": {"rounds": TREE_ROUNDS, "depth": 2, "learning_rate": TREE_LEARNING_RATE, "l2": TREE_L2,
                      "min_leaf": TREE_MIN_LEAF, "subsample": TREE_SUBSAMPLE, "bins": TREE_BINS},  # fmt: skip
            "cv": f"{n_folds}-fold grouped by paper (DOI), seed {seed}; backbone L2 chosen by 3 inner grouped folds from "
            f"{list(BACKBONE_L2_GRID)}; stack and combiner fitted on nested out-of-fold image log-odds",
            "synthetic_panels": f"{SYNTHETIC_MICROGRAPHS} generated micrographs + {SYNTHETIC_PLOTS} plots (seed {SEED}) "
            "in every image-model training fold, never evaluated"
            if anchors is not None
            else "none",
        },
        "evaluation": evaluation,
        "backbone": backbone,
        "backbone_probe": final.backbone.to_json(),
        "pixel_model": final.pixel.to_json(),
        "image_stack": {
            "features": list(IMAGE_STACK_FEATURES),
            "weights": dict(zip(IMAGE_STACK_FEATURES, np.round(combiner.stack_weights, 6).tolist())),
            "bias": round(combiner.stack_bias, 6),
        },
        "caption_model": {
            "features": caption_names,
            "weights": dict(zip(caption_names, np.round(combiner.caption_weights, 6).tolist())),
            "bias": round(combiner.caption_bias, 6),
        },
    }


def fit_default_model(
    manifest: Path, *, folds: int = FOLDS, seed: int = SEED, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Read a labelled manifest, embed its panels, fit the default classifier (``fit_sem_model``) and record
    which manifest it was fitted on (path and sha256: ``glassllava bench sem`` labels numbers on it in-sample)."""
    from glassllava.files import sha256_file
    from glassllava.sem import backbone_encoder_unchecked

    manifest = Path(manifest)
    encoder = backbone_encoder_unchecked()
    data, _, unreadable = read_panel_set(manifest, encoder, progress)
    if len(set(data.y.tolist())) < 2:
        raise ValueError(f"{manifest}: need both SEM and non-SEM panels to fit the classifier")
    model = fit_sem_model(data, synthetic_panel_set(encoder), encoder.describe(), folds=folds, seed=seed)
    model["fitted_on"].update(manifest=_display_path(manifest), manifest_sha256=sha256_file(manifest), n_unreadable=len(unreadable))
    return model


def _display_path(path: Path) -> str:
    """The manifest's path relative to the folder above the repository (``../shared/...`` reads the same on every
    checkout), else as given."""
    root = Path(__file__).resolve().parents[2]
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)
