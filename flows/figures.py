"""Flow of the DVC stage ``figures``: one task per paper not yet cached, then the tables."""

from __future__ import annotations

from flows._stage import stage_args  # noqa: I001 - first: sets Prefect's environment defaults
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact

from flows._stage import task_runner
from glassllava.params import DataLayout, FiguresParams
from tasks.figures import finish_figures, paper_figures, plan_figures


@flow(name="figures", task_runner=task_runner(1))  # one PDF at a time unless `workers` asks for processes
def figures_flow(params: FiguresParams, layout: DataLayout) -> dict:
    logger = get_run_logger()
    key, papers, todo = plan_figures(params, layout)
    logger.info("figures: %d papers, %d to process", len(papers), len(todo))
    if todo:
        shas, paths = zip(*todo)
        states = paper_figures.map(list(shas), list(paths), unmapped(params), unmapped(layout), unmapped(key), return_state=True)
        failed = [s for s in states if not s.is_completed()]
        for s in failed:
            logger.warning("figures task %s: %s", s.name, s.message)
    report = finish_figures(params, layout, key, papers, len(todo))
    summary = {k: (str(v) if hasattr(v, "parts") else v) for k, v in vars(report).items()}
    create_table_artifact(key="figures-summary", table=[summary], description="Figures extracted in this run")
    logger.info("figures: %s", summary)
    return summary


if __name__ == "__main__":
    params, layout = stage_args("Extract figures, panels and SEM micrographs (DVC stage figures).")
    figures_flow.with_options(task_runner=task_runner(params.figures.workers))(params.figures, layout)
