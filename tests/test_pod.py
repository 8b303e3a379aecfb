"""The pod as Kubernetes runs it, without Kubernetes: docker/entrypoint.sh, unchanged, with the nvidia-pytriton
wheel's tritonserver on PATH (the image has its own there). A stub killed under it is reloaded, and its
probes say so meanwhile (Triton's own readiness does not); a stub that cannot come back fails liveness after
the bound; SIGTERM drains and exits with no process left. Then ``tembed serve``'s drain after the two cases
that used to make it wait out its grace: a healed stub, a single /tokenize (and a direct tokenizer call).
The figures it prints are the ones docs/DEPLOY.md and docs/RELIABILITY.md report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import TEXTS, copy_served

pytestmark = [pytest.mark.slow, pytest.mark.isolated]  # own servers and launchers, killed
ROOT = Path(__file__).resolve().parent.parent
E5 = "multilingual-e5-small"


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def left_behind(repo: Path) -> list[str]:
    return subprocess.run(["pgrep", "-f", str(repo)], capture_output=True, text=True).stdout.split()


def kill_left(repo: Path) -> None:
    for pid in left_behind(repo):
        os.kill(int(pid), signal.SIGKILL)


def stub_of(repo: Path, model: str) -> int:
    """The pid of ``model``'s Python stub (its argv names the model's folder in ``repo``)."""
    out = subprocess.run(["pgrep", "-f", f"{repo}/{model}/"], capture_output=True, text=True).stdout.split()
    assert out, f"no stub of {model}"
    return int(out[0])


class Pod:
    """docker/entrypoint.sh on free ports with pytriton's bin folder on PATH."""

    def __init__(self, repo: Path, log: Path, live_bound_s: float = 120) -> None:
        from tembed_serving.supervisor import free_port, pytriton_root

        self.repo = repo
        self.ports = {k: free_port() for k in ("http", "grpc", "metrics", "health")}
        args = [f"--model-repository={repo}", "--exit-timeout-secs=30", "--log-info=true"]
        for kind in ("http", "grpc", "metrics"):
            args += [f"--{kind}-address=127.0.0.1", f"--{kind}-port={self.ports[kind]}"]
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(pytriton_root() / "bin"), str(Path(sys.executable).parent), env["PATH"]])
        env["TEMBED_HEALTH_PORT"] = str(self.ports["health"])
        env["TEMBED_LIVE_BOUND_S"] = str(live_bound_s)
        env["TEMBED_ADMIN_KEY"] = "pod-admin-key"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["sh", str(ROOT / "docker" / "entrypoint.sh"), *args], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.grpc = f"127.0.0.1:{self.ports['grpc']}"

    def url(self, kind: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[kind]}{path}"

    def ready(self) -> int:
        return status(self.url("health", "/health/ready"))

    def live(self) -> int:
        return status(self.url("health", "/health/live"))

    def triton_ready(self) -> int:
        return status(self.url("http", "/v2/health/ready"))

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.ready() != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the pod did not get ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)


@pytest.fixture
def pod_repo(model_repository, tmp_path):
    repo = copy_served(model_repository, tmp_path / "repo", E5)
    yield repo
    kill_left(repo)


def test_entrypoint_heals_a_dead_stub_and_drains_on_sigterm(pod_repo, tmp_path):
    from tembed_client import EmbeddingClient

    pod = Pod(pod_repo, tmp_path / "pod.log")
    try:
        pod.wait_ready()
        assert pod.live() == 200 and pod.triton_ready() == 200
        # The admin protocols stay closed without the key.
        r = httpx.post(pod.url("http", "/v2/repository/index"), json={}, timeout=10)
        assert r.status_code == 403, r.text
        with EmbeddingClient(pod.grpc, E5, timeout=30) as client:
            expected = client.embed(TEXTS[:2])

            killed = time.monotonic()
            os.kill(stub_of(pod_repo, f"{E5}-encoder"), signal.SIGKILL)
            seen = []  # (ours, Triton's) readiness until ours is 200 again
            while time.monotonic() - killed < 60:
                seen.append((pod.ready(), pod.triton_ready()))
                if seen[-1][0] == 200 and len(seen) > 1:
                    break
                time.sleep(0.05)
            healed = time.monotonic() - killed
            assert seen[-1][0] == 200, f"not ready again after 60 s: {pod.log.read_text()[-3000:]}"
            assert (503, 200) in seen, f"our readiness never said the dead stub (Triton's stays 200): {seen[:5]}"
            assert pod.live() == 200  # healed well within the bound: no restart
            np.testing.assert_allclose(client.embed(TEXTS[:2]), expected, atol=1e-5)
        print(f"\npod: stub killed, /health/ready 503 for {healed:.2f}s, then serving again (Triton's said 200)")
        assert "reloaded" in pod.log.read_text()

        sent = time.monotonic()
        pod.proc.send_signal(signal.SIGTERM)
        assert pod.proc.wait(60) == 0
        took = time.monotonic() - sent
        print(f"pod: SIGTERM after the heal, idle: exited 0 in {took:.1f}s")
        assert took < 20, "an idle pod exits in seconds, not after its 30 s grace"
        deadline = time.monotonic() + 10
        while left_behind(pod_repo) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left_behind(pod_repo) == []
    finally:
        if pod.proc.poll() is None:
            pod.proc.kill()


