"""The workspace's pipeline lock: one night (or hand-started stage) at a time, re-entered by the holder's children."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from glassllava import pipeline_lock
from glassllava.pipeline_lock import PipelineBusy


def test_a_second_holder_is_refused_with_who_holds_it(tmp_path):
    with pipeline_lock.pipeline_lock(tmp_path, "nightly flow run brave-owl") as held:
        assert held.owner and pipeline_lock.holder(tmp_path)["holder"] == "nightly flow run brave-owl"
        with pytest.raises(PipelineBusy, match="brave-owl") as refused:
            pipeline_lock.acquire(tmp_path, "stage flows.qa", token="")
        assert refused.value.holder["pid"] > 0
        # a child handed the token goes on, without taking the lock from its parent
        child = pipeline_lock.acquire(tmp_path, "stage flows.qa", token=held.token)
        assert not child.owner
        child.release()
        assert pipeline_lock.holder(tmp_path)["holder"] == "nightly flow run brave-owl"
        with pytest.raises(PipelineBusy):
            pipeline_lock.acquire(tmp_path, "stage flows.qa", token="not-the-token")
    assert pipeline_lock.holder(tmp_path) is None
    again = pipeline_lock.acquire(tmp_path, "stage flows.figures", token="")
    assert again.owner and again.token != held.token
    again.release()


def test_the_token_comes_from_the_environment(tmp_path, monkeypatch):
    with pipeline_lock.pipeline_lock(tmp_path, "night") as held:
        monkeypatch.setenv(*next(iter(held.env().items())))
        assert not pipeline_lock.acquire(tmp_path, "stage").owner


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = ("import sys, time; from glassllava import pipeline_lock; h = pipeline_lock.acquire(sys.argv[1], 'killed night'); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    assert pipeline_lock.holder(tmp_path)["holder"] == "killed night"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while pipeline_lock.holder(tmp_path) is not None and time.time() < deadline:
        time.sleep(0.1)
    assert pipeline_lock.holder(tmp_path) is None
    pipeline_lock.acquire(tmp_path, "next night", token="").release()
