"""The supervisor's poll on real processes, without a tritonserver: this test process stands in as the
parent, and its children, named like Python-backend stubs, as the stubs. A healthy poll reads /proc only
for the stubs it knows; a dead stub (a zombie until its parent reaps it) is seen and its model reloaded.
The same supervisor against a real tritonserver: tests/test_reliability.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types

import pytest

from tembed_serving import supervisor as sv


class Parent:
    """What the supervisor reads of a TritonServer: its process, its events, its model reloads."""

    def __init__(self, tmp_path) -> None:
        self.proc = types.SimpleNamespace(pid=os.getpid(), poll=lambda: None)
        self.tmp, self.events, self.children = tmp_path, [], []

    def stub(self, model: str) -> subprocess.Popen:
        script = self.tmp / model / "1" / "model.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("import time\ntime.sleep(120)\n")
        p = subprocess.Popen([f"/backends/python/{sv.STUB}", str(script)], executable=sys.executable)
        self.children.append(p)
        return p

    def event(self, text: str) -> None:
        self.events.append(text)

    def load_model(self, model: str) -> None:
        self.stub(model)


@pytest.fixture
def parent(tmp_path):
    p = Parent(tmp_path)
    yield p
    for c in p.children:
        c.kill()
        c.wait()


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_healthy_poll_reads_only_the_known_stubs_and_a_dead_one_is_reloaded(parent, monkeypatch):
    a, b = parent.stub("model-a"), parent.stub("model-b")
    wait_for(lambda: len(sv.python_stubs(os.getpid())) == 2)  # argv is the stub's once exec is done
    sup = sv.Supervisor(parent)
    assert sorted(sup._stubs.values()) == ["model-a", "model-b"] and sup.complete()

    scans = []
    real = sv._scan
    monkeypatch.setattr(sv, "_scan", lambda pid: scans.append(pid) or real(pid))
    for _ in range(3):
        sup.check()
    assert sup.healthy and scans == []  # no full scan of the process table while all is well

    a.kill()
    wait_for(lambda: (sv._stat(a.pid) or "Z")[0] == "Z")  # not reaped: a zombie still in /proc
    assert not sup.complete()
    sup.check()
    assert scans and parent.events == ["stub of model-a died; reloading it", "model-a reloaded"]
    assert sup.healthy and sup.complete()
    assert sorted(sup._stubs.values()) == ["model-a", "model-b"] and a.pid not in sup._stubs
    assert b.pid in sup._stubs


def test_a_reused_pid_is_not_taken_for_the_stub(parent):
    parent.stub("model-a")
    wait_for(lambda: len(sv.python_stubs(os.getpid())) == 1)
    sup = sv.Supervisor(parent)
    ((pid, (model, started)),) = sup._known.items()
    sup._known = {pid: (model, started - 1)}  # as if the stub had died and another process had its pid since
    assert not sup.complete()
