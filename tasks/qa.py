"""Prefect tasks of the qa stage (library: ``glassllava.qa``).

LLM tasks carry the ``llm`` tag (``prefect concurrency-limit create llm 8`` caps such tasks in flight), and each
request holds a slot of the global concurrency limit ``llm-endpoint`` (``tasks.llm_limit``), which caps requests
to the endpoint across every flow run on the server. The library already
retries transient HTTP errors with backoff; the task retry is for the unexpected.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from glassllava import qa
from glassllava.params import DataLayout, QAParams
from tasks.llm_limit import hold_llm_slots


@task(name="plan-qa", cache_policy=NONE)
def plan_qa(params: QAParams, layout: DataLayout) -> tuple[str, list[qa.PanelInput]]:
    """Which generator answers (offline or llm) and the panels to ask about."""
    return qa.resolve_generator(params), qa.load_panels(params, layout)


@task(name="qa-panel", cache_policy=NONE, task_run_name="qa {panel.panel_id}", tags=["llm"], retries=1, retry_delay_seconds=30)
def answer_panel(panel: qa.PanelInput, params: QAParams, layout: DataLayout) -> qa.PanelOutcome:
    """One panel's records from the LLM (or its result file when nothing changed)."""
    hold_llm_slots()
    return qa.answer_panel(panel, qa.make_generator(params, layout, "llm"), layout)


@task(name="qa-all-panels", cache_policy=NONE)
def answer_all(params: QAParams, layout: DataLayout, kind: str, panels: list[qa.PanelInput]) -> tuple[list[qa.PanelOutcome], dict, dict | None]:
    """Every panel in one task: the offline generator (fast), or the Batch API (one upload)."""
    hold_llm_slots()
    gen = qa.make_generator(params, layout, kind)
    outcomes, batches = qa.answer_panels(panels, gen, layout)
    return outcomes, batches, gen.client.account.as_dict() if gen.client else None


@task(name="finish-qa", cache_policy=NONE)
def finish_qa(params: QAParams, layout: DataLayout, kind: str, outcomes: list, batches: dict, account: dict | None) -> qa.QAReport:
    """Split by paper, write train/eval/rejected tables, report.json and the examples page."""
    name = qa.Generator(kind, params).name
    prompt_version = qa.load_prompt(params.prompt).version if kind == "llm" else ""
    return qa.finish_qa(params, layout, name, prompt_version, outcomes, batches=batches, account=account)
