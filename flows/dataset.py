"""Flow of the DVC stage ``dataset``: the QA records and panel captions as LLaVA-style conversations.

One task (``glassllava.dataset.build_dataset``). The counts per split go to a table artifact; a domain
error (leakage, nothing to train on, missing inputs) fails the flow run with its message, and
``python -m flows.dataset`` then exits with that one line and status 1.
"""

from __future__ import annotations

import sys

from flows._stage import stage_args  # noqa: I001 - first: sets Prefect's environment defaults
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Failed, State

from glassllava.dataset import DatasetError
from glassllava.params import DataLayout, DatasetParams
from tasks.dataset import build_dataset


@flow(name="dataset")
def dataset_flow(params: DatasetParams, layout: DataLayout) -> dict | State:
    logger = get_run_logger()
    report = build_dataset(params, layout)
    if isinstance(report, DatasetError):
        message = f"{type(report).__name__}: {report}"
        logger.error("dataset: %s", message)
        return Failed(message=message)
    table = [{"split": split, **counts} for split, counts in report.splits.items()]
    table.append({"split": "skipped", "conversations": 0, "turns": 0, "images": report.skipped["images"], "papers": 0,
                  "inputs": report.skipped["qa_records"] + report.skipped["align_panels"]})
    notes = "".join(f"; WARNING: {w}" for w in report.warnings)  # the library logs them too
    description = f"Conversations per split; fingerprint {report.fingerprint[:12]}{notes}"
    create_table_artifact(key="dataset-summary", table=table, description=description)
    logger.info(report.summary())
    return vars(report)


if __name__ == "__main__":
    params, layout = stage_args("Build training conversations, LLaVA JSON and the alignment set (DVC stage dataset).")
    final = dataset_flow(params.dataset, layout, return_state=True)
    if not final.is_completed():
        sys.exit(f"dataset: {final.message}")
