"""Flow of the DVC stage ``ingest``: one parse task per new PDF, then the tables."""

from __future__ import annotations

from flows._stage import stage_args  # noqa: I001 - first: sets Prefect's environment defaults
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact

from flows._stage import task_runner
from glassllava.ingest import Quarantined
from glassllava.params import CorpusParams, DataLayout, IngestParams
from tasks.ingest import finish_ingest, parse_paper, plan_ingest


@flow(name="ingest", task_runner=task_runner(1))  # one PDF at a time unless `workers` asks for processes
def ingest_flow(corpus: CorpusParams, params: IngestParams, layout: DataLayout) -> dict:
    logger = get_run_logger()
    plan = plan_ingest(corpus, params, layout)
    pending = plan.pending
    logger.info("ingest: %d PDFs, %d to parse", len(plan.pdfs), len(pending))
    states = parse_paper.map(pending, unmapped(params), return_state=True) if pending else []
    results = {}
    for pdf, state in zip(pending, states):
        if state.is_completed():
            results[pdf.paper_sha] = state.result()
        else:  # a timeout or crash quarantines the paper instead of failing the run
            results[pdf.paper_sha] = Quarantined("parse_error", f"parse task {state.name}: {state.message}")
    report = finish_ingest(plan, results, layout)
    summary = {k: v for k, v in vars(report).items() if k != "tables"}
    create_table_artifact(key="ingest-summary", table=[summary], description="Papers ingested in this run")
    logger.info("ingest: %s", summary)
    return summary


if __name__ == "__main__":
    params, layout = stage_args("Ingest papers (DVC stage ingest).")
    ingest_flow.with_options(task_runner=task_runner(params.ingest.workers))(params.corpus, params.ingest, layout)
