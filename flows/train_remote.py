"""The GPU pool's flow: train, evaluate and promote where the GPUs are.

Deployed as ``train-remote/train`` on ``a100-pool`` (``prefect.yaml``); the nightly flow starts it with
``run_deployment`` once the dataset is reproduced and pushed. On the worker it

1. checks out the nightly's commit when given one (a pool whose pull step cloned the repository),
2. runs ``dvc repro --pull train evaluate``: the dataset comes from the DVC remote where this machine lacks
   it, training runs under torchrun with one process per GPU (``PET_NPROC_PER_NODE`` from the pool's job
   variables), and evaluation answers the held-out questions with the new model,
3. pushes the model and the evaluation caches (``dvc push``),
4. promotes the candidate in the MLflow registry if it beats the champion on the same evaluation set. This
   runs here, not in the nightly flow, because a champion evaluated on an older set is evaluated again,
   which takes the model and the GPU.

It returns the decision, the headline numbers and the MLflow run (persisted, so the nightly flow can read it).
"""

from __future__ import annotations

import flows._stage  # noqa: F401, I001 - first: sets Prefect's environment defaults
from pathlib import Path

from prefect import flow, get_run_logger

from glassllava import pipeline_lock
from glassllava.evaluate import reports_dir
from glassllava.files import read_json
from glassllava.params import DataLayout, load_params
from tasks.evaluate import promote
from tasks.pipeline import dvc_push, dvc_repro, git_head, sh


@flow(name="train-remote", persist_result=True)
def train_remote(repo: str = ".", git_rev: str | None = None, lock_token: str | None = None, push: bool = True,
                 promote_candidate: bool = True) -> dict:
    logger = get_run_logger()
    workspace = str(Path(repo).resolve())
    if git_rev and git_head(workspace) != git_rev:
        sh(["git", "fetch", "--quiet", "--all"], workspace)
        sh(["git", "checkout", "--quiet", git_rev], workspace)
    # the nightly's token lets this run's stages in where the night holds the workspace (one machine);
    # elsewhere the lock is this machine's own
    with pipeline_lock.pipeline_lock(workspace, "train-remote flow", token=lock_token) as held:
        env = held.env()
        ran = dvc_repro(workspace, ["train", "evaluate"], env=env, pull=True)
        pushed = dvc_push(workspace) if push else "not pushed"
        params = load_params(Path(workspace) / "params.yaml")
        layout = DataLayout(Path(workspace) / "data")
        decision = promote(params, layout) if promote_candidate else None
    train_report = read_json(layout.train / "report.json")
    eval_head = read_json(reports_dir(layout) / "eval.json")
    logger.info("train-remote: stages %s; %s", ", ".join(ran) or "none (up to date)", decision and decision["action"])
    return {
        "stages_run": ran,
        "pushed": pushed,
        "decision": decision,
        "headline": eval_head,
        "mlflow_run_id": train_report.get("mlflow_run_id"),
        "model_version": train_report.get("model_version"),
        "report": str(reports_dir(layout) / "eval.html"),
        "git_rev": git_head(workspace),
    }


if __name__ == "__main__":
    train_remote()
