"""Prefect tasks that drive the workspace from outside the stages: git, DVC and the registry.

The nightly flow and the training deployment are built from these. Each streams its command's output into
the flow run's log (so the Prefect UI shows what DVC and torchrun print, as it happens) and raises with the
command's last lines when it fails. DVC commands are never retried by Prefect: a failed ``dvc repro`` is
resumed by the next run, which finds every finished item in the stages' caches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

DVC = [sys.executable, "-m", "dvc"]


class CommandFailed(RuntimeError):
    def __init__(self, cmd: list[str], code: int, tail: list[str]) -> None:
        super().__init__(f"{' '.join(cmd)} exited with {code}:\n" + "\n".join(tail))
        self.code, self.tail = code, tail


def sh(cmd: list[str], cwd: str | Path, env: dict[str, str] | None = None, *, quiet: bool = False) -> list[str]:
    """Run ``cmd`` in ``cwd``; its output lines (also streamed into the run's log unless ``quiet``). This interpreter's
    ``bin`` comes first on PATH, so the stages' ``python -m flows.<stage>`` run in the flow's own environment."""
    logger = get_run_logger()
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, "PATH": path, **(env or {})})
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        if not quiet and line.strip():
            logger.info("%s", line)
    if proc.wait() != 0:
        raise CommandFailed(cmd, proc.returncode, lines[-30:])
    return lines


def _git(repo: str | Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def git_head(repo: str | Path) -> str | None:
    out = _git(repo, "rev-parse", "HEAD")
    return out.stdout.strip() if out.returncode == 0 else None


def dvc_remote(repo: str | Path) -> str | None:
    """The default DVC remote's name (None: none configured)."""
    out = subprocess.run([*DVC, "remote", "default"], cwd=repo, capture_output=True, text=True)
    name = out.stdout.strip()
    return name if out.returncode == 0 and name and "No default remote" not in name else None


@task(name="sync", cache_policy=NONE)
def sync(repo: str, git_pull: bool = True, dvc_pull: bool = True) -> dict:
    """Bring the workspace up to date: ``git pull --ff-only`` where the branch tracks a remote, then ``dvc pull``
    of what the lock file names and the remote has (missing entries are fine: the stages make them)."""
    done: dict = {"git": "no upstream", "dvc": "no remote"}
    if git_pull and _git(repo, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}").returncode == 0:
        sh(["git", "pull", "--ff-only"], repo)
        done["git"] = f"pulled to {git_head(repo)}"
    if dvc_pull and dvc_remote(repo) and Path(repo, "dvc.lock").exists():
        try:
            sh([*DVC, "pull", "--allow-missing"], repo)
            done["dvc"] = "pulled"
        except CommandFailed as e:  # a remote that lacks some files: the stages rebuild them
            get_run_logger().warning("dvc pull: %s", e.tail[-1] if e.tail else e)
            done["dvc"] = "partial"
    return done


@task(name="dvc-status", cache_policy=NONE)
def dvc_status(repo: str, targets: list[str] | None = None) -> list[str]:
    """Stages whose inputs changed since ``dvc.lock`` (empty: everything is up to date)."""
    out = subprocess.run([*DVC, "status", "--json", *(targets or [])], cwd=repo, capture_output=True, text=True)
    if out.returncode != 0:
        raise CommandFailed([*DVC, "status"], out.returncode, (out.stdout + out.stderr).splitlines()[-30:])
    text = out.stdout.strip()
    status = json.loads(text[text.index("{"):]) if "{" in text else {}
    return sorted(name.split(":")[-1] for name in status)


@task(name="dvc-repro", cache_policy=NONE, timeout_seconds=24 * 3600)
def dvc_repro(repo: str, targets: list[str] | None = None, env: dict[str, str] | None = None,
              force_stages: list[str] | None = None, pull: bool = False) -> list[str]:
    """``dvc repro`` of ``targets`` (all: the whole DAG), after ``dvc repro --force --single-item`` of
    ``force_stages``; the stages that ran."""
    ran: list[str] = []
    for stage in force_stages or []:
        lines = sh([*DVC, "repro", "--force", "--single-item", stage], repo, env)
        ran += [ln.split("'")[1] for ln in lines if ln.startswith("Running stage '")]
    lines = sh([*DVC, "repro", *(["--pull"] if pull else []), *(targets or [])], repo, env)
    return ran + [ln.split("'")[1] for ln in lines if ln.startswith("Running stage '")]


@task(name="dvc-push", cache_policy=NONE, retries=2, retry_delay_seconds=30)
def dvc_push(repo: str) -> str:
    """``dvc push`` to the default remote (before any git push: the lock file must never name data the remote lacks)."""
    if not (remote := dvc_remote(repo)):
        get_run_logger().warning("no DVC remote configured: nothing pushed (dvc remote add -d ...)")
        return "no remote"
    lines = sh([*DVC, "push"], repo, quiet=True)
    summary = next((ln for ln in reversed(lines) if "pushed" in ln or "up to date" in ln.lower()), lines[-1] if lines else "")
    get_run_logger().info("dvc push to %s: %s", remote, summary)
    return summary


@task(name="commit-lock", cache_policy=NONE)
def commit_lock(repo: str, message: str, push: bool = False) -> str | None:
    """Commit ``dvc.lock`` (and nothing else) when it changed; push where the branch tracks a remote. The new HEAD."""
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        return None
    if _git(repo, "diff", "--quiet", "--", "dvc.lock").returncode != 0 or _git(repo, "ls-files", "--error-unmatch", "dvc.lock").returncode != 0:
        sh(["git", "add", "dvc.lock"], repo)
        sh(["git", "-c", "user.name=glassllava-nightly", "-c", "user.email=nightly@glassllava.invalid", "commit", "-m", message, "--", "dvc.lock"], repo)
        if push and _git(repo, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}").returncode == 0:
            sh(["git", "push"], repo)
    return git_head(repo)
