"""tembed_client over two real tritonservers, without the gateway: calls spread over both, a replica
killed under load loses no call, a restarted one takes calls again, both down is a fast, clear error.
The figures it prints are the ones docs/RELIABILITY.md reports."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from .conftest import EMBEDDER, TEXTS

pytestmark = pytest.mark.slow


def served(srv) -> int:
    """Ensemble requests the server computed (Triton's own statistics)."""
    stats = httpx.get(f"{srv.http_url}/v2/models/{EMBEDDER}/stats", timeout=10).json()
    return stats["model_stats"][0]["inference_stats"]["success"]["count"]


def restart(srv) -> None:
    srv._kill_group()
    srv._spawn()
    srv.wait_ready(180)


def test_client_over_two_replicas_fails_over_and_takes_a_restarted_one_back(replicas):
    from tembed_client import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError

    a, b = replicas
    # One vector per text, from one replica alone: what every call must return whichever replica answers.
    with EmbeddingClient(a.grpc_url, EMBEDDER) as single:
        expected = single.embed(TEXTS)
        info = single.model_info()

    # dns:///NAME:PORT: resolved by this machine's resolver, each address one replica.
    port = int(a.grpc_url.rsplit(":", 1)[1])
    addresses = {x[4][0] for x in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)}
    with EmbeddingClient(f"dns:///localhost:{port}", EMBEDDER) as client:
        np.testing.assert_allclose(client.embed(TEXTS), expected, atol=1e-5)
        assert {r.url.rsplit(":", 1)[0].strip("[]") for r in client._triton.set.replicas} == addresses

    from tembed_gateway.registry import ObservedRetry

    retries: list[int] = []
    retry = ObservedRetry(on_retry=lambda: retries.append(1))
    with EmbeddingClient(f"{a.grpc_url},{b.grpc_url}", EMBEDDER, timeout=30, retry=retry) as client:
        # Spread: sequential calls alternate, and each server computed its share.
        before = [served(a), served(b)]
        for i in range(10):
            np.testing.assert_allclose(client.embed([TEXTS[i % len(TEXTS)]])[0], expected[i % len(TEXTS)], atol=1e-5)
        # Triton counts a request once it has released it, which may come after its answer (seen under
        # load: [4, 5] read at once): wait for the ten to be counted, then the split.
        counted = time.monotonic() + 10
        while served(a) + served(b) - sum(before) < 10 and time.monotonic() < counted:
            time.sleep(0.05)
        assert [served(a) - before[0], served(b) - before[1]] == [5, 5]

        # kill -9 of one replica under load from 4 threads: every call succeeds, with the right vector.
        wrong: list[int] = []
        failed: list[str] = []

        def load(worker: int) -> None:
            for j in range(10):
                if worker == 0 and j == 3:
                    os.kill(a.proc.pid, signal.SIGKILL)
                k = (worker * 10 + j) % len(TEXTS)
                try:
                    got = client.embed([TEXTS[k]])[0]
                except EmbeddingError as exc:
                    failed.append(str(exc))
                    continue
                if not np.allclose(got, expected[k], atol=1e-5):
                    wrong.append(k)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(load, range(4)))
        a.proc.wait()
        assert failed == [] and wrong == [], (failed, wrong)
        # Failover first: the calls that met the dead replica went on at once, none paused for a retry.
        assert retries == [] and client._triton.set.failovers >= 1, (retries, client._triton.set)
        pool_state = client._triton.set
        print(f"\nclient: replica killed under 40 calls from 4 threads: {len(failed)} failed;"
              f" failovers: {pool_state.failovers}")  # fmt: skip
        assert not pool_state.replicas[0].up and pool_state.replicas[1].up

        # Restarted: it takes calls again soon after it is ready (probed every second while calls come).
        restart(a)
        ready_at = time.monotonic()
        start = served(a)
        while served(a) == start and time.monotonic() - ready_at < 30:
            client.embed(["ping"])
            time.sleep(0.05)
        back_s = time.monotonic() - ready_at
        assert served(a) > start, "the restarted replica took no calls"
        print(f"client: restarted replica took calls {back_s:.2f} s after it was ready")

    # The asyncio client: the same failover, concurrent calls.
    async def async_load() -> tuple[int, int]:
        async with AsyncEmbeddingClient([a.grpc_url, b.grpc_url], EMBEDDER, timeout=30) as aclient:
            await aclient.embed(["warm"])

            async def one(k: int) -> bool:
                if k == 6:
                    os.kill(b.proc.pid, signal.SIGKILL)
                await asyncio.sleep(0.02 * k)
                got = await aclient.embed([TEXTS[k % len(TEXTS)]])
                return bool(np.allclose(got[0], expected[k % len(TEXTS)], atol=1e-5))

            results = await asyncio.gather(*(one(k) for k in range(24)), return_exceptions=True)
            return sum(r is True for r in results), aclient._triton.set.failovers

    ok, failovers = asyncio.run(async_load())
    b.proc.wait()
    assert ok == 24, ok
    print(f"asyncio client: replica killed under 24 concurrent calls: {24 - ok} failed; failovers: {failovers}")

    # Both down: a clear error, fast (each replica refuses at once; the RetryPolicy's few short pauses).
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait()
    with EmbeddingClient([a.grpc_url, b.grpc_url], info=info, timeout=30) as client:
        t = time.monotonic()
        with pytest.raises(EmbeddingError) as err:
            client.embed(["x"])
        took = time.monotonic() - t
    assert err.value.code == "UNAVAILABLE" and a.grpc_url in err.value.message and b.grpc_url in err.value.message
    assert took < 5.0, took
    print(f"client: both replicas down: {err.value.code} in {took * 1000:.0f} ms: {err.value.message[:160]}")
