"""Fit the SEM classifier's two logistic models on the shared micrograph manifest; write glassllava/sem_model.json.

Reproducible: deterministic features, L-BFGS logistic regression with a fixed L2 penalty, and folds
assigned by paper DOI with a fixed seed. Held-out numbers come from 5-fold cross-validation grouped by
DOI (no paper contributes panels to both sides); the caption combiner is fitted on out-of-fold image
log-odds so it does not learn to trust an over-fitted image score.

Example: .venv/bin/python scripts/fit_sem.py --manifest ../shared/data/micrographs/manifest.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from glassllava.files import atomic_write_text
from glassllava.sem import CAPTION_FEATURE_NAMES, MODEL_PATH, caption_features, data_bar_prior, sem_metrics
from glassllava.sem_features import FEATURE_NAMES, image_features

log = logging.getLogger("fit_sem")
REPO = Path(__file__).resolve().parents[1]
IMAGE_L2 = 3.0  # on standardised features; 0.1-30 gave the same held-out accuracy within 2 points
CAPTION_L2 = 1.0
FOLDS = 5
SEED = 0


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Weights and bias minimising logistic loss + l2/2 |w|^2 (bias not penalised)."""
    design = np.c_[x, np.ones(len(x))]

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = design @ w
        loss = np.sum(np.logaddexp(0, z) - y * z) + 0.5 * l2 * np.sum(w[:-1] ** 2)
        grad = design.T @ (1 / (1 + np.exp(-z)) - y)
        grad[:-1] += l2 * w[:-1]
        return float(loss), grad

    w = minimize(loss_and_grad, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B").x
    return w[:-1], float(w[-1])


class ImageModel:
    """Standardise, then logistic regression."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.mean = x.mean(axis=0)
        self.scale = x.std(axis=0) + 1e-9
        self.weights, self.bias = fit_logistic((x - self.mean) / self.scale, y, IMAGE_L2)

    def logit(self, x: np.ndarray) -> np.ndarray:
        prior = np.array([data_bar_prior(dict(zip(FEATURE_NAMES, row))) for row in x])
        return ((x - self.mean) / self.scale) @ self.weights + self.bias + prior


def fit_caption_model(image_logit: np.ndarray, captions: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    return fit_logistic(np.c_[image_logit, captions], y, CAPTION_L2)


def grouped_folds(groups: list[str]) -> np.ndarray:
    unique = sorted(set(groups))
    order = np.random.default_rng(SEED).permutation(len(unique))
    fold_of = {unique[i]: k % FOLDS for k, i in enumerate(order)}
    return np.array([fold_of[g] for g in groups])


def metrics(scores: np.ndarray, y: np.ndarray) -> dict:
    predicted = scores >= 0.5
    truth = y > 0
    return sem_metrics(
        int((predicted & truth).sum()),
        int((predicted & ~truth).sum()),
        int((~predicted & truth).sum()),
        int((~predicted & ~truth).sum()),
    )


def load_dataset(manifest: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    from PIL import Image

    entries = json.loads(manifest.read_text())["entries"]
    rows, captions, labels, dois = [], [], [], []
    for entry in entries:
        try:
            with Image.open(manifest.parent / entry["file"]) as image:
                features = image_features(image)
        except OSError as err:
            log.warning("skipping %s: %s", entry["file"], err)
            continue
        rows.append([features[n] for n in FEATURE_NAMES])
        flags = caption_features(entry["label"].get("figure_caption") or "")
        captions.append([flags[n] for n in CAPTION_FEATURE_NAMES])
        labels.append(float(entry["label"]["is_sem"]))
        dois.append(entry["label"].get("doi") or entry["file"])
    return np.array(rows), np.array(captions), np.array(labels), dois


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=REPO.parent / "shared/data/micrographs/manifest.json")
    parser.add_argument("--out", type=Path, default=MODEL_PATH)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    x, captions, y, dois = load_dataset(args.manifest)
    folds = grouped_folds(dois)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731

    # held-out: image model per fold; out-of-fold image logits feed the caption combiner
    oof_image = np.zeros(len(y))
    for k in range(FOLDS):
        train = folds != k
        oof_image[~train] = ImageModel(x[train], y[train]).logit(x[~train])
    oof_combined = np.zeros(len(y))
    for k in range(FOLDS):
        train = folds != k
        # the combiner's own training logits must be out-of-fold too: nested folds inside the training part
        inner = np.zeros(train.sum())
        x_tr, y_tr, f_tr = x[train], y[train], folds[train]
        for j in set(f_tr.tolist()):
            inner[f_tr == j] = ImageModel(x_tr[f_tr != j], y_tr[f_tr != j]).logit(x_tr[f_tr == j])
        w, b = fit_caption_model(inner, captions[train], y_tr)
        test_logit = ImageModel(x_tr, y_tr).logit(x[~train])
        oof_combined[~train] = sigmoid(np.c_[test_logit, captions[~train]] @ w + b)

    image_model = ImageModel(x, y)
    caption_w, caption_b = fit_caption_model(oof_image, captions, y)
    full_image = sigmoid(image_model.logit(x))
    full_combined = sigmoid(np.c_[image_model.logit(x), captions] @ caption_w + caption_b)
    evaluation = {
        "image_only": {"full_manifest": metrics(full_image, y), "grouped_cv": metrics(sigmoid(oof_image), y)},
        "caption+image": {"full_manifest": metrics(full_combined, y), "grouped_cv": metrics(oof_combined, y)},
        "caption_rule_sem_mentioned": metrics(captions[:, 0], y),
    }
    for mode, numbers in evaluation.items():
        log.info("%s: %s", mode, json.dumps(numbers))

    model = {
        "description": "SEM panel classifier: logistic regression on standardised pixel features, then a logistic "
        "combiner of the image log-odds with caption keyword flags. Written by scripts/fit_sem.py.",
        "fitted_on": {
            "manifest": str(args.manifest.resolve().relative_to(REPO.parent.resolve()))
            if args.manifest.resolve().is_relative_to(REPO.parent.resolve())
            else str(args.manifest),
            "n": len(y),
            "n_positive": int(y.sum()),
            "n_papers": len(set(dois)),
            "image_l2": IMAGE_L2,
            "caption_l2": CAPTION_L2,
            "cv": f"{FOLDS}-fold grouped by label.doi, seed {SEED}; combiner fitted on out-of-fold image logits",
        },
        "evaluation": evaluation,
        "image_model": {
            "features": list(FEATURE_NAMES),
            "mean": np.round(image_model.mean, 6).tolist(),
            "scale": np.round(image_model.scale, 6).tolist(),
            "weights": np.round(image_model.weights, 6).tolist(),
            "bias": round(image_model.bias, 6),
        },
        "caption_model": {
            "features": ["image_logit", *CAPTION_FEATURE_NAMES],
            "weights": dict(zip(["image_logit", *CAPTION_FEATURE_NAMES], np.round(caption_w, 6).tolist())),
            "bias": round(caption_b, 6),
        },
    }
    atomic_write_text(args.out, json.dumps(model, indent=1) + "\n")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