def processes() -> dict[int, tuple[str, str, int, int]]:
    """pid -> (name, state, parent, process group) of every process, zombies included (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat:
            rest = stat[stat.rindex(")") + 2 :].split()
            found[int(entry.name)] = (stat[stat.index("(") + 1 : stat.rindex(")")], rest[0], int(rest[1]), int(rest[2]))
    return found


def test_entrypoint_reaps_the_stubs_of_a_killed_tritonserver(pod_repo, tmp_path):
    """tritonserver killed by -9: its stubs are orphaned to the supervisor (a subreaper here, PID 1 in a pod),
    which restarts Triton, kills the old group and waits for its processes, so no zombie or orphan is left
    once it has healed, nor after SIGTERM."""
    from tembed_client import EmbeddingClient

    pod = Pod(pod_repo, tmp_path / "pod.log")
    try:
        pod.wait_ready()
        sup = pod.proc.pid  # sh execs the supervisor
        (triton,) = [p for p, (name, *_, ppid, _) in processes().items() if ppid == sup and name == "tritonserver"]
        stubs = [p for p, (*_, group) in processes().items() if group == triton and p != triton]
        assert stubs, "no stubs in tritonserver's group"
        os.kill(triton, signal.SIGKILL)
        deadline = time.monotonic() + 180
        while True:  # healed: another tritonserver, ready, and nothing of the old group left
            procs = processes()
            kids = {p: v for p, v in procs.items() if v[2] == sup}
            old = [p for p, v in procs.items() if v[3] == triton]
            healed = triton not in kids and any(v[0] == "tritonserver" for v in kids.values())
            if healed and not old and pod.ready() == 200:
                break
            assert time.monotonic() < deadline, f"not healed: {kids}, old group {old}\n{pod.log.read_text()[-3000:]}"
            time.sleep(0.2)
        time.sleep(2 * 0.5)  # a poll of the reaper more: what is left now stays
        kids = {p: v for p, v in processes().items() if v[2] == sup}
        assert not [v for v in kids.values() if v[1] in "ZX"], f"zombies under the supervisor: {kids}"
        assert sorted(v[0] for v in kids.values()) == ["sh", "tritonserver"], kids  # Triton and its watchdog
        reaped = pod.log.read_text().count("reaped orphan")
        assert reaped >= len(stubs), f"{reaped} reaped of {len(stubs)} stubs:\n{pod.log.read_text()[-3000:]}"
        print(f"\npod: tritonserver killed -9, its {len(stubs)} stubs orphaned and reaped ({reaped}), Triton restarted")
        with EmbeddingClient(pod.grpc, E5, timeout=60) as client:
            assert client.embed(TEXTS[:1]).shape[0] == 1
        (new,) = [p for p, v in kids.items() if v[0] == "tritonserver"]
        pod.proc.send_signal(signal.SIGTERM)
        assert pod.proc.wait(60) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and [p for p, v in processes().items() if v[3] in (triton, new)]:
            time.sleep(0.1)
        assert [v for v in processes().values() if v[3] in (triton, new) or v[2] == sup] == []
        assert left_behind(pod_repo) == []
    finally:
        if pod.proc.poll() is None:
            pod.proc.kill()


def test_entrypoint_fails_liveness_when_a_stub_cannot_come_back(pod_repo, tmp_path):
    """The encoder's model.py broken on disk, then its stub killed: every reload fails, readiness stays 503,
    and once that has lasted the bound (3 s here) liveness fails too, so Kubernetes would restart the pod."""
    pod = Pod(pod_repo, tmp_path / "pod.log", live_bound_s=3)
    try:
        pod.wait_ready()
        (pod_repo / f"{E5}-encoder" / "1" / "model.py").write_text("raise RuntimeError('cannot load')\n")
        os.kill(stub_of(pod_repo, f"{E5}-encoder"), signal.SIGKILL)
        t0 = time.monotonic()
        while pod.live() == 200 and time.monotonic() - t0 < 60:
            assert pod.ready() != 200 or time.monotonic() - t0 < 1, "ready while the encoder cannot serve"
            time.sleep(0.2)
        failed_after = time.monotonic() - t0
        assert pod.live() == 503 and pod.ready() == 503
        print(f"\npod: encoder cannot be reloaded: /health/live 503 after {failed_after:.1f}s (bound 3 s)")
        assert failed_after >= 3
    finally:
        pod.proc.kill()
        pod.proc.wait()


# --- tembed serve: the drain ends with the work --------------------------------------------------


class Serve:
    def __init__(self, repo: Path, tmp: Path, grace: float = 60) -> None:
        from tembed_serving.supervisor import free_port

        self.grpc, http, metrics, self.gateway = free_port(), free_port(), free_port(), free_port()
        cmd = [sys.executable, "-m", "tembed", "serve", "--model-repository", str(repo), "--log-file", str(tmp / "log")]
        cmd += ["--grpc-port", str(self.grpc), "--http-port", str(http), "--metrics-port", str(metrics)]
        cmd += ["--gateway-port", str(self.gateway), "--grace", str(grace)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.out = ""
        deadline = time.monotonic() + 180
        while "serving;" not in self.out and time.monotonic() < deadline and self.proc.poll() is None:
            self.out += self.proc.stdout.readline()
        assert "serving;" in self.out, self.out

    def sigterm(self) -> float:
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        self.out += out
        assert self.proc.returncode == 0, self.out
        return time.monotonic() - sent


def test_serve_drain_after_a_healed_stub_ends_in_seconds(pod_repo, tmp_path):
    from tembed_client import EmbeddingClient

    srv = Serve(pod_repo, tmp_path)
    try:
        with EmbeddingClient(f"127.0.0.1:{srv.grpc}", E5, timeout=30) as client:
            client.embed(TEXTS[:2])
            os.kill(stub_of(pod_repo, f"{E5}-encoder"), signal.SIGKILL)
            # A request that fails on the dead stub, then the heal, then one that is served.
            deadline, served = time.monotonic() + 60, False
            while not served and time.monotonic() < deadline:
                try:
                    client.embed(TEXTS[:2])
                    served = True
                except Exception:
                    time.sleep(0.2)
            assert served
        took = srv.sigterm()
        print(f"\ntembed serve: SIGTERM after a healed stub, idle: exited in {took:.1f}s (grace 60 s)")
        assert "still in Triton" not in srv.out, srv.out
        assert took < 20, srv.out
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()


def test_serve_drain_after_tokenize_and_a_direct_tokenizer_call_ends_in_seconds(pod_repo, tmp_path):
    import tritonclient.grpc as grpcclient

    srv = Serve(pod_repo, tmp_path)
    try:
        r = httpx.post(
            f"http://127.0.0.1:{srv.gateway}/tokenize", json={"model": E5, "input": "今天天气真好"}, timeout=30
        )
        assert r.status_code == 200, r.text
        # A direct call to the tokenizer model, as a client that skips the ensemble makes.
        with grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc}") as triton:
            config = triton.get_model_config(f"{E5}-tokenizer", as_json=True)["config"]
            name = config["input"][0]["name"]
            text = grpcclient.InferInput(name, [1], "BYTES")
            text.set_data_from_numpy(np.array(["直接调用".encode()], dtype=object))
            triton.infer(f"{E5}-tokenizer", [text])
        took = srv.sigterm()
        print(f"\ntembed serve: SIGTERM after one /tokenize and one direct tokenizer call: exited in {took:.1f}s")
        assert "still in Triton" not in srv.out, srv.out
        assert took < 20, srv.out
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
