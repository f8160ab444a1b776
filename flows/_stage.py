"""Plumbing shared by the stage entry points: arguments, params, logging, the pipeline lock, task runner choice."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _wire_services(workspace: Path) -> None:
    """The servers of ``make ui`` (scripts/ui writes ``.glassllava/services.json``), where this process has no
    Prefect API of its own and they answer: flows report to that server, artifact links point at that MLflow UI."""
    import json
    import urllib.request

    path = workspace / ".glassllava" / "services.json"
    if os.environ.get("PREFECT_API_URL") or not path.is_file():
        return
    try:
        services = json.loads(path.read_text())
        urllib.request.urlopen(services["prefect_api"] + "/health", timeout=1)
    except (OSError, ValueError, KeyError):
        return
    os.environ["PREFECT_API_URL"] = services["prefect_api"]
    if services.get("mlflow_ui"):
        os.environ.setdefault("GLASSLLAVA_MLFLOW_UI", services["mlflow_ui"])


_wire_services(Path.cwd())
# Without PREFECT_API_URL each stage process starts a temporary Prefect server; on a busy
# 2-core machine that can take longer than Prefect's 20 s default.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from glassllava import pipeline_lock
from glassllava.params import DataLayout, Params, load_params_or_exit

_held: list[pipeline_lock.Held] = []  # the stage's lock, held until the process exits (the kernel drops it then)


def take_pipeline_lock(layout: DataLayout, holder: str) -> None:
    """The workspace's pipeline lock for this stage process, or exit 3 saying who holds it. A stage run by the
    nightly flow's own ``dvc repro`` enters with the night's token (``GLASSLLAVA_PIPELINE_LOCK``)."""
    try:
        _held.append(pipeline_lock.acquire(layout.root.resolve().parent, holder))
    except pipeline_lock.PipelineBusy as e:
        print(f"{holder}: {e}", file=sys.stderr)
        sys.exit(3)


def stage_args(description: str) -> tuple[Params, DataLayout]:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params.yaml to read")
    parser.add_argument("--data", type=Path, default=Path("data"), help="data root")
    args = parser.parse_args()
    params = load_params_or_exit(args.params)  # before any flow runs (and before a Prefect server starts)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per LLM or Prefect API request
    layout = DataLayout(args.data)
    main = sys.modules["__main__"]
    take_pipeline_lock(layout, f"stage {getattr(main.__spec__, 'name', None) or Path(sys.argv[0]).stem}")
    return params, layout


TASK_RUNNER_ENV = "GLASSLLAVA_TASK_RUNNER"  # dask: prefect-dask's runner (GLASSLLAVA_DASK_ADDRESS, else a local cluster)
DASK_ADDRESS_ENV = "GLASSLLAVA_DASK_ADDRESS"


def task_runner(workers: int):
    """Where a stage's per-paper tasks run. Infrastructure, so it comes from the environment and never reaches
    dvc.lock: by default one thread for one worker and processes beyond (pdfium runs one document at a time per
    process: glassllava.pdfdoc); with ``GLASSLLAVA_TASK_RUNNER=dask`` prefect-dask's task runner on the Dask
    scheduler at ``GLASSLLAVA_DASK_ADDRESS`` (``tcp://scheduler:8786``), else on a local cluster of ``workers``
    single-threaded worker processes. The tables are the same either way (tests/flows/test_dask.py)."""
    if os.environ.get(TASK_RUNNER_ENV, "").lower() == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            sys.exit(f"{TASK_RUNNER_ENV}=dask needs prefect-dask: pip install -e '.[dask]'")
        if address := os.environ.get(DASK_ADDRESS_ENV):
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": max(workers, 1), "threads_per_worker": 1, "processes": True})
    return ThreadPoolTaskRunner(max_workers=1) if workers <= 1 else ProcessPoolTaskRunner(max_workers=workers)
