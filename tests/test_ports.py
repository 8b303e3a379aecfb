"""Ports for servers started side by side (tests, benchmarks, several helpers on one machine): drawn outside
the kernel's ephemeral range, where no outgoing connection takes one between the draw and the bind;
tritonserver is ready only once it listens on all its ports itself (it answers ready before it binds the
metrics port, and exits when that one is taken); a start that finds a port taken starts again on new ones.
The first tests start nothing; the last two start a real tritonserver on an empty repository."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tembed_serving.supervisor import (
    EPHEMERAL_RANGE,
    ServerError,
    TritonServer,
    bindable,
    free_port,
    listening_ports,
    port_pool,
)


def test_free_ports_are_outside_the_ephemeral_range_and_never_twice():
    lo, hi = (int(x) for x in EPHEMERAL_RANGE.read_text().split())
    ports = [free_port() for _ in range(60)]
    assert len(set(ports)) == len(ports)
    assert all(p in port_pool() and not lo <= p <= hi and bindable(p) for p in ports), ports
    with socket.socket() as s:  # what a client's connection gets: the range free_port keeps out of
        s.bind(("127.0.0.1", 0))
        assert lo <= s.getsockname()[1] <= hi


def test_listening_ports_are_the_process_own_listeners():
    with socket.socket() as mine, socket.socket() as client:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        client.connect(mine.getsockname())  # connected, not listening: not counted
        child = subprocess.Popen(
            [sys.executable, "-c", "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
             " print(s.getsockname()[1], flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            theirs = int(child.stdout.readline())
            have = listening_ports(os.getpid())
            assert mine.getsockname()[1] in have and client.getsockname()[1] not in have and theirs not in have
            assert theirs in listening_ports(child.pid)
        finally:
            child.stdin.close()
            child.wait(10)
    assert listening_ports(2**22 + 7) is None  # no such process


def test_ports_left_out_by_tritonserver_arguments_are_not_waited_for():
    srv = TritonServer(Path("repo"), 1, 2, 3, extra_args=["--allow-metrics=false", "--allow-grpc", "0"])
    assert srv.ports() == {"http": 2}
    assert TritonServer(Path("repo"), 1, 2, 3).ports() == {"grpc": 1, "http": 2, "metrics": 3}


def in_use() -> tuple[socket.socket, int]:
    """A port another process could hold: a listening socket (the test's own), bound outside free_port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def left_running(repo: Path) -> list[str]:
    return subprocess.run(["pgrep", "-f", str(repo)], capture_output=True, text=True).stdout.split()


@pytest.mark.isolated
@pytest.mark.parametrize("lost", ["metrics_port", "grpc_port"])
def test_a_start_that_lost_a_port_starts_again_on_new_ones(tmp_path, lost):
    """The metrics port is the case seen: Triton said ready, then exited (and was restarted mid-run)."""
    repo = tmp_path / "empty-repository"
    repo.mkdir()
    holder, taken = in_use()
    with holder:
        srv = TritonServer.on_free_ports(repo, log_file=tmp_path / "tritonserver.log")
        setattr(srv, lost, taken)  # as if another process had bound it between the draw and the start
        with srv:
            assert taken not in srv.ports().values()
            assert set(srv.ports().values()) <= listening_ports(srv.proc.pid)
            events = [e for _, e in srv.events]
            assert events[0] == f"ports [{taken}] taken by another process; starting again on new ports", events
            time.sleep(1.5)  # a few supervisor polls: no restart, Triton stays up
            assert srv.proc.poll() is None and [e for _, e in srv.events] == events
    assert left_running(repo) == []


@pytest.mark.isolated
def test_a_server_on_given_ports_says_which_one_is_taken(tmp_path):
    repo = tmp_path / "empty-repository"
    repo.mkdir()
    holder, taken = in_use()
    with holder:
        srv = TritonServer(repo, free_port(), free_port(), taken, log_file=tmp_path / "tritonserver.log")
        with pytest.raises(ServerError, match=rf"port\(s\) \[{taken}\] in use by another process"):
            srv.start(60)
    assert srv.proc is None and left_running(repo) == []
