"""A synthetic corpus on disk: ``pdfs/<paper_id>.pdf``, ``truth/<paper_id>.json`` and ``manifest.json``.

The manifest follows the figure benchmark format (``../shared/bench/figures/manifest.json``):
PDF points, origin top-left, ``[x0, top, x1, bottom]``, pages 1-based.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from glassllava.files import atomic_write_bytes, atomic_write_json
from glassllava.synth.papers import make_paper

log = logging.getLogger(__name__)
GENERATOR_VERSION = "2"


def paper_rng(seed: int, index: int) -> np.random.Generator:
    """Each paper draws from its own stream, so paper k is the same whatever the corpus size."""
    return np.random.default_rng([seed, index])


def generate_corpus(
    out: Path,
    papers: int,
    seed: int,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``papers`` synthetic papers with full ground truth under ``out``; return the manifest path.

    Same ``seed`` and ``papers``: byte-identical PDFs, truth files and manifest.
    """
    if papers < 1:
        raise ValueError(f"papers must be at least 1, got {papers}")
    out = Path(out)
    documents = []
    for k in range(papers):
        paper_id = f"synth_{seed}_{k:04d}"
        pdf, doc, truth = make_paper(paper_id, paper_rng(seed, k))
        atomic_write_bytes(out / "pdfs" / f"{paper_id}.pdf", pdf)
        atomic_write_json(out / "truth" / f"{paper_id}.json", truth)
        documents.append(doc)
        log.debug("%s: %d pages, %d figures", paper_id, doc["pages"], doc["n_figures"])
        if progress:
            progress(k + 1, papers)
    manifest = {
        "description": "Synthetic glass-materials papers with known ground truth (glassllava.synth). Coordinates: PDF points, "
        "origin top-left, [x0, top, x1, bottom]; pages 1-based. Micrograph boxes are pixels of the embedded image.",
        "generator": {
            "name": "glassllava.synth",
            "seed": seed,
            "papers": papers,
            "version": GENERATOR_VERSION,
        },
        "documents": documents,
    }
    path = out / "manifest.json"
    atomic_write_json(path, manifest)
    return path
