"""The nightly flow: retrain when new papers arrive, promote the model if it wins, say what happened.

It wraps ``dvc repro`` (the one pipeline definition) and is not a DVC stage. One night:

1. takes the workspace's pipeline lock (``glassllava.pipeline_lock``): a second night, or a hand-started
   ``dvc repro``, is turned away with the holder's name instead of changing data under this one;
2. syncs: ``git pull --ff-only`` where the branch tracks a remote, ``dvc pull`` of what the remote has;
3. looks for new papers (generated corpus, inbox, URL list: ``glassllava.ingest.new_papers``) and for stale
   stages (``dvc status``: changed code or params). With neither, and a champion in the registry, it stops
   here: no LLM call, no training, a few seconds;
4. reproduces up to the dataset (``dvc repro dataset gallery``; the new PDFs land content-addressed in
   ``data/raw/pdfs``, a DVC output) and pushes the data to the DVC remote (optionally commits ``dvc.lock``);
5. trains, evaluates and promotes on the GPU pool through the ``train-remote/train`` deployment
   (``run_deployment``; ``train_deployment=None`` runs the same flow here instead);
6. posts the decision, the headline numbers and links (MLflow run, report) as Prefect artifacts.

A night killed half-way resumes on the next run: every stage keeps its finished items (per-paper caches,
the LLM request cache, training checkpoints), the kill released the lock, and ``dvc status`` still shows the
unfinished stages. Deployed by ``prefect.yaml`` (cron, time zone, concurrency limit 1 with CANCEL_NEW).
"""

from __future__ import annotations

import flows._stage  # noqa: F401, I001 - first: sets Prefect's environment defaults
import logging
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.deployments import run_deployment
from prefect.states import Cancelled

from glassllava import pipeline_lock
from glassllava.ingest import new_papers
from flows.evaluate import HEADLINE as EVAL_HEADLINE
from glassllava.params import DataLayout, load_params
from tasks.pipeline import commit_lock, dvc_push, dvc_repro, dvc_status, git_head, sync

BEFORE_TRAINING = ["dataset", "gallery"]  # the DVC targets reproduced on the CPU side
HEADLINE = (*EVAL_HEADLINE, "eval_questions")


def _champion(params) -> int | None:
    from glassllava import tracking

    mv = tracking.get_alias_version(params.tracking.registered_model, params.evaluate.promotion.champion_alias)
    return int(mv.version) if mv is not None else None


def _from_registry(params) -> dict:
    """What the GPU flow decided, read back from MLflow (where the deployment's persisted result is out of reach:
    a pool without shared result storage). The candidate version's ``promotion.*`` tags and its run's numbers."""
    from glassllava import tracking

    mv = tracking.get_alias_version(params.tracking.registered_model, params.tracking.candidate_alias)
    if mv is None:
        return {}
    tags = mv.tags or {}
    run = tracking._client().get_run(mv.run_id) if mv.run_id else None
    head = {k.removeprefix("eval."): v for k, v in (run.data.metrics if run else {}).items() if k.startswith("eval.")}
    decision = {"action": tags.get("promotion.action", "unknown"), "reason": tags.get("promotion.reason", ""), "candidate_version": int(mv.version)}
    return {"decision": decision, "headline": head, "mlflow_run_id": mv.run_id, "model_version": int(mv.version), "stages_run": []}


def _post(night: dict) -> None:
    """The night in the Prefect UI: the decision, the numbers, the links."""
    decision = night.get("decision") or {}
    head = night.get("headline") or {}
    new = night.get("new_papers", [])
    lines = [f"## Nightly run: {night['action']}", "", night["summary"], ""]
    if new:
        lines += [f"New inputs ({len(new)}):", ""] + [f"- `{n['source']}` ({n['why']})" for n in new[:50]] + [""]
    if night.get("stages_run"):
        lines += [f"Stages run: {', '.join(night['stages_run'])}", ""]
    if decision:
        lines += [f"**Promotion: {decision.get('action')}.** {decision.get('reason', '')}", ""]
    if head:
        lines += ["| number | value | 95 % interval |", "|---|---|---|"]
        lines += [f"| {k} | {head[k]:.4g} | {head.get(k + '_lo', '')}–{head.get(k + '_hi', '')} |"
                  for k in HEADLINE if isinstance(head.get(k), (int, float))]
    create_markdown_artifact(key="nightly-decision", markdown="\n".join(lines), description="What this night did and why")
    if head:
        create_table_artifact(key="nightly-headline", table=[{k: head[k] for k in HEADLINE if k in head}],
                              description="The candidate's headline numbers (reports/eval.json)")
    if url := night.get("mlflow_run_url"):
        create_link_artifact(key="nightly-mlflow-run", link=url, link_text="MLflow run of tonight's model")
    if report := night.get("report"):
        create_link_artifact(key="nightly-report", link=Path(report).resolve().as_uri(), link_text="Evaluation report")


