"""`make ui`: a Prefect server and an MLflow server on localhost, wired into the flows, stopped by `make ui-stop`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=3)
        return True
    except OSError:
        return False


def stale_pid_file(prefect_home: Path) -> None:
    """A server.pid naming a process that has exited, as a killed server or a reboot leaves it."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    prefect_home.mkdir(parents=True, exist_ok=True)
    (prefect_home / "server.pid").write_text(done.stdout.strip())


def test_with_prefect_server_starts_a_server_past_a_stale_pid_file_and_runs_the_command(tmp_path):
    port = _free_port()
    home = tmp_path / "prefect-home"
    stale_pid_file(home)
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PREFECT_HOME=str(home), GLASSLLAVA_PREFECT_PORT=str(port))
    try:
        done = subprocess.run([str(REPO / "scripts" / "with-prefect-server"), sys.executable, "-c", "import os; print(os.environ['PREFECT_API_URL'])"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert f"http://127.0.0.1:{port}/api" in done.stdout.splitlines() and "fall back" not in done.stderr
        assert _answers(f"http://127.0.0.1:{port}/api/health")
    finally:
        subprocess.run(["prefect", "server", "stop"], env=env, capture_output=True, text=True, timeout=120)


def test_ui_starts_both_servers_wires_the_flows_and_stops(tmp_path):
    ws = tmp_path / "ws"
    (ws / "scripts").mkdir(parents=True)
    for script in ("ui", "prefect-pid.sh"):
        shutil.copy(REPO / "scripts" / script, ws / "scripts" / script)
    for name in ("flows", "glassllava", "tasks"):
        (ws / name).symlink_to(REPO / name)
    prefect_port, mlflow_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PREFECT_HOME=str(tmp_path / "prefect-home"),
               GLASSLLAVA_PREFECT_PORT=str(prefect_port), GLASSLLAVA_MLFLOW_PORT=str(mlflow_port))
    stale_pid_file(tmp_path / "prefect-home")  # a server that died: its PID file must not stop a new one
    try:
        started = subprocess.run(["scripts/ui", "start"], cwd=ws, env=env, capture_output=True, text=True, timeout=400)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        assert f"http://127.0.0.1:{prefect_port}" in started.stdout and f"http://127.0.0.1:{mlflow_port}" in started.stdout
        assert _answers(f"http://127.0.0.1:{prefect_port}/api/health") and _answers(f"http://127.0.0.1:{mlflow_port}/health")
        # a flow process started in the workspace reports to this Prefect server and links to this MLflow UI
        probe = subprocess.run([sys.executable, "-c", "import os, flows._stage; print(os.environ['PREFECT_API_URL'], os.environ['GLASSLLAVA_MLFLOW_UI'])"],
                               cwd=ws, env=env, capture_output=True, text=True, timeout=120)
        assert probe.stdout.split() == [f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"], probe.stderr[-2000:]
        # a run the flows log to the workspace's store shows up in the MLflow server
        logged = subprocess.run([sys.executable, "-c", "import mlflow; mlflow.set_tracking_uri('sqlite:///mlflow.db'); "
                                 "mlflow.set_experiment('glassllava'); r = mlflow.start_run(run_name='probe'); mlflow.log_metric('m', 1.0); "
                                 "mlflow.end_run(); print(r.info.run_id)"], cwd=ws, env=env, capture_output=True, text=True, timeout=120)
        run_id = logged.stdout.strip().splitlines()[-1]
        request = urllib.request.Request(f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/runs/get?run_id={run_id}")
        assert json.load(urllib.request.urlopen(request, timeout=10))["run"]["data"]["metrics"][0]["value"] == 1.0
        assert json.loads((ws / ".glassllava" / "services.json").read_text())["mlflow_ui"] == f"http://127.0.0.1:{mlflow_port}"
    finally:
        stopped = subprocess.run(["scripts/ui", "stop"], cwd=ws, env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not (ws / ".glassllava" / "services.json").exists()
    import time

    deadline = time.time() + 30
    while (_answers(f"http://127.0.0.1:{prefect_port}/api/health") or _answers(f"http://127.0.0.1:{mlflow_port}/health")) and time.time() < deadline:
        time.sleep(1)
    assert not _answers(f"http://127.0.0.1:{prefect_port}/api/health") and not _answers(f"http://127.0.0.1:{mlflow_port}/health")
