"""Prefect tasks of the ingest stage (library: ``glassllava.ingest``)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from glassllava import ingest
from glassllava.params import CorpusParams, DataLayout, IngestParams


@task(name="plan-ingest", retries=2, retry_delay_seconds=[5, 30], tags=["downloads"], cache_policy=NONE)
def plan_ingest(corpus: CorpusParams, params: IngestParams, layout: DataLayout) -> ingest.IngestPlan:
    """Collect sources, download new URLs, hash every PDF, find which are already parsed."""
    return ingest.plan_ingest(corpus, params, layout)


@task(name="parse-paper", cache_policy=NONE, task_run_name="parse {pdf.paper_sha:.12}", tags=["pdf-parsing"])
def parse_paper(pdf: ingest.PendingPDF, params: IngestParams) -> ingest.PaperRecord | ingest.Quarantined:
    """Text, headings, paragraphs and figure citations of one PDF (or why it is quarantined)."""
    return ingest.ingest_pdf(pdf.source.path, params, paper_sha=pdf.paper_sha)


@task(name="finish-ingest", cache_policy=NONE)
def finish_ingest(plan: ingest.IngestPlan, results: dict, layout: DataLayout) -> ingest.IngestReport:
    """Store PDFs and per-paper results, rebuild the papers/paragraphs/citations/quarantine tables."""
    return ingest.finish_ingest(plan, results, layout)
