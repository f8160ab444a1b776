"""The nightly flow: reproduce the pipeline for whatever papers arrived, and report.

It wraps ``dvc repro`` (the one pipeline definition) rather than calling stages itself, and
is not a DVC stage. Training on the GPU pool and promotion through MLflow aliases join here
as those stages land. Deployed by ``prefect.yaml`` (``prefect deploy --all``).
"""

from __future__ import annotations

import flows._stage  # noqa: F401, I001 - first: sets Prefect's environment defaults
import json
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from glassllava.params import DataLayout
from glassllava.report import pipeline_status


@task(name="dvc-repro", retries=1, retry_delay_seconds=60)
def dvc_repro(repo: str, targets: list[str]) -> str:
    """Run ``dvc repro`` in ``repo``; raise with DVC's own output when it fails."""
    cmd = [sys.executable, "-m", "dvc", "repro", *targets]
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


@flow(name="nightly")
def nightly(repo: str = ".", targets: list[str] | None = None) -> list[tuple[str, str, str]]:
    logger = get_run_logger()
    out = dvc_repro(repo, targets or [])
    ran = [line for line in out.splitlines() if line.startswith("Running stage")]
    logger.info("dvc repro: %s", "; ".join(ran) or "nothing changed")
    status = pipeline_status(DataLayout(Path(repo) / "data"))
    rows = "\n".join(f"| {s} | {w} | `{p}` |" for s, w, p in status)
    qa_report = Path(repo) / "data" / "qa" / "report.json"
    qa_line = ""
    if qa_report.exists():
        qa = json.loads(qa_report.read_text())
        spent = qa["spent"]
        qa_line = (
            f"\n\nQA: {qa['records']} records by {qa['generator']} ({qa['panels_pending']} panels waiting), "
            f"{spent['prompt_tokens'] + spent['completion_tokens']} tokens, ${spent['cost_usd_at_list_price']:.2f} at list price in all"
        )
    create_markdown_artifact(
        key="nightly-report",
        markdown=f"## Nightly run\n\nStages run: {len(ran)}{qa_line}\n\n| stage | what | where |\n|---|---|---|\n{rows}\n",
        description="What the nightly run reproduced",
    )
    return status


if __name__ == "__main__":
    nightly()
