"""Prefect task of the corpus stage (library: ``glassllava.synth``)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from glassllava.synth import generate_corpus


@task(name="generate-corpus", cache_policy=NONE)
def generate(out: Path, papers: int, seed: int) -> Path:
    """Write the synthetic corpus (PDFs, truth, manifest); same seed, same bytes."""
    return generate_corpus(out, papers=papers, seed=seed)
