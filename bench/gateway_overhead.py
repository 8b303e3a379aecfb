"""Latency the OpenAI-compatible gateway adds over direct gRPC (P50/P99, one short input).

    python bench/gateway_overhead.py --model-repository model_repository          # starts Triton + gateway
    python bench/gateway_overhead.py --triton localhost:8001 --gateway http://127.0.0.1:30000

Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
from pathlib import Path

from tembed_bench.gateway import compare, gateway_process, table
from tembed_client import EmbeddingClient
from tembed_serving.supervisor import TritonServer, free_port


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-repository", type=Path, help="start tritonserver on this repository")
    src.add_argument("--triton", help="a running Triton's gRPC address")
    ap.add_argument("--gateway", help="a running gateway's URL (default: start one on a free port)")
    ap.add_argument("--model", help="served ensemble (default: the only/first one)")
    ap.add_argument("--text", default="The quick brown fox jumps over the lazy dog.")
    ap.add_argument("--requests", type=int, default=400, help="per path and concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args(argv)

    with contextlib.ExitStack() as stack:
        triton = args.triton
        if triton is None:
            log = Path(".cache/bench-tritonserver.log")
            log.parent.mkdir(parents=True, exist_ok=True)
            triton = stack.enter_context(TritonServer.on_free_ports(args.model_repository, log_file=log)).grpc_url
        model = args.model
        if model is None:
            with EmbeddingClient(triton) as c:
                model = c.model_info().name
        gateway, pid = args.gateway, None
        if gateway is None:
            gateway, pid = stack.enter_context(gateway_process(triton, free_port()))
        results = asyncio.run(
            compare(triton, gateway, model, args.text, args.requests, args.concurrency, gateway_pid=pid)
        )

    print(f"model {model}, text {args.text!r}, {platform.processor() or platform.machine()}, {args.requests} requests")
    print(table(results))
    print(json.dumps({"bench": "gateway_overhead", "model": model, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
