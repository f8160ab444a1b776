"""Fit the SEM classifier on the shared micrograph manifest; write glassllava/sem_model.json.

The same as ``glassllava fit-sem --manifest ...`` (``glassllava.sem_fit.fit_default_model``):

- backbone probe: logistic regression on ImageNet EfficientNet-Lite0 embeddings of the grey panel
  (``glassllava.sem_backbone``), L2 chosen per training set by inner folds grouped by paper;
- pixel model: logistic regression on standardised pixel features, then boosted depth-2 trees;
- image stack of the two log-odds, then the caption combiner, both fitted on out-of-fold log-odds.

Reproducible: deterministic embeddings and features, L-BFGS logistic regressions, trees with a fixed
subsampling seed, generated training panels with a fixed seed, and folds assigned by paper DOI with a
fixed seed. Held-out numbers come from 5-fold cross-validation grouped by DOI (no paper contributes
panels to both sides). The "full_manifest" numbers are in-sample: quote the "grouped_cv" ones.

Example: .venv/bin/python scripts/fit_sem.py --manifest ../shared/data/micrographs/manifest.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from glassllava.files import atomic_write_text
from glassllava.sem import MODEL_PATH
from glassllava.sem_fit import FOLDS, fit_default_model

log = logging.getLogger("fit_sem")
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=REPO.parent / "shared/data/micrographs/manifest.json")
    parser.add_argument("--out", type=Path, default=MODEL_PATH)
    parser.add_argument("--folds", type=int, default=FOLDS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = fit_default_model(args.manifest, folds=args.folds, progress=lambda done, total: log.info("embedded %d/%d panels", done, total))
    for mode, numbers in model["evaluation"].items():
        log.info("%s: %s", mode, json.dumps(numbers))
    atomic_write_text(args.out, json.dumps(model, indent=1) + "\n")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
