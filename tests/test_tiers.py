"""The test tiers (README "Tests", tests/conftest.py): each test is marked by what it starts, and a test
that starts a tritonserver or a server process outside its tier fails instead of slowing the fast tier."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import launches_server

FAILS = pytest.fail.Exception  # what the guard raises: an `except Exception` does not swallow it


def test_a_fast_test_that_starts_tritonserver_fails(tmp_path):
    from tembed_serving import supervisor

    with pytest.raises(FAILS, match=r"test_tiers.py::.* is in the fast tier .* starts a tritonserver"):
        supervisor.TritonServer.on_free_ports(tmp_path).start()
    with pytest.raises(FAILS, match="is in the fast tier"):
        supervisor.pytriton_root()  # how docker/entrypoint.sh-style tests find the real binary


def test_a_fast_test_that_launches_a_server_process_fails(tmp_path):
    for argv in (
        [sys.executable, "-m", "tembed_serving.supervisor", "--model-repository", str(tmp_path)],
        [sys.executable, "-m", "tembed_gateway", "--triton", "127.0.0.1:1"],
        [str(tmp_path / "bin" / "tembed"), "serve"],
        [str(tmp_path / "tritonserver"), f"--model-repository={tmp_path}"],
    ):
        with pytest.raises(FAILS, match=r"is in the fast tier .* starts a server process"):
            subprocess.Popen(argv)
    # Other subprocesses are allowed (a CLI that exports, kubectl, bash -n).
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0
    assert launches_server(["sh", "docker/entrypoint.sh"]) is None  # with a stand-in tritonserver on PATH


def test_a_server_tier_test_may_not_start_a_tritonserver_of_its_own(server, tmp_path):
    from tembed_serving.supervisor import TritonServer

    with pytest.raises(FAILS, match=r"is in the server tier but starts a tritonserver"):
        TritonServer.on_free_ports(tmp_path).start()


def test_every_test_has_one_tier_and_the_fast_tier_exports_nothing(request):
    items = request.session.items
    assert items, "collected through pytest"
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        assert not {"server", "isolated"} <= marks, item.nodeid
        # The shared repository is three torch exports (a minute on 2 cores): never in make test-fast.
        if "model_repository" in getattr(item, "fixturenames", ()):
            assert marks & {"server", "isolated", "slow"}, f"{item.nodeid} exports the model repository"
