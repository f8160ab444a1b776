"""The stage flows under Prefect, and the real DVC pipeline in a temporary git repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from glassllava.params import CorpusParams, DataLayout, FiguresParams, IngestParams, LLMParams, QAParams
from glassllava.synth import generate_corpus

from ..conftest import REPO

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


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_dvc_repro_runs_every_stage_then_does_nothing(prefect_api, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("glassllava", "flows", "tasks"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "data" / "inbox", repo / "data" / "inbox")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["corpus"]["generated"]["papers"] = 2
    params["figures"]["dpi"] = 72
    params["model"]["preset"] = "tiny"  # the same recipe and code path as the default, in seconds
    params["train"].update(stage1_epochs=1.0, epochs=1.0, sample_answers=1, max_new_tokens=4)
    params["evaluate"].update(max_questions=8, bootstrap=200, batch_size=8, max_new_tokens=4)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "init")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_API_URL": prefect_api,
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=repo, env=env, check=True)
    first = subprocess.run([*dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True)
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
    second = subprocess.run([*dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert second.returncode == 0
    # qa always runs (whether an LLM is configured lives in the environment) but does no work:
    # its outputs are byte-identical, so the lock file does not change
    assert [line for line in second.stdout.splitlines() if line.startswith("Running stage")] == ["Running stage 'qa':"]
    assert (repo / "dvc.lock").read_text() == lock
