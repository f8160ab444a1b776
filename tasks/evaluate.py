"""Prefect tasks of the evaluate stage and of promotion (library: ``glassllava.evaluate``, ``glassllava.promotion``).

A missing input (``EvaluateInputError``: no evaluation set, no model) is returned, not raised: the flow fails its
run with the one-line message. Judge requests carry the Prefect tag ``llm``, so a concurrency limit on that tag
(``prefect concurrency-limit create llm 8``) caps them together with QA generation.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from glassllava import evaluate
from glassllava.params import DataLayout, Params
from tasks.llm_limit import hold_llm_slots


def _progress_logger():
    """Progress lines in the flow run's log, about twenty per phase."""
    from prefect import get_run_logger

    logger, shown = get_run_logger(), {}

    def progress(what: str, done: int, total: int) -> None:
        step = max(total // 20, 1)
        if done == total or done - shown.get(what, -step) >= step:
            shown[what] = done
            logger.info("%s: %d/%d", what, done, total)

    return progress


@task(name="evaluate", cache_policy=NONE, tags=["llm"])
def run_evaluate(params: Params, layout: DataLayout) -> evaluate.EvaluateReport | evaluate.EvaluateInputError:
    """Every row's answers to the held-out questions, judged, summarised with intervals, reported, logged to MLflow."""
    hold_llm_slots()
    try:
        return evaluate.run_evaluate(params, layout, progress=_progress_logger())
    except evaluate.EvaluateInputError as e:
        return e


@task(name="promote", cache_policy=NONE, tags=["llm"])
def promote(params: Params, layout: DataLayout) -> dict:
    """The candidate against the champion on the same evaluation set; the decision in reports/promotion.json and MLflow."""
    hold_llm_slots()
    return evaluate.promote_candidate(params, layout, progress=_progress_logger())
