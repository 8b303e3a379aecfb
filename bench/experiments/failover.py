"""How long the first request takes when one of two replicas has just been killed.

Two unsupervised tritonservers (a killed one stays down) on copies of one exported repository, and in
turn the gateway (``--triton a --triton b``) and ``EmbeddingClient("a,b")`` over them. Each run: a
few requests to warm up, then ``kill -9`` of the replica the next request goes to (found from Triton's
own statistics: round robin when idle), then at once one request, timed. The killed replica is
started again (same ports) before the next run; gateway and client runs alternate.

    tembed export fixtures/multilingual-e5-small --repo /tmp/e5-repo
    python bench/experiments/failover.py --model-repository /tmp/e5-repo --runs 5

prints one line per request and a JSON summary (median and max per path, milliseconds). Public APIs
only (``tembed_serving.supervisor.TritonServer``, ``tembed_gateway.GatewayThread``,
``tembed_client.EmbeddingClient``), so the same script measures any version of the code on the path."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tembed_client import EmbeddingClient
from tembed_gateway import GatewaySettings, GatewayThread
from tembed_serving.contract import model_names
from tembed_serving.supervisor import TritonServer

TEXT = "北京是中华人民共和国的首都。"


def copy_model(repo: Path, dest: Path, model: str) -> Path:
    for name in model_names(model).values():
        if (repo / name).is_dir():
            shutil.copytree(repo / name, dest / name)
    return dest


def served(srv: TritonServer, model: str) -> int:
    stats = httpx.get(f"{srv.http_url}/v2/models/{model}/stats", timeout=10).json()
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


class Replicas:
    """Two servers on fixed ports; ``revive`` starts a killed one again where it was."""

    def __init__(self, repo: Path, model: str, work: Path) -> None:
        self.servers: list[TritonServer] = []
        for i in range(2):
            copy = copy_model(repo, work / f"repo{i}", model)
            srv = TritonServer.on_free_ports(copy, supervise=False, log_file=work / f"tritonserver{i}.log")
            self.servers.append(srv.start())

    def revive(self) -> None:
        for i, srv in enumerate(self.servers):
            if srv.proc is not None and srv.proc.poll() is None:
                continue
            srv.stop()
            fresh = TritonServer(
                srv.model_repository, grpc_port=srv.grpc_port, http_port=srv.http_port,
                metrics_port=srv.metrics_port, supervise=False, log_file=srv.log_file,
            )  # fmt: skip
            self.servers[i] = fresh.start()

    def close(self) -> None:
        for srv in self.servers:
            srv.stop()


def one_run(replicas: Replicas, model: str, path: str) -> dict[str, object]:
    """Warm up, kill the replica the next request goes to, time one request."""
    urls = [s.grpc_url for s in replicas.servers]
    if path == "gateway":
        gw = GatewayThread(GatewaySettings(triton_urls=tuple(urls), timeout_s=30)).start()
        http = httpx.Client(timeout=60)

        def request() -> None:
            r = http.post(f"{gw.url}/v1/embeddings", json={"model": model, "input": [TEXT]})
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

        def close() -> None:
            http.close()
            gw.stop()

    else:
        client = EmbeddingClient(urls, model, timeout=30)

        def request() -> None:
            client.embed([TEXT])

        close = client.close
    try:
        for _ in range(4):
            request()
        before = [served(s, model) for s in replicas.servers]
        request()
        after = [served(s, model) for s in replicas.servers]
        last = next(i for i in range(2) if after[i] > before[i])
        victim = replicas.servers[1 - last]  # round robin when idle: the next request goes there
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        t = time.perf_counter()
        error = None
        try:
            request()
        except Exception as exc:  # the measurement records it; the run goes on
            error = f"{type(exc).__name__}: {exc}"[:200]
        ms = (time.perf_counter() - t) * 1000
    finally:
        close()
    return {"path": path, "ms": round(ms, 1), "error": error}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-repository", type=Path, required=True, help="an exported repository (tembed export)")
    ap.add_argument("--model", default="multilingual-e5-small")
    ap.add_argument("--runs", type=int, default=5, help="kills per path")
    ap.add_argument("--label", default="", help="a name for this code version in the summary")
    args = ap.parse_args()
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="tembed-failover-") as work:
        replicas = Replicas(args.model_repository, args.model, Path(work))
        try:
            for run in range(args.runs):
                order = ("gateway", "client") if run % 2 == 0 else ("client", "gateway")
                for path in order:
                    replicas.revive()
                    result = one_run(replicas, args.model, path)
                    results.append(result)
                    print(json.dumps({"label": args.label, "run": run, **result}), flush=True)
        finally:
            replicas.close()
    summary: dict[str, object] = {"label": args.label}
    for path in ("gateway", "client"):
        ms = [float(r["ms"]) for r in results if r["path"] == path]  # type: ignore[arg-type]
        failed = sum(r["error"] is not None for r in results if r["path"] == path)
        summary[path] = {
            "n": len(ms),
            "median_ms": round(statistics.median(ms), 1),
            "max_ms": max(ms),
            "failed": failed,
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
