"""The stage flows under Prefect, and the real DVC pipeline in a temporary git repository."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from glassllava.params import CorpusParams, DataLayout, FiguresParams, IngestParams, LLMParams, QAParams
from glassllava.synth import generate_corpus

from ..conftest import REPO
from .workspace import DVC, env_for, git, make_workspace, small_params

pytestmark = pytest.mark.flow


def test_ingest_and_figures_flows_then_incremental_rerun(prefect_api, tmp_path):
    from flows.figures import figures_flow
    from flows.ingest import ingest_flow

    layout = DataLayout(tmp_path / "data")
    generate_corpus(layout.corpus, papers=2, seed=7)
    corpus = CorpusParams(sources=["generated"], inbox=str(tmp_path / "inbox"))
    first = ingest_flow(corpus, IngestParams(), layout)
    assert first["new"] == 2 and first["quarantined"] == 0
    figs = figures_flow(FiguresParams(dpi=72), layout)
    assert figs["papers_processed"] == 2 and figs["figures_with_region"] >= 4 and figs["sem_panels"] >= 1
    table = pq.read_table(layout.figures / "figures.parquet").to_pylist()
    assert all(f["context"] for f in table), "every generated figure is cited in the text"
    # nothing new: no parsing, no rendering
    assert ingest_flow(corpus, IngestParams(), layout)["parsed"] == 0
    assert figures_flow(FiguresParams(dpi=72), layout)["papers_processed"] == 0


def test_qa_flow_offline_and_with_an_llm(prefect_api, tmp_path, monkeypatch):
    from flows.qa import qa_flow

    from ..fake_openai import FakeOpenAI
    from ..test_qa import make_data

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    layout = make_data(tmp_path / "data")
    offline = qa_flow(QAParams(), layout)
    assert offline["generator"].startswith("offline") and offline["records"] == 3 * len(QAParams().slots)
    with FakeOpenAI() as server:
        params = QAParams(generator="llm", slots=["description@none", "defect_detection@high"], llm=LLMParams(base_url=server.base_url, model="fake"))
        first = qa_flow(params, layout)  # one Prefect task per panel
        assert first["records"] == 6 and first["requests"] == 3 and len(server.chat_requests()) == 3
        assert qa_flow(params, layout)["requests"] == 0 and len(server.chat_requests()) == 3


def test_dvc_repro_runs_every_stage_then_nothing_then_only_what_a_param_touches(prefect_api, tmp_path):
    repo = make_workspace(tmp_path, small_params())
    env = env_for(PREFECT_API_URL=prefect_api, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = subprocess.run([*DVC, "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in ("corpus", "ingest", "figures", "qa", "gallery", "dataset", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    head = json.loads((repo / "reports" / "eval.json").read_text())
    assert head["eval_questions"] == 8 and "defect_accuracy" in head and (repo / "reports" / "eval.html").is_file()
    # promotion is not a stage (it changes the registry): the first candidate becomes champion
    promoted = subprocess.run([sys.executable, "-m", "flows.evaluate", "--promote"], cwd=repo, env=env, capture_output=True, text=True)
    assert promoted.returncode == 0, promoted.stdout[-2000:] + promoted.stderr[-2000:]
    assert json.loads((repo / "reports" / "promotion.json").read_text())["action"] == "promoted"
    # the gallery, written after qa, counts the QA records it links
    gallery = (repo / "data" / "gallery" / "index.html").read_text()
    assert "No QA records when this gallery was written" not in gallery and "QA counts are the train and eval records" in gallery
    assert pq.read_metadata(repo / "data" / "figures" / "figures.parquet").num_rows >= 4
    assert pq.read_metadata(repo / "data" / "qa" / "train.parquet").num_rows + pq.read_metadata(repo / "data" / "qa" / "eval.parquet").num_rows > 0
    assert pq.read_metadata(repo / "data" / "dataset" / "train-00000.parquet").num_rows > 0
    assert (repo / "data" / "model" / "config.json").is_file() and (repo / "data" / "train" / "metrics.json").is_file()
    from mlflow import MlflowClient

    assert MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias("glassllava", "candidate").version
    lock = (repo / "dvc.lock").read_text()
    # nothing changed: no stage runs (none is always_changed: the LLM switch is a param, not the environment)
    second = subprocess.run([*DVC, "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert [line for line in second.stdout.splitlines() if line.startswith("Running stage")] == []
    assert (repo / "dvc.lock").read_text() == lock
    # one param: only the stage that reads it
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["examples"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = subprocess.run([*DVC, "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    assert [line for line in third.stdout.splitlines() if line.startswith("Running stage")] == ["Running stage 'evaluate':"]
    # the default remote works out of the box: push here, pull into a fresh clone
    pushed = subprocess.run([*DVC, "push"], cwd=repo, env=env, capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    assert any((repo / ".dvc-remote").rglob("*")), "the default remote .dvc-remote/ holds the pushed data"
    git(repo, "add", "-A")  # dvc.lock, params.yaml and the metrics and plots DVC leaves to git (cache: false)
    git(repo, "commit", "-q", "-m", "pipeline")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, env=env)
    subprocess.run([*DVC, "remote", "modify", "--local", "local", "url", str(repo / ".dvc-remote")], cwd=clone, check=True, env=env)
    pulled = subprocess.run([*DVC, "pull"], cwd=clone, env=env, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stdout[-2000:] + pulled.stderr[-2000:]
    assert (clone / "data" / "model" / "config.json").is_file()
    assert pq.read_table(clone / "data" / "figures" / "figures.parquet").equals(pq.read_table(repo / "data" / "figures" / "figures.parquet"))
    status = subprocess.run([*DVC, "status"], cwd=clone, env=env, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout


def test_a_stage_started_by_hand_waits_for_nobody_but_is_refused_while_a_night_holds_the_workspace(tmp_path):
    from glassllava import pipeline_lock

    repo = tmp_path / "ws"
    (repo / "data").mkdir(parents=True)
    env = env_for()
    with pipeline_lock.pipeline_lock(repo, "nightly flow run test-night") as held:
        refused = subprocess.run([sys.executable, "-m", "flows.gallery", "--data", str(repo / "data")], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 3 and "nightly flow run test-night" in refused.stderr and "busy" in refused.stderr
        # the night's own stages (its dvc repro hands the token down) go on
        entered = subprocess.run([sys.executable, "-c", "import sys; sys.argv=['x', '--data', sys.argv[1]]; "
                                  "from flows._stage import stage_args; stage_args('probe'); print('entered')", str(repo / "data")],
                                 cwd=REPO, env={**env, **held.env()}, capture_output=True, text=True, timeout=120)
        assert entered.returncode == 0 and "entered" in entered.stdout, entered.stderr[-2000:]
    assert pipeline_lock.holder(repo) is None
