"""The scale-out path: the parsing stages on a Dask cluster (prefect-dask) give the same tables as the default runner."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from glassllava.synth import generate_corpus

from ..conftest import REPO
from .workspace import env_for

pytestmark = [pytest.mark.flow, pytest.mark.slow]
TABLES = ["ingest/papers.parquet", "ingest/paragraphs.parquet", "ingest/citations.parquet", "figures/figures.parquet", "figures/panels.parquet"]


def _run_stages(tmp_path, name: str, corpus, env: dict) -> dict:
    data = tmp_path / name / "data"
    (data / "corpus").mkdir(parents=True)
    for item in corpus.iterdir():
        (data / "corpus" / item.name).symlink_to(item)
    params = tmp_path / "params.yaml"
    for stage in ("ingest", "figures"):
        done = subprocess.run([sys.executable, "-m", f"flows.{stage}", "--params", str(params), "--data", str(data)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {t: pq.read_table(data / t) for t in TABLES}, done.stdout + done.stderr


def test_ingest_and_figures_on_a_two_worker_dask_cluster_match_the_default_runner(prefect_api, tmp_path):
    import yaml

    corpus = tmp_path / "corpus"
    generate_corpus(corpus, papers=3, seed=11)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["figures"].update(dpi=72, workers=2)
    params["ingest"]["workers"] = 2
    params["corpus"]["inbox"] = str(tmp_path / "no-inbox")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = env_for(PREFECT_API_URL=prefect_api)
    default, _ = _run_stages(tmp_path, "default", corpus, {**env, "GLASSLLAVA_TASK_RUNNER": ""})
    dask, log = _run_stages(tmp_path, "dask", corpus, {**env, "GLASSLLAVA_TASK_RUNNER": "dask"})
    assert "LocalCluster" in log, "the figures flow ran on a local Dask cluster (prefect-dask logs the cluster it creates)"
    for name in TABLES:
        a, b = default[name], dask[name]
        assert a.num_rows > 0 and a.num_rows == b.num_rows, name
        drop = [c for c in a.column_names if c in ("first_seen", "pdf_path", "image_path", "kept_at", "source")]
        assert a.drop_columns(drop).equals(b.drop_columns(drop)), f"{name} differs between the default runner and Dask"
