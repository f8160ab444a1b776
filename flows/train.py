"""Flow of the DVC stage ``train``: the training recipe under torchrun, then its numbers in the Prefect UI.

``python -m flows.train`` is the stage's cmd; on a GPU pool the same flow runs with
``PET_NPROC_PER_NODE=gpu`` (one process per GPU) in the work pool's environment.
"""

from __future__ import annotations

import flows._stage  # noqa: F401, I001 - first: sets Prefect's environment defaults
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from glassllava.params import load_params_or_exit
from glassllava.train import TrainingError
from tasks.train import run_training


@flow(name="train")
def train_flow(params_path: Path = Path("params.yaml"), data: Path = Path("data")) -> dict:
    logger = get_run_logger()
    report = run_training(params_path, data)
    row = {k: report[k] for k in ("preset", "samples_per_s", "tokens_per_s", "mfu", "peak_mem_gib", "wall_s", "mlflow_run_id", "model_version")}
    create_table_artifact(key="train-summary", table=[row], description="Training run")
    curve = report["loss_curve"]
    evals = "".join(f"| {e['stage']} | {e['epoch']} | {e['eval_loss']:.4f} |\n" for e in report["eval_loss"])
    samples = "".join(f"- **Q:** {s['question'][:200]}\n  **A:** {s['answer'][:300]}\n" for s in report["samples"])
    create_markdown_artifact(
        key="train-report",
        markdown=(f"## Training: {report['preset']}\n\nfinal loss {curve[-1]['loss'] if curve else 'n/a'}, {report['samples_per_s']:.2f} samples/s, "
                  f"MFU {100 * report['mfu']:.2f} % ({report['peak_source']}), model `{report['model_dir']}`, MLflow run `{report['mlflow_run_id']}`"
                  f" (registered version {report['model_version']})\n\n| stage | epoch | eval loss |\n|---|---|---|\n{evals}\n{samples}"),
        description="Training report",
    )
    logger.info("trained %s: model in %s, MLflow run %s", report["preset"], report["model_dir"], report["mlflow_run_id"])
    return report


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Train the model (DVC stage train).")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    args = parser.parse_args()
    load_params_or_exit(args.params)  # a bad params file: its problems, exit 2, before the flow and torchrun
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from flows._stage import take_pipeline_lock
    from glassllava.params import DataLayout

    take_pipeline_lock(DataLayout(args.data), "stage flows.train")
    try:
        train_flow(args.params, args.data)
    except TrainingError as e:
        print(f"train: {e}", file=sys.stderr)
        sys.exit(1)
