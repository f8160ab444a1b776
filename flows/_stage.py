"""Plumbing shared by the stage entry points: arguments, params, logging, task runner choice."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

# Without PREFECT_API_URL each stage process starts a temporary Prefect server; on a busy
# 2-core machine that can take longer than Prefect's 20 s default.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from glassllava.params import DataLayout, Params, load_params_or_exit


def stage_args(description: str) -> tuple[Params, DataLayout]:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to read")
    parser.add_argument("--data", type=Path, default=Path("data"), help="data root")
    args = parser.parse_args()
    params = load_params_or_exit(args.params)  # before any flow runs (and before a Prefect server starts)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per LLM or Prefect API request
    return params, DataLayout(args.data)


def task_runner(workers: int):
    """One thread for one worker; processes beyond (pdfium runs one document at a time per process: glassllava.pdfdoc)."""
    return ThreadPoolTaskRunner(max_workers=1) if workers <= 1 else ProcessPoolTaskRunner(max_workers=workers)
