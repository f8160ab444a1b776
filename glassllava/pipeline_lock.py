"""One pipeline run per workspace: a lock that the nightly flow and every stage take.

DVC already refuses two ``dvc repro`` at once, but a night is more than one ``dvc repro``: it reproduces up to
the dataset, pushes, waits for training on the GPU pool, and promotes. A hand-started ``dvc repro`` in between
would change the data under it. So the nightly flow holds this lock for the whole night, and each stage flow
takes it for its own run; a stage started by the night's own ``dvc repro`` (or by its training deployment)
finds the night's token in ``GLASSLLAVA_PIPELINE_LOCK`` and goes on.

The lock is an ``flock`` on ``<workspace>/.glassllava/pipeline.lock``: the kernel drops it when its process
dies, so a night that was killed never leaves a stale lock behind. The file says who holds it (JSON: holder,
pid, host, since), which is what a refused run reports.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterator

TOKEN_ENV = "GLASSLLAVA_PIPELINE_LOCK"


class PipelineBusy(RuntimeError):
    """Another run holds the workspace's pipeline lock."""

    def __init__(self, path: Path, holder: dict) -> None:
        who = holder.get("holder", "another run")
        super().__init__(
            f"the pipeline in {path.parent.parent} is busy: {who} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('since', '?')}) holds {path}. Wait for it to finish, or stop it; a killed run releases the lock by itself."
        )
        self.holder = holder


def lock_path(workspace: str | os.PathLike) -> Path:
    return Path(workspace).resolve() / ".glassllava" / "pipeline.lock"


def _read(handle: IO[str]) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {}


class Held:
    """An acquired lock (or a re-entered one: ``owner`` is False). ``token`` goes to the children's environment."""

    def __init__(self, path: Path, token: str, handle: IO[str] | None) -> None:
        self.path, self.token, self._handle = path, token, handle

    @property
    def owner(self) -> bool:
        return self._handle is not None

    def env(self) -> dict[str, str]:
        """The environment entry that lets this run's children (stages, the training deployment) in."""
        return {TOKEN_ENV: self.token}

    def release(self) -> None:
        if self._handle is not None:
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.flush()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def acquire(workspace: str | os.PathLike, holder: str, token: str | None = None) -> Held:
    """Take the lock now or raise ``PipelineBusy``; never waits.

    ``token`` (default: ``$GLASSLLAVA_PIPELINE_LOCK``) re-enters a lock whose holder handed that token down.
    """
    path = lock_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for as long as the lock is
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        current = _read(handle)
        handle.close()
        if token and current.get("token") == token:
            return Held(path, token, None)
        raise PipelineBusy(path, current) from None
    new = secrets.token_hex(16)
    record = {"holder": holder, "pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "token": new}
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record))
    handle.flush()
    return Held(path, new, handle)


@contextmanager
def pipeline_lock(workspace: str | os.PathLike, holder: str, token: str | None = None) -> Iterator[Held]:
    held = acquire(workspace, holder, token)
    try:
        yield held
    finally:
        held.release()


def holder(workspace: str | os.PathLike) -> dict | None:
    """Who holds the lock now (None: nobody)."""
    path = lock_path(workspace)
    if not path.exists():
        return None
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(handle)
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
