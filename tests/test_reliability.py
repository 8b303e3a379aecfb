"""Faults against real processes: a dead stub, a dead tritonserver, SIGTERM under load, poisoned
direct calls to the encoder, oversized texts, overload, closed admin protocols. Each test bounds its
own time; the numbers they print are the ones docs/RELIABILITY.md reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .conftest import TEXTS, copy_served

pytestmark = [pytest.mark.slow, pytest.mark.isolated]  # own servers and launchers, killed
E5 = "multilingual-e5-small"
LONG = "检索增强生成把向量数据库召回的段落交给大模型。" * 24  # ~500 tokens


@pytest.fixture
def own_server(model_repository, tmp_path):
    """A server of its own (these tests kill its processes), serving e5 only."""
    from tembed_serving.supervisor import TritonServer

    repo = tmp_path / "repo"
    copy_served(model_repository, repo, E5)
    with TritonServer.on_free_ports(repo, log_file=tmp_path / "tritonserver.log") as srv:
        yield srv


def stub_pid(srv, model):
    from tembed_serving.supervisor import python_stubs

    return next(pid for pid, m in python_stubs(srv.proc.pid).items() if m == model)


def test_dead_encoder_stub_is_reloaded(own_server):
    from tembed_client import EmbeddingClient, EmbeddingError

    srv = own_server
    results, unhealthy = [], []
    stop = threading.Event()

    def load():
        # A request inside the stub when it dies may wait for its deadline: 10 s, not the default 60.
        with EmbeddingClient(srv.grpc_url, E5, timeout=10) as client:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    client.embed(TEXTS[:4])
                    results.append((t, True))
                except EmbeddingError as exc:
                    results.append((t, exc.code))
                except Exception as exc:  # recorded, so the test says what happened
                    results.append((t, type(exc).__name__))

    def watch():
        while not stop.is_set():
            if not srv.healthy:
                unhealthy.append(time.monotonic())
            time.sleep(0.02)

    threads = [threading.Thread(target=f) for f in (load, load, watch)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    killed = time.monotonic()
    os.kill(stub_pid(srv, f"{E5}-encoder"), signal.SIGKILL)
    deadline = killed + 30
    while time.monotonic() < deadline and not any(ok is True and t > killed + 0.5 for t, ok in results):
        time.sleep(0.05)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(30)
    after = [(t, ok) for t, ok in results if t >= killed]
    served = [t for t, ok in after if ok is True and t > killed + 0.5]
    assert served, f"never served again: {after[-5:]}, events {srv.events}"
    recovered = min(served) - killed
    failed = [ok for _, ok in after if ok is not True]
    print(f"\nstub killed: served again after {recovered:.2f}s; {len(failed)} of {len(after)} requests failed {failed}")
    assert unhealthy, "readiness never went false while the encoder was being reloaded"
    assert recovered <= 10.0
    # Transient: retried UNAVAILABLE, or the deadline of a request that was inside the dead stub.
    assert set(failed) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    assert srv.healthy and "reloaded" in srv.events[-1][1]


def test_dead_tritonserver_is_restarted_and_leaves_no_stub(own_server):
    from tembed_client import EmbeddingClient
    from tembed_serving.supervisor import python_stubs

    srv = own_server
    old = srv.proc.pid
    assert python_stubs(old)
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        if srv.proc.pid != old and srv.healthy:
            break
        time.sleep(0.1)
    restarted = time.monotonic() - t0
    assert python_stubs(old) == {}  # the old server's stubs are gone, not orphaned under PID 1
    with EmbeddingClient(srv.grpc_url, E5) as client:
        assert client.embed(TEXTS[:2]).shape == (2, 384)
    print(f"\ntritonserver killed: serving again after {restarted:.2f}s")
    assert restarted <= 60


def _encoder_call(server, ids, mask):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = []
    for name, arr in (("input_ids", ids), ("attention_mask", mask)):
        t = grpcclient.InferInput(name, list(arr.shape), "INT64")
        t.set_data_from_numpy(arr)
        inputs.append(t)
    return client.infer(f"{E5}-encoder", inputs)


@pytest.mark.parametrize(
    ("ids", "mask", "message"),
    [
        (np.array([[0, 10**9, 2]]), np.ones((1, 3), np.int64), "token ids must lie in [0, 250037)"),
        (np.array([[0, 5, 2]]), np.zeros((1, 3), np.int64), "row 0 of attention_mask has no token"),
        # A padding id is looked up too: out of range, it would fail the whole merged batch in ORT.
        (np.array([[0, 5, -7]]), np.array([[1, 1, 0]]), "token ids must lie in [0, 250037), got -7..5"),
        (np.array([[0, 5, 2], [0, 5, 2]]), np.array([[1, 1, 1], [0, 1, 1]]), "attention_mask must pad on the right"),
        (np.array([[0, 5, 2]]), np.array([[1, 0, 1]]), "attention_mask must pad on the right"),
        (np.array([[0, 5, 2]]), np.array([[1, 2, 1]]), "attention_mask may hold only 0 and 1"),
        (np.array([[0] * 600]), np.ones((1, 600), np.int64), "sequence length 600 is over the model's 512"),
    ],
)
def test_poisoned_encoder_request_fails_alone(server, clients, ids, mask, message):
    good = []

    def neighbours():
        for _ in range(10):
            good.append(clients[E5].embed(TEXTS))

    t = threading.Thread(target=neighbours)
    t.start()
    for _ in range(5):
        with pytest.raises(InferenceServerException) as exc:
            _encoder_call(server, ids.astype(np.int64), mask.astype(np.int64))
        assert message in exc.value.message() and "INVALID_ARG" in str(exc.value.status())
        assert "/" not in exc.value.message().split(":", 1)[-1]  # no source paths, no traceback
    t.join(60)
    assert len(good) == 10 and all(g.shape == (len(TEXTS), 384) for g in good)


def test_oversized_text_is_refused_in_milliseconds(server, clients):
    from tembed_client import EmbeddingError

    huge = ("长" * 400_000).encode()  # 1.2 MB > the 1 MiB per-text limit
    client = grpcclient.InferenceServerClient(server.grpc_url)
    arr = np.array([huge], dtype=np.object_)
    t = grpcclient.InferInput("text", [1], "BYTES")
    t.set_data_from_numpy(arr)
    t0 = time.perf_counter()
    with pytest.raises(InferenceServerException) as exc:
        client.infer(E5, [t])
    took = time.perf_counter() - t0
    assert "text[0] is 1200000 bytes; the limit is 1048576 bytes per text" in exc.value.message()
    assert took < 1.0, took
    with pytest.raises(EmbeddingError, match="limit is 1048576 bytes per text") as err:
        clients[E5].embed(["ok", huge.decode()])  # the client checks before sending
    assert err.value.code == "INVALID_ARGUMENT"
    print(f"\n1.2 MB text refused by the server in {took * 1000:.1f} ms")


def test_long_text_costs_no_more_than_a_capped_one(clients):
    """Truncation would cut it anyway: a 300k-character text is cut before tokenizing."""
    capped = "词" * 20_000
    t0 = time.perf_counter()
    a = clients[E5].encode([capped + "尾" * 280_000])
    took = time.perf_counter() - t0
    b = clients[E5].encode([capped])
    assert np.abs(a.embeddings - b.embeddings).max() <= 1e-6 and a.token_counts[0] == b.token_counts[0] == 512
    assert took < 2.0, took


def test_admin_protocols_need_the_key(server):
    req = urllib.request.Request(f"{server.http_url}/v2/repository/index", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 403
    req = urllib.request.Request(
        f"{server.http_url}/v2/repository/index", data=b"{}", method="POST", headers=server.admin_headers
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    for flag in ("--grpc-address=127.0.0.1", "--http-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in server.command(server.model_repository)


def test_gateway_overload_answers_429_at_once(server):
    from tembed_gateway import GatewaySettings, GatewayThread

    settings = GatewaySettings(server.grpc_url, max_in_flight=2)
    with GatewayThread(settings) as gw:
        body = {"model": E5, "input": [LONG] * 16}

        def call(_):
            t = time.perf_counter()
            r = httpx.post(f"{gw.url}/v1/embeddings", json=body, timeout=120)
            return r.status_code, r.headers.get("retry-after"), time.perf_counter() - t, r.text[:300]

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(call, range(8)))
    refused = [g for g in got if g[0] == 429]
    assert refused and all(g[1] == "1" for g in refused)
    assert {g[0] for g in got} <= {200, 429} and any(g[0] == 200 for g in got), got
    # "At once": well before one admitted request (seconds of encoder work) is served, on this run's own
    # admitted requests, not a wall-clock threshold that a busy machine misses (0.52 s beside `yes`).
    ok = [g[2] for g in got if g[0] == 200]
    assert max(g[2] for g in refused) < min(ok) / 4, ([g[2] for g in refused], ok)
    print(f"\n8 concurrent requests, cap 2: {len(refused)} got 429 in <= {max(g[2] for g in refused) * 1000:.0f} ms")


def test_gateway_answers_503_while_triton_is_down_and_recovers(own_server):
    from tembed_gateway import GatewaySettings, GatewayThread

    srv = own_server
    with GatewayThread(GatewaySettings(srv.grpc_url, timeout_s=5)) as gw:
        assert httpx.get(f"{gw.url}/health/ready", timeout=30).status_code == 200
        srv.supervise = False
        srv._supervisor.stop()  # hold Triton down while we look
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
        down = httpx.get(f"{gw.url}/health/ready", timeout=30)
        r = httpx.post(f"{gw.url}/v1/embeddings", json={"model": E5, "input": "x"}, timeout=30)
        assert down.status_code == 503 and r.status_code == 503
        assert httpx.get(f"{gw.url}/health/live", timeout=5).status_code == 200
        srv._kill_group()
        srv._spawn()
        srv.wait_ready(120)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            r = httpx.post(f"{gw.url}/v1/embeddings", json={"model": E5, "input": "x"}, timeout=30)
            if r.status_code == 200:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        srv._supervisor = None


def test_sigterm_drains_in_flight_requests_and_leaves_no_process(model_repository, tmp_path):
    from tembed_client import EmbeddingClient
    from tembed_serving.supervisor import free_port

    repo = tmp_path / "repo"
    copy_served(model_repository, repo, E5)
    grpc, http, metrics, gateway = free_port(), free_port(), free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "tembed",
        "serve",
        "--model-repository",
        str(repo),
        "--log-file",
        str(tmp_path / "log"),
    ]
    cmd += ["--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics)]
    cmd += ["--gateway-port", str(gateway), "--grace", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = ""
        deadline = time.monotonic() + 180
        while "serving;" not in out and time.monotonic() < deadline and proc.poll() is None:
            out += proc.stdout.readline()
        assert "serving;" in out, out
        url = f"127.0.0.1:{grpc}"

        def call(i):
            # One request each (4 texts, under max_texts), ~8k tokens in all: seconds of work on 2 cores,
            # well inside the encoder's 10 s queue timeout even on a loaded machine. (Calls split in
            # chunks meet the drain race written up in docs/RELIABILITY.md.)
            with EmbeddingClient(url, E5) as c:
                return c.embed([f"{i} {LONG}"] * 4).shape

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(call, i) for i in range(4)]
            time.sleep(0.5)  # all four are in flight (each takes seconds on 2 cores)
            proc.send_signal(signal.SIGTERM)
            shapes = [f.result(timeout=120) for f in futures]
        assert shapes == [(4, 384)] * 4
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    left = subprocess.run(["pgrep", "-f", str(repo)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes left behind: {left}"


def test_gateway_cancels_the_work_of_a_caller_that_left(server):
    from tembed_gateway import GatewaySettings, GatewayThread

    with GatewayThread(GatewaySettings(server.grpc_url)) as gw:
        body = {"model": E5, "input": [f"{i} {LONG}" for i in range(16)]}  # seconds of work on 2 cores
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{gw.url}/v1/embeddings", json=body, timeout=0.5)
        deadline = time.monotonic() + 5
        while gw.gateway.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.gateway.in_flight == 0 and gw.gateway.abandoned == 1
        assert httpx.post(f"{gw.url}/v1/embeddings", json={"model": E5, "input": "ok"}, timeout=60).status_code == 200


def test_killed_launcher_leaves_no_process_even_under_load(model_repository, tmp_path):
    """kill -9 of ``python -m tembed_serving.supervisor`` while its encoder is busy: tritonserver dies with it
    (PR_SET_PDEATHSIG) and the launcher's watchdog kills the stubs, a busy one of which used to outlive
    it for good (asleep under PID 1, 650 MiB)."""
    from tembed_client import EmbeddingClient, EmbeddingError

    from .test_gateway_replicas import start_replica, wait_serving

    repo = tmp_path / "repo"
    copy_served(model_repository, repo, E5)
    proc, url = start_replica(repo, tmp_path / "tritonserver.log")
    stop = threading.Event()
    served = []

    def load() -> None:
        with EmbeddingClient(url, E5, timeout=5) as client:
            while not stop.is_set():
                try:
                    served.append(client.embed([LONG] * 4).shape)
                except EmbeddingError:
                    time.sleep(0.1)

    try:
        wait_serving(proc)
        threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 60
        while len(served) < 3 and time.monotonic() < deadline:  # the encoder is busy from now on
            time.sleep(0.1)
        assert served, "no request was served"
        killed = time.monotonic()
        proc.kill()
        proc.wait()
        deadline, left = killed + 15, ["?"]
        while left and time.monotonic() < deadline:
            left = subprocess.run(["pgrep", "-f", str(repo)], capture_output=True, text=True).stdout.split()
            time.sleep(0.1)
        assert left == [], f"processes left behind 15 s after kill -9 of the launcher: {left}"
        print(f"\nkill -9 of the launcher under load: no process left after {time.monotonic() - killed:.1f} s")
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        for pid in subprocess.run(["pgrep", "-f", str(repo)], capture_output=True, text=True).stdout.split():
            os.kill(int(pid), signal.SIGKILL)


@pytest.mark.xfail(
    strict=True,  # passes once the gap is closed: then update docs/RELIABILITY.md and drop the mark
    reason="Triton 2.51 computes an encoder request already queued when its ensemble call's deadline passes "
    "(measured: 8 of 8 queued behind one busy batch computed, ~10 s of encoder time, for callers gone)",
)
def test_a_callers_deadline_frees_the_encoder_queue(server):
    """No queue policy by default (tritonserver 2.51's batcher stalls ~0.5 s at times with one): a request
    whose caller's deadline passed while it waited in the encoder's queue should be dropped unrun, so a burst
    of callers that give up costs no compute after they have gone.

    Load-independent by construction: the encoder is held busy by one request of its own (a blocker, as long
    as a request measured alone just before), the callers' deadline is a third of that, so each deadline
    passes while its request waits behind the blocker; what is counted is the cause, the requests the
    encoder computed (Triton's statistics), closed by a last request that runs after anything queued."""
    from tembed_client import EmbeddingClient, EmbeddingError

    stats = grpcclient.InferenceServerClient(server.grpc_url)

    def computed(model: str) -> int:
        s = stats.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(s["inference_stats"]["success"].get("count", 0))

    def embed(texts, timeout=120.0) -> float:
        with EmbeddingClient(server.grpc_url, E5, timeout=timeout) as c:
            t = time.monotonic()
            c.embed(texts)
            return time.monotonic() - t

    embed(["x"])  # after anything an earlier test left in the queue (first in, first out)
    alone = embed([f"alone {LONG}"] * 8)  # one request (max_texts 8): seconds on 2 cores, more under load
    before = computed(f"{E5}-encoder"), computed(f"{E5}-tokenizer")
    blocker = ThreadPoolExecutor(1)
    blocked = blocker.submit(embed, [f"blocker {LONG}"] * 8)
    waited = time.monotonic()
    while computed(f"{E5}-tokenizer") == before[1] and time.monotonic() - waited < 60:
        time.sleep(0.005)  # tokenized: the blocker is in the (idle) encoder, which starts it at once

    def call(i: int) -> str:
        with EmbeddingClient(server.grpc_url, E5, timeout=alone / 3) as c:
            c.model_info()  # outside the measured call: its deadline is for the embedding request
            try:
                c.embed([f"{i} {LONG}"] * 8)
                return "ok"
            except EmbeddingError as exc:
                return exc.code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(call, range(8)))
    still_blocked = not blocked.done()
    blocked.result(timeout=120)
    blocker.shutdown()
    embed(["x"])  # runs after whatever is still queued
    encoder = computed(f"{E5}-encoder") - before[0]
    tokenized = computed(f"{E5}-tokenizer") - before[1] - 2  # less the blocker's and the last request's
    print(
        f"\n8 callers, deadline {alone / 3:.2f} s behind a {alone:.2f} s blocker: {tokenized} reached the "
        f"encoder's queue, {encoder - 2} computed after their callers left"
    )
    assert codes == ["DEADLINE_EXCEEDED"] * 8, codes
    assert still_blocked, "the blocker ended before the callers gave up: nothing was queued behind it"
    assert encoder - 2 == 0, ("requests computed for callers that had gone", encoder - 2, "of", tokenized)
