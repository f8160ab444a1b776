"""Five nights of the nightly flow in a throwaway clone, against a local OpenAI-speaking server, with the training
deployment of prefect.yaml served by a real process worker of ``a100-pool``.

Night 1 builds everything and promotes; night 2 has nothing new (no LLM call, no training); night 3 brings one
new paper, turns away a second night started meanwhile and is killed half-way through QA; night 4 resumes it,
processes only the new paper without asking anything answered twice, and keeps the champion (its candidate
loses).
The nights run in order on one workspace (module-scoped fixtures), each test one night.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from glassllava import pipeline_lock
from glassllava.synth import generate_corpus

from ..conftest import REPO
from ..fake_openai import FakeOpenAI
from .workspace import env_for, make_workspace, small_params

pytestmark = [pytest.mark.flow, pytest.mark.slow]
DEPLOYMENT = "train-remote/train"


@pytest.fixture(scope="module")
def llm():
    with FakeOpenAI(hang_s=90) as server:
        yield server


@pytest.fixture(scope="module")
def night_env(prefect_api, llm, tmp_path_factory):
    """The workspace, its MLflow store, a registered training deployment and a worker of a100-pool running it."""
    root = tmp_path_factory.mktemp("nightly")
    params = small_params(corpus={"sources": ["generated", "inbox"]},
                          qa={"generator": "llm", "llm.base_url": llm.base_url, "llm.model": "fake-gpt", "llm.concurrency": 1,
                              "llm.backoff_s": 0.0, "llm.max_retries": 1})
    repo = make_workspace(root, params)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = env_for(PREFECT_API_URL=prefect_api, MLFLOW_TRACKING_URI=uri, GLASSLLAVA_REPO=str(repo), PREFECT_WORKER_QUERY_SECONDS="1",
                  PREFECT_WORKER_PREFETCH_SECONDS="1", GLASSLLAVA_IMAGE="glassllava:test", LLM_LIMIT="2")
    setup = subprocess.run(["scripts/prefect-setup"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    assert "llm-endpoint" in setup.stdout
    worker = subprocess.Popen(["prefect", "worker", "start", "--pool", "a100-pool", "--limit", "1"], cwd=root, env=env,
                              stdout=open(root / "worker.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        os.environ.pop(key, None)
    try:
        yield {"repo": repo, "root": root, "uri": uri, "env": env, "worker_log": root / "worker.log",
               "job_variables": {"env": {"PET_NPROC_PER_NODE": "1", "MLFLOW_TRACKING_URI": uri}}}
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        import mlflow

        mlflow.set_tracking_uri(None)


def _night(night_env, **kw):
    from flows.nightly import nightly

    state = nightly(repo=str(night_env["repo"]), train_deployment=DEPLOYMENT, train_job_variables=night_env["job_variables"],
                    deployment_timeout_s=900, return_state=True, **kw)
    if not (state.is_completed() or state.is_cancelled()):
        log = night_env["worker_log"].read_text()[-4000:]
        pytest.fail(f"night ended {state.name}: {state.message}\nworker log:\n{log}")
    return state


def _versions(uri: str) -> list[int]:
    from mlflow import MlflowClient

    return sorted(int(v.version) for v in MlflowClient(tracking_uri=uri).search_model_versions("name='glassllava'"))


def _aliases(uri: str) -> dict[str, int]:
    from mlflow import MlflowClient

    return {k: int(v) for k, v in MlflowClient(tracking_uri=uri).get_registered_model("glassllava").aliases.items()}


def _artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no artifact {key}"
    return found[0].data


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _new_paper(night_env, seed: int) -> str:
    """One new generated paper dropped into the inbox; its sha256."""
    out = night_env["root"] / f"extra-{seed}"
    manifest = generate_corpus(out, papers=1, seed=seed)
    pdf = sorted((out / "pdfs").glob("*.pdf"))[0]
    shutil.copy(pdf, night_env["repo"] / "data" / "inbox" / f"new-{seed}.pdf")
    from glassllava.files import sha256_file

    del manifest
    return sha256_file(pdf)


def _asked_caption(body: dict) -> str:
    """The caption a QA request sent (inside its <paper_data> block)."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    if isinstance(user, list):
        user = next(p["text"] for p in user if p.get("type") == "text")
    return json.loads(user.split("<paper_data>", 1)[1].rsplit("</paper_data>", 1)[0])["caption"]


def _chat_bodies(llm) -> list[str]:
    return [json.dumps(r["body"], sort_keys=True) for r in llm.chat_requests()]