@flow(name="nightly")
def nightly(
    repo: str = ".",
    force: bool = False,
    train_deployment: str | None = "train-remote/train",
    train_job_variables: dict | None = None,
    deployment_timeout_s: float = 12 * 3600,
    git_sync: bool = True,
    commit: bool = False,
) -> dict:
    """One night. ``force``: run even with nothing new. ``train_deployment``: the GPU pool's deployment (None:
    train here). ``train_job_variables``: per-run overrides of that deployment's job variables (GPU count ...).
    ``commit``: commit ``dvc.lock`` after the dataset (and push it where the branch tracks a remote), so a pool
    that clones the repository trains on exactly this night's data."""
    logger = get_run_logger()
    workspace = Path(repo).resolve()
    started = datetime.now(timezone.utc)
    try:
        held = pipeline_lock.acquire(workspace, f"nightly flow run {runtime.flow_run.name or '(local)'}")
    except pipeline_lock.PipelineBusy as e:
        logger.warning("%s", e)
        create_markdown_artifact(key="nightly-decision", markdown=f"## Nightly run: skipped\n\n{e}", description="Another run holds the workspace")
        return Cancelled(message=f"skipped: {e}")
    try:
        night = _night(workspace, held, force, train_deployment, train_job_variables, deployment_timeout_s, git_sync, commit)
    finally:
        held.release()
    night["wall_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    logger.info("nightly: %s (%s) in %.0f s", night["action"], night["summary"], night["wall_s"])
    _post(night)
    return night


def _night(workspace: Path, held, force, train_deployment, train_job_variables, deployment_timeout_s, git_sync, commit) -> dict:
    logger = get_run_logger()
    repo = str(workspace)
    synced = sync(repo, git_pull=git_sync)
    params = load_params(workspace / "params.yaml")
    layout = DataLayout(workspace / "data")
    # relative inbox / URL paths in params are relative to the workspace, as for the stages
    corpus = params.corpus.model_copy(update={
        k: str(workspace / v) for k in ("inbox", "urls_file") if not Path(v := getattr(params.corpus, k)).is_absolute()})
    new = new_papers(corpus, params.ingest, layout)
    stale = dvc_status(repo)
    champion = _champion(params)
    logger.info("nightly: %d new inputs, stale stages %s, champion %s", len(new), stale or "none", champion)
    base = {"synced": synced, "new_papers": new, "stale_stages": stale, "champion_before": champion}
    if not new and not stale and champion is not None and not force:
        return {**base, "action": "nothing_new", "summary": f"no new papers and every stage up to date; champion stays version {champion}",
                "stages_run": []}
    # a URL whose failed download is due again changes no DVC input: ask ingest explicitly
    retry_urls = any(n["why"] == "failed download due again" for n in new)
    ran = dvc_repro(repo, BEFORE_TRAINING, env=held.env(), force_stages=["ingest"] if retry_urls else None)
    pushed = dvc_push(repo)
    rev = commit_lock(repo, f"nightly {datetime.now(timezone.utc):%Y-%m-%d}: {len(new)} new inputs", push=True) if commit else git_head(repo)
    parameters = {"repo": ".", "git_rev": rev if commit else None, "lock_token": held.token}
    if train_deployment:
        logger.info("nightly: training on the pool through deployment %s", train_deployment)
        run = run_deployment(train_deployment, parameters=parameters, job_variables=train_job_variables,
                             timeout=deployment_timeout_s, as_subflow=True)
        if not run.state or not run.state.is_completed():
            raise RuntimeError(f"deployment {train_deployment} run {run.name} ended {run.state.name if run.state else 'without a state'}: "
                               f"{run.state.message if run.state else ''}")
        try:
            trained = run.state.result()
        except Exception as e:  # noqa: BLE001 - the result lives in the pool's storage: read the decision from MLflow
            logger.warning("the deployment's result is not readable here (%s); reading the decision from MLflow", e)
            trained = _from_registry(load_params(workspace / "params.yaml"))
    else:
        from flows.train_remote import train_remote

        trained = train_remote(**{**parameters, "repo": repo})
    decision = trained.get("decision") or {}
    action = decision.get("action", "trained")
    from glassllava import tracking

    url = tracking.run_url(trained["mlflow_run_id"]) if trained.get("mlflow_run_id") else None
    return {
        **base, **trained, "mlflow_run_url": url, "stages_run": ran + trained.get("stages_run", []), "pushed": pushed,
        "action": action, "summary": f"{len(new)} new inputs; model version {trained.get('model_version')}: {action}",
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="One nightly run (retrain when new papers arrive; promote if better).")
    parser.add_argument("--repo", default=".")
    parser.add_argument("--force", action="store_true", help="run even with nothing new")
    parser.add_argument("--local", action="store_true", help="train in this process instead of on the GPU pool's deployment")
    parser.add_argument("--commit", action="store_true", help="commit dvc.lock after the dataset")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = nightly(repo=args.repo, force=args.force, train_deployment=None if args.local else "train-remote/train",
                    commit=args.commit, return_state=True)
    raise SystemExit(0 if state.is_completed() or state.is_cancelled() else 1)
