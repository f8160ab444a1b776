"""Prefect tasks of the figures stage (library: ``glassllava.figures``)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from glassllava import figures
from glassllava.params import DataLayout, FiguresParams


@task(name="plan-figures", cache_policy=NONE)
def plan_figures(params: FiguresParams, layout: DataLayout) -> tuple[str, list, list]:
    """Which papers still need their figures extracted (per-paper cache misses)."""
    return figures.plan_figures(params, layout)


@task(
    name="paper-figures",
    cache_policy=NONE,
    task_run_name="figures {paper_sha:.12}",
    tags=["pdf-rendering"],
)
def paper_figures(paper_sha: str, pdf_path: Path, params: FiguresParams, layout: DataLayout, key: str) -> Path:
    """Extract, render and classify one paper's figures; returns its cache file."""
    return figures.figures_for_paper(paper_sha, pdf_path, params, layout, key, layout_model=figures.load_layout_model(params))


@task(name="finish-figures", cache_policy=NONE)
def finish_figures(params: FiguresParams, layout: DataLayout, key: str, papers: list, processed: int) -> figures.FiguresReport:
    """Join per-paper results with in-text context into figures.parquet and panels.parquet."""
    return figures.finish_figures(params, layout, key, papers, processed=processed)