def test_night_1_builds_everything_trains_on_the_pool_and_promotes(night_env, llm):
    state = _night(night_env)
    night = state.result()
    assert night["action"] == "promoted", night
    assert {"corpus", "ingest", "figures", "qa", "dataset", "train", "evaluate"} <= set(night["stages_run"])
    assert len(llm.chat_requests()) > 0, "QA went through the LLM endpoint"
    assert _aliases(night_env["uri"])["champion"] == 1
    assert any((night_env["repo"] / ".dvc-remote").rglob("*")), "the night pushed its data to the DVC remote"
    decision = _artifact("nightly-decision")
    assert "promoted" in decision and "defect_accuracy" in decision
    assert night["headline"]["eval_questions"] == 8 and Path(night["report"]).is_file()
    assert "Worker" in night_env["worker_log"].read_text() or night_env["worker_log"].stat().st_size > 0


def test_night_2_with_nothing_new_asks_nothing_and_trains_nothing(night_env, llm):
    asked, versions = len(llm.chat_requests()), _versions(night_env["uri"])
    night = _night(night_env).result()
    assert night["action"] == "nothing_new" and night["stages_run"] == [] and night["new_papers"] == []
    assert len(llm.chat_requests()) == asked
    assert _versions(night_env["uri"]) == versions
    assert "nothing_new" in _artifact("nightly-decision")


def test_night_3_is_killed_half_way_and_turns_away_a_second_night_meanwhile(night_env, llm):
    repo = night_env["repo"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["promotion"]["margin"] = 1.0  # nothing can win by more than 1.0: this candidate will lose
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    night_env["figures_before"] = _snapshot(repo / "data" / "figures" / "papers")
    night_env["qa_before"] = _snapshot(repo / "data" / "qa" / "panels")
    night_env["asked_before"] = asked = len(llm.chat_requests())
    night_env["new_sha"] = _new_paper(night_env, seed=101)
    llm.script.append("hang")  # the new paper's first QA request never gets its reply: the night is killed there
    code = ("import sys; from flows.nightly import nightly; "
            f"nightly(repo=sys.argv[1], train_deployment={DEPLOYMENT!r}, train_job_variables={night_env['job_variables']!r})")
    killed = subprocess.Popen([sys.executable, "-c", code, str(repo)], cwd=REPO, env=night_env["env"], start_new_session=True,
                              stdout=open(night_env["root"] / "killed-night.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while len(llm.chat_requests()) == asked and time.time() < deadline and killed.poll() is None:
            time.sleep(0.5)
        assert len(llm.chat_requests()) > asked, (night_env["root"] / "killed-night.log").read_text()[-3000:]
        holder = pipeline_lock.holder(repo)
        assert holder and holder["holder"].startswith("nightly flow run")
        # two nights at once: the second is turned away, naming the first
        second = _night(night_env)
        assert second.is_cancelled() and "busy" in second.message and holder["holder"] in second.message
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    assert pipeline_lock.holder(repo) is None, "a killed night leaves no lock behind"
    assert _versions(night_env["uri"]) == [1], "the killed night trained nothing"


def test_night_4_resumes_the_killed_night_only_for_the_new_paper_pays_nothing_twice_and_keeps_the_champion(night_env, llm):
    repo, sha = night_env["repo"], night_env["new_sha"]
    night = _night(night_env).result()
    assert "qa" in night["stages_run"] and "train" in night["stages_run"]
    figures_after, qa_after = _snapshot(repo / "data" / "figures" / "papers"), _snapshot(repo / "data" / "qa" / "panels")
    assert all(figures_after.get(k) == v for k, v in night_env["figures_before"].items()), "no old paper's figures were redone"
    added = [k for k in figures_after if k not in night_env["figures_before"]]
    assert added and all(sha in k for k in added), "only the new paper's figures were made"
    assert all(qa_after.get(k) == v for k, v in night_env["qa_before"].items()), "no old panel's QA was redone"
    new_requests = llm.chat_requests()[night_env["asked_before"]:]
    panels = pq.read_table(repo / "data" / "figures" / "panels.parquet").to_pylist()
    new_panels = [p for p in panels if p["paper_sha"] == sha and p["is_sem"]]
    assert new_requests and len(new_requests) <= len(new_panels) * 3, "one request per new SEM panel (plus re-asks)"
    captions = {f["caption"] for f in pq.read_table(repo / "data" / "figures" / "figures.parquet").to_pylist() if f["paper_sha"] == sha}
    assert {_asked_caption(r["body"]) for r in new_requests} <= captions, "only the new paper's panels were asked about"
    records = pq.read_table(repo / "data" / "qa" / "train.parquet").to_pylist() + pq.read_table(repo / "data" / "qa" / "eval.parquet").to_pylist()
    assert any(r["paper_sha"] == sha for r in records), "the killed night's paper got its QA records"
    counts = Counter(_chat_bodies(llm))
    assert [n for n in counts.values() if n > 1] == [2], "only the request whose reply never came was asked again, once"
    # the candidate loses (margin 1.0): it is not promoted
    assert night["decision"]["action"] == "kept", night["decision"]
    assert _aliases(night_env["uri"])["champion"] == 1 and _aliases(night_env["uri"])["candidate"] == 2
    assert "kept" in _artifact("nightly-decision")
