"""A throwaway clone of the project for pipeline tests: the code, dvc.yaml, prefect.yaml, the default DVC remote
and a small params.yaml, committed in a fresh git repository with DVC initialised."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ..conftest import REPO

DVC = [sys.executable, "-m", "dvc"]


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout


def small_params(**sections) -> dict:
    """The embedded default, shrunk to seconds (tiny preset: the same recipe and code path), plus ``sections``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["corpus"]["generated"]["papers"] = 2
    params["figures"]["dpi"] = 72
    params["model"]["preset"] = "tiny"
    params["train"].update(stage1_epochs=1.0, epochs=1.0, sample_answers=1, max_new_tokens=4, eval_conversations=8)
    params["evaluate"].update(max_questions=8, bootstrap=200, batch_size=8, max_new_tokens=4)
    for section, values in sections.items():
        for key, value in values.items():
            node = params[section]
            *path, last = key.split(".")
            for part in path:
                node = node[part]
            node[last] = value
    return params


def make_workspace(root: Path, params: dict) -> Path:
    repo = root / "repo"
    repo.mkdir(parents=True)
    for name in ("glassllava", "flows", "tasks", "scripts"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", "prefect.yaml"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "data" / "inbox", repo / "data" / "inbox")
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    git(repo, "init", "-q")
    subprocess.run([*DVC, "init", "-q"], cwd=repo, check=True, env=env_for())
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the default remote: .dvc-remote/ in the clone
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    return repo


def env_for(**extra: str) -> dict[str, str]:
    """The environment of a subprocess: this interpreter's bin first, no LLM keys, the given extras."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "GLASSLLAVA_PIPELINE_LOCK")}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", **extra})
    return env
