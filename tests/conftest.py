from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def shared_dir() -> Path:
    """../shared beside the repo; tests that need it skip with a clear message when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"reference data not found at {SHARED} (the ../shared folder beside the repository)")
    return SHARED


# --- MLflow: one migrated sqlite store per session, copied per test (migrating a fresh db costs seconds) ---
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory) -> Path:
    """An empty, fully migrated MLflow sqlite database, made once per test session."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    store = SqlAlchemyStore(f"sqlite:///{db}", (folder / "mlruns").as_uri())  # creates and migrates every table
    store.engine.dispose()
    return db


@pytest.fixture
def mlflow_uri(mlflow_template_db, tmp_path, monkeypatch) -> str:
    """``MLFLOW_TRACKING_URI`` set to a private copy of the template db under ``tmp_path/mlflow``."""
    import shutil

    import mlflow

    folder = tmp_path / "mlflow"
    folder.mkdir()
    shutil.copyfile(mlflow_template_db, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    yield uri
    while mlflow.active_run() is not None:  # a failed test must not leave its run active for the next one
        mlflow.end_run("KILLED")
    mlflow.set_tracking_uri(None)  # mlflow keeps a global URI (and exports it to the environment): forget it
