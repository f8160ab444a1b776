"""Flow of the DVC stage ``evaluate``: the same held-out questions for every row (trained model, blind, base,
majority, and a vision model where a key is set), judged (offline proxies, or an LLM judge), with 95 %
intervals over images, a report, and the numbers on the model's MLflow run.

Promotion (``python -m flows.evaluate --promote``) changes the MLflow registry, which DVC does not track: it is
not part of the stage; ``make run`` and the nightly flow run it after ``dvc repro``.
"""

from __future__ import annotations

import sys

from flows._stage import stage_args  # noqa: I001 - first: sets Prefect's environment defaults
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed, State

from glassllava.evaluate import EvaluateInputError
from glassllava.params import DataLayout, Params
from tasks.evaluate import promote, run_evaluate

HEADLINE = ("defect_accuracy", "defect_accuracy_none", "defect_accuracy_high", "quality", "proxy_quality", "features", "proxy_feature_score")


@flow(name="evaluate")
def evaluate_flow(params: Params, layout: DataLayout) -> dict | State:
    logger = get_run_logger()
    report = run_evaluate(params, layout)
    if isinstance(report, EvaluateInputError):
        logger.error("evaluate: %s", report)
        return Failed(message=str(report))
    head = report.headline
    rows = [{"number": k, "value": head[k], "95% interval": f"{head.get(k + '_lo')}–{head.get(k + '_hi')}"} for k in HEADLINE if k in head]
    create_table_artifact(key="evaluation-headline", table=rows,
                          description=f"{report.questions} questions on {report.images} images; judge: {report.judge}")
    create_markdown_artifact(key="evaluation-report", markdown=report.report_md.read_text(), description=f"Report: {report.report_html}")
    logger.info("evaluate: %d questions, rows %s (%s from cache), judge %s, %d judgment failures; report %s",
                report.questions, report.rows, report.rows_from_cache, report.judge, report.judge_failures, report.report_html)
    return {k: (str(v) if hasattr(v, "parts") else v) for k, v in vars(report).items() if k != "headline"}


@flow(name="promote")
def promote_flow(params: Params, layout: DataLayout) -> dict:
    record = promote(params, layout)
    create_markdown_artifact(key="promotion-decision", markdown=f"**{record['action']}**: {record['reason']}",
                             description="Candidate vs champion")
    get_run_logger().info("promotion: %s (%s)", record["action"], record["reason"])
    return record


if __name__ == "__main__":
    promote_only = "--promote" in sys.argv
    if promote_only:
        sys.argv.remove("--promote")
    params, layout = stage_args("Evaluate the trained model against baselines (DVC stage evaluate); --promote: promote the candidate.")
    if promote_only:
        promote_flow(params, layout)
    else:
        final = evaluate_flow(params, layout, return_state=True)
        if not final.is_completed():
            sys.exit(f"evaluate: {final.message}")
