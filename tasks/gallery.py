"""Prefect task of the gallery stage (library: ``glassllava.report``)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from glassllava import report
from glassllava.params import DataLayout


@task(name="write-gallery", cache_policy=NONE)
def write_gallery(layout: DataLayout) -> Path:
    """The index of papers and one page per paper, with the QA counts of the qa stage just run."""
    return report.write_figure_gallery(layout)
