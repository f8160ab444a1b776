"""Synthetic glass-materials papers whose every fact is known: the default corpus and the yardstick.

Public API:
- ``generate_corpus(out, papers, seed)`` writes PDFs, per-paper truth and a benchmark-style manifest;
- ``make_paper(paper_id, rng)`` builds one paper in memory;
- ``render_micrograph(spec, rng)`` / ``spec_from_history(history, rng)`` draw one SEM micrograph and its truth.
"""

from glassllava.synth.corpus import generate_corpus
from glassllava.synth.micrographs import (
    DEFECT_TYPES,
    PHENOMENA,
    MicrographSpec,
    history_tendencies,
    render_micrograph,
    spec_from_history,
)
from glassllava.synth.papers import make_paper
from glassllava.synth.text import PHENOMENON_KEYWORDS

__all__ = [
    "DEFECT_TYPES",
    "PHENOMENA",
    "PHENOMENON_KEYWORDS",
    "MicrographSpec",
    "generate_corpus",
    "history_tendencies",
    "make_paper",
    "render_micrograph",
    "spec_from_history",
]
