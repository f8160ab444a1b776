"""Prefect tasks of the train stage (library: ``glassllava.train``).

The task carries the ``gpu`` tag: ``prefect concurrency-limit create gpu N`` caps trainings in flight
on a pool with N GPUs' worth of workers. Training resumes from its last checkpoint, so a retry after a
crash (a preempted node, a lost worker) continues rather than starts over.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from glassllava import train


@task(name="torchrun-train", cache_policy=NONE, tags=["gpu"], retries=1, retry_delay_seconds=10, timeout_seconds=48 * 3600)
def run_training(params_path: Path, data: Path) -> dict:
    """Train under torchrun (processes per node from PET_NPROC_PER_NODE), streaming its log; the training report."""
    logger = get_run_logger()
    return train.launch(params_path, data, on_line=logger.info)
