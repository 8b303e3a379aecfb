"""Overload: many concurrent requests of long texts, through the gateway and over gRPC.

    python bench/experiments/overload.py                     # 200 requests x 16 long texts each way, e5-small
    python bench/experiments/overload.py --requests 40       # quicker
    python bench/experiments/overload.py --max-in-flight 64  # the gateway's bound (default: GatewaySettings')
    python bench/experiments/overload.py --repo REPO         # an exported repository (default: e5-small's
                                                             # fixture, exported with today's defaults)

What an operator wants to know under overload: how many requests succeed, how fast the rest are
refused (429 / RESOURCE_EXHAUSTED / UNAVAILABLE, not a 60 s timeout), and whether the server goes
on computing for callers that have gone (the "tail": how long requests stay queued or executing in
Triton, from its metrics, after the last caller had its answer). Prints a markdown table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the repository: bench/experiments/overload.py
MODEL = "multilingual-e5-small"
LONG = "检索增强生成把向量数据库召回的段落交给大模型，再由模型生成回答。" * 20  # ~500 tokens


def compute_tail(srv, last_answer: float, limit_s: float = 600.0) -> tuple[float, int]:
    """(seconds after ``last_answer`` until nothing is in Triton any more, requests in it at the last answer):
    Triton's queue gauge plus the stubs' executing gauge (``TritonServer.in_flight``), read until it is 0
    three times 0.2 s apart. (Counting executions instead saw a 20 s batch as 3 s of quiet: 0 s.)"""
    at_last, quiet, done = srv.in_flight(), 0, last_answer
    while quiet < 3 and time.monotonic() - last_answer < limit_s:
        time.sleep(0.2)
        if srv.in_flight():
            quiet, done = 0, time.monotonic()
        else:
            quiet += 1
    return max(0.0, done - last_answer), at_last


def summarize(name: str, outcomes: list[tuple[str, float]], tail: tuple[float, int]) -> dict:
    kinds: dict[str, list[float]] = {}
    for kind, seconds in outcomes:
        kinds.setdefault(kind, []).append(seconds)
    return {
        "path": name,
        "requests": len(outcomes),
        "outcomes": {k: len(v) for k, v in sorted(kinds.items())},
        "p50_s": {k: round(float(np.percentile(v, 50)), 3) for k, v in sorted(kinds.items())},
        "max_s": {k: round(max(v), 3) for k, v in sorted(kinds.items())},
        "compute_tail_s": round(tail[0], 1),
        "in_triton_at_last_answer": tail[1],
    }


def run(args: argparse.Namespace) -> list[dict]:
    from tembed.pipeline import ExportOptions, export_model
    from tembed_client import EmbeddingClient, EmbeddingError
    from tembed_gateway import GatewaySettings, GatewayThread
    from tembed_serving.supervisor import TritonServer

    work = Path(tempfile.mkdtemp(prefix="tembed-overload-"))
    repo = args.repo
    if repo is None:
        repo = work / "repo"
        export_model(ROOT / "fixtures" / MODEL, repo, ExportOptions(validate=False))
    texts = [f"{i} {LONG}" for i in range(16)]
    results = []
    limit = {"max_in_flight": args.max_in_flight} if args.max_in_flight else {}
    try:
        with TritonServer.on_free_ports(repo, log_file=work / "tritonserver.log") as srv:
            settings = GatewaySettings(srv.grpc_url, timeout_s=args.timeout, **limit)
            print(f"gateway max_in_flight {settings.max_in_flight}", file=sys.stderr)
            with GatewayThread(settings) as gw:

                def via_gateway(i: int) -> tuple[str, float]:
                    t = time.monotonic()
                    try:
                        r = httpx.post(
                            f"{gw.url}/v1/embeddings",
                            json={"model": MODEL, "input": texts},
                            timeout=args.timeout + 30,
                        )
                        kind = str(r.status_code)
                    except httpx.HTTPError as exc:
                        kind = type(exc).__name__
                    return kind, time.monotonic() - t

                results.append(burst("gateway (HTTP)", via_gateway, args, srv))

            def via_grpc(i: int) -> tuple[str, float]:
                t = time.monotonic()
                with EmbeddingClient(srv.grpc_url, MODEL, timeout=args.timeout) as client:
                    try:
                        client.embed(texts)
                        kind = "ok"
                    except EmbeddingError as exc:
                        kind = exc.code
                return kind, time.monotonic() - t

            results.append(burst("gRPC client", via_grpc, args, srv))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def burst(name: str, call, args: argparse.Namespace, srv) -> dict:
    load = os.getloadavg()[0]
    print(f"{name}: {args.requests} concurrent requests of 16 texts (~500 tokens each) ...", file=sys.stderr)
    outcomes: list[tuple[str, float]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        res = call(i)
        with lock:
            outcomes.append(res)

    with ThreadPoolExecutor(args.requests) as pool:
        list(pool.map(one, range(args.requests)))
    tail = compute_tail(srv, time.monotonic())
    return {**summarize(name, outcomes, tail), "load_average": [round(load, 1), round(os.getloadavg()[0], 1)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=60.0, help="gateway's per-call and the client's timeout")
    ap.add_argument("--max-in-flight", type=int, help="the gateway's max_in_flight (default: GatewaySettings')")
    ap.add_argument("--repo", type=Path, help="an exported model repository serving e5-small (default: export one)")
    args = ap.parse_args(argv)
    results = run(args)
    print(
        "\n| path | requests | outcome: count | P50 s | max s | in Triton at last answer | busy after it | load average |"
    )
    print("|---|--:|---|---|---|--:|--:|---|")
    for r in results:
        outcome = ", ".join(f"{k}: {n}" for k, n in r["outcomes"].items())
        p50 = ", ".join(f"{k} {v}" for k, v in r["p50_s"].items())
        mx = ", ".join(f"{k} {v}" for k, v in r["max_s"].items())
        load = "→".join(str(x) for x in r["load_average"])
        print(
            f"| {r['path']} | {r['requests']} | {outcome} | {p50} | {mx} | {r['in_triton_at_last_answer']} | {r['compute_tail_s']} s | {load} |"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
