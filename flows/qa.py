"""Flow of the DVC stage ``qa``: question-answer records for every SEM panel.

Offline (no key): one task. With an LLM: one task per panel, ``qa.llm.concurrency`` at a time and
tagged ``llm`` for a server-wide concurrency limit; in Batch API mode, one task submits or collects
the batch. The flow's artifacts show the counts and the cost in the Prefect UI.
"""

from __future__ import annotations

from flows._stage import stage_args  # noqa: I001 - first: sets Prefect's environment defaults
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from glassllava.params import DataLayout, QAParams
from glassllava.qa import PanelOutcome
from tasks.qa import answer_all, answer_panel, finish_qa, plan_qa


@flow(name="qa")
def qa_flow(params: QAParams, layout: DataLayout) -> dict:
    logger = get_run_logger()
    kind, panels = plan_qa(params, layout)
    logger.info("qa: %d panels, generator %s%s", len(panels), kind, " (batch)" if kind == "llm" and params.llm.batch else "")
    batches, account = {}, None
    if kind == "offline" or params.llm.batch:
        outcomes, batches, account = answer_all(params, layout, kind, panels)
    else:
        states = answer_panel.map(panels, unmapped(params), unmapped(layout), return_state=True)
        outcomes = []
        for panel, state in zip(panels, states):
            if state.is_completed():
                outcomes.append(state.result())
            else:  # a crashed panel task: reported, asked again next run
                logger.warning("qa panel %s: %s", panel.panel_id, state.message)
                outcomes.append(
                    PanelOutcome(panel.panel_id, panel.paper_sha, "", [], [{"reason": "request_failed", "detail": str(state.message), "raw": ""}], False)
                )
    report = finish_qa(params, layout, kind, outcomes, batches, account)
    create_table_artifact(key="qa-summary", table=[{k: v for k, v in vars(report).items() if not isinstance(v, dict)}], description="QA records made in this run")
    create_markdown_artifact(key="qa-report", markdown=f"## QA\n\n{report.summary()}\n\nRejected: {report.rejected_by_reason or 'none'}\n", description="QA stage summary")
    logger.info(report.summary())
    return vars(report)


if __name__ == "__main__":
    params, layout = stage_args("Generate question-answer records for SEM panels (DVC stage qa).")
    qa_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=params.qa.llm.concurrency))(params.qa, layout)
