"""What the OpenAI-compatible gateway adds to a request's latency, over direct gRPC to the same Triton.

Both paths are driven from one asyncio loop: direct with :class:`AsyncEmbeddingClient` (the library
the gateway itself uses), through the gateway with ``httpx.AsyncClient`` (what the ``openai``
package uses) on kept-alive connections. The gateway runs in its own process so it does not share a
GIL with the load generator. The difference therefore includes the HTTP client's own cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import numpy as np

from tembed_client import AsyncEmbeddingClient


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux): the gateway's cost, whatever the machine's load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def gateway_process(triton_url: str, port: int, timeout: float = 30.0) -> Iterator[tuple[str, int]]:
    """``python -m tembed_gateway`` on ``port``; yields its base URL and pid once /health answers."""
    cmd = [
        sys.executable,
        "-m",
        "tembed_gateway",
        "--triton",
        triton_url,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with code {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not healthy after {timeout:.0f}s")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


async def latencies(call: Callable[[], Awaitable[object]], n: int, concurrency: int) -> list[float]:
    """``n`` calls from ``concurrency`` workers; each call's seconds."""
    out: list[float] = []
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            await call()
            out.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def stats_ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1e3
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


async def compare(
    triton_url: str,
    gateway_url: str,
    model: str,
    text: str,
    n: int,
    levels: list[int],
    rounds: int = 2,
    gateway_pid: int | None = None,
) -> list[dict]:
    """Per concurrency level: direct and gateway latencies, alternated over ``rounds`` to even out drift
    on a shared machine; with ``gateway_pid``, also the gateway's CPU time per request."""
    body = {"model": model, "input": [text], "encoding_format": "base64"}  # what the openai package sends
    results = []
    async with (
        AsyncEmbeddingClient(triton_url, model) as direct,
        httpx.AsyncClient(base_url=gateway_url, limits=httpx.Limits(max_connections=max(levels))) as http,
    ):

        async def via_grpc() -> None:
            await direct.encode([text])

        async def via_gateway() -> None:
            r = await http.post("/v1/embeddings", json=body)
            r.raise_for_status()

        await latencies(via_grpc, 20, 4)  # warm-up: channel, connections, Triton's instances
        await latencies(via_gateway, 20, 4)
        for c in levels:
            d: list[float] = []
            g: list[float] = []
            cpu = 0.0
            own = {"grpc": 0.0, "gateway": 0.0}  # this process: the gRPC client's vs the HTTP client's cost
            for _ in range(rounds):
                t0 = time.process_time()
                d += await latencies(via_grpc, n // rounds, c)
                t1 = time.process_time()
                before = cpu_seconds(gateway_pid) if gateway_pid else 0.0
                g += await latencies(via_gateway, n // rounds, c)
                cpu += cpu_seconds(gateway_pid) - before if gateway_pid else 0.0
                own["grpc"] += t1 - t0
                own["gateway"] += time.process_time() - t1
            sd, sg = stats_ms(d), stats_ms(g)
            added = {k: sg[k] - sd[k] for k in sd}
            result = {"concurrency": c, "requests": len(d), "grpc_ms": sd, "gateway_ms": sg, "added_ms": added}
            result["gateway_cpu_ms_per_request"] = cpu * 1e3 / len(g) if gateway_pid else None
            result["client_cpu_ms_per_request"] = {k: v * 1e3 / len(d) for k, v in own.items()}
            results.append(result)
    return results


def table(results: list[dict]) -> str:
    head = "| concurrency | requests | gRPC P50 | gRPC P99 | gateway P50 | gateway P99 | added P50 | added P99 | gateway CPU/req |"
    rows = [head, "|" + "---|" * 9]
    for r in results:
        d, g, a = r["grpc_ms"], r["gateway_ms"], r["added_ms"]
        rows.append(
            f"| {r['concurrency']} | {r['requests']} | {d['p50']:.2f} | {d['p99']:.2f} | {g['p50']:.2f} | {g['p99']:.2f}"
            f" | {a['p50']:+.2f} | {a['p99']:+.2f} | {r['gateway_cpu_ms_per_request'] or float('nan'):.2f} |"
        )
    return "\n".join(rows) + "\n(milliseconds)"
