"""One gateway over two real tritonservers: requests spread over both, a replica killed under load
loses no request, a restarted one takes traffic again, both down is a fast 503, and /metrics shows it.
The figures it prints are the ones docs/DEPLOY.md reports."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .conftest import TEXTS

pytestmark = pytest.mark.slow
E5 = "multilingual-e5-small"


class Metrics(dict):
    def __call__(self, name: str, **labels: str) -> float:
        return self[name, frozenset(labels.items())]


def metrics(gw) -> Metrics:
    """(name, labels) -> value, from the gateway's /metrics; ``m(name, label=value)`` reads one."""
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    found = Metrics()
    for line in text.splitlines():
        m = re.match(r"^([^{\s]+)(?:\{(.*)\})? (\S+)$", line)
        if m and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            found[m.group(1), labels] = float(m.group(3))
    return found


def up(gw, srv) -> float:
    return metrics(gw)("tembed_gateway_triton_replica_up", replica=srv.grpc_url)


def embed(gw, i: int) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/embeddings", json={"model": E5, "input": [TEXTS[i % len(TEXTS)]]}, timeout=60)


def sent(gw) -> list[int]:
    return [r.requests for r in gw.gateway.registry.replicas]


def test_gateway_spreads_over_replicas_and_survives_a_dead_one(replicas):
    from tembed_gateway import GatewaySettings, GatewayThread

    a, b = replicas
    settings = GatewaySettings(triton_urls=(a.grpc_url, b.grpc_url), timeout_s=10)
    with GatewayThread(settings) as gw:
        # Spread: sequential requests alternate (equal in-flight, least recently chosen first).
        assert all(embed(gw, i).status_code == 200 for i in range(10))
        assert min(sent(gw)) >= 4, sent(gw)
        # Triton's own statistics agree: each server computed some.
        for srv in (a, b):
            stats = httpx.get(f"{srv.http_url}/v2/models/{E5}/stats", timeout=10).json()
            assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= 4
        m = metrics(gw)
        assert m("tembed_gateway_requests_total", route="/v1/embeddings", model=E5, status="200") == 10
        assert m("tembed_gateway_tokens_total", model=E5) > 0
        assert m("tembed_gateway_request_duration_seconds_count", route="/v1/embeddings", model=E5) == 10
        assert up(gw, a) == up(gw, b) == 1.0

        # kill -9 of one replica under load from 4 threads: every request is answered 200.
        statuses: list[int] = []
        killed = threading.Event()

        def load(worker: int) -> None:
            for j in range(10):
                if worker == 0 and j == 3:
                    os.kill(a.proc.pid, signal.SIGKILL)
                    killed.set()
                statuses.append(embed(gw, worker * 10 + j).status_code)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(load, range(4)))
        a.proc.wait()
        assert killed.is_set()
        lost = sum(s != 200 for s in statuses)
        assert lost == 0 and len(statuses) == 40, statuses
        time.sleep(1.5)  # the background readiness check
        assert up(gw, a) == 0.0 and up(gw, b) == 1.0
        print(f"\nreplica killed under 40 requests from 4 threads: {lost} failed; failovers:"
              f" {gw.gateway.registry.failovers:.0f}")  # fmt: skip

        # Restarted: it takes traffic again within seconds of being ready.
        a._kill_group()
        a._spawn()
        a.wait_ready(120)
        ready_at = time.monotonic()
        before = sent(gw)[0]
        while sent(gw)[0] == before and time.monotonic() - ready_at < 10:
            assert embed(gw, 0).status_code == 200
            time.sleep(0.05)
        back_s = time.monotonic() - ready_at
        assert sent(gw)[0] > before, "the restarted replica took no traffic"
        assert up(gw, a) == 1.0
        print(f"restarted replica took traffic {back_s:.2f} s after it was ready")

        # Both down: 503 at once, and readiness 503.
        for srv in (a, b):
            os.kill(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait()
        t = time.monotonic()
        r = embed(gw, 0)
        took = time.monotonic() - t
        assert r.status_code == 503 and took < 1.0, (r.status_code, took, r.text)
        assert httpx.get(f"{gw.url}/health/ready", timeout=10).status_code == 503
        time.sleep(1.5)
        assert up(gw, a) == up(gw, b) == 0.0
        m = metrics(gw)
        assert m("tembed_gateway_requests_total", route="/v1/embeddings", model=E5, status="503") >= 1
        assert m("tembed_gateway_triton_retries_total") > 0
        assert m("tembed_gateway_requests_in_flight") == 0
        print(f"both replicas down: 503 in {took * 1000:.0f} ms")


def test_metrics_need_no_key_and_count_refusals(replicas):
    from tembed_gateway import GatewaySettings, GatewayThread

    a, _ = replicas
    with GatewayThread(GatewaySettings(a.grpc_url, api_keys=frozenset({"k"}))) as gw:
        assert httpx.post(f"{gw.url}/v1/embeddings", json={"model": E5, "input": "x"}).status_code == 401
        r = httpx.get(f"{gw.url}/metrics", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        m = metrics(gw)
        # Unresolved requests are labelled with no model: a caller cannot mint label values.
        assert m("tembed_gateway_requests_total", route="/v1/embeddings", model="", status="401") == 1
        assert m("tembed_gateway_overloaded_total") == 0
        assert m("tembed_gateway_triton_replica_up", replica=a.grpc_url) == 1.0
