"""Where the one-step model's c=8 tail comes from: short queries with 8 in flight, sent in shares as the
harness sends them, each query's latency next to the server's own timings (``tokenize_ns``, ``encode_ns``;
queries answered with the same ``encode_ns`` shared a batch) and the bench client's garbage collections.

    python bench/experiments/c8_stalls.py [--queries 1600] [--share 200]
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tembed_bench import data, servers
from tembed_client import EmbeddingClient
from tembed_serving.contract import LAYOUT_ONE_STEP


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1600)
    ap.add_argument("--share", type=int, default=200, help="queries per share (a new pool of 8 threads each)")
    args = ap.parse_args()
    base = servers.export_repo(servers.WORK / "repo-t2-ddefault-i32", threads=2)
    repo = servers.export_repo(base.with_name(f"{base.name}-one-step"), threads=2, layout=LAYOUT_ONE_STEP)
    queries = data.short_queries(args.queries)
    pauses: list[float] = []
    started: dict = {}

    def watch(phase: str, info: dict) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
        elif info["generation"] == 2:
            pauses.append(time.perf_counter() - started["t"])

    rows: list[tuple[int, float, float, float]] = []  # position in share, latency, tokenize, encode (s)
    lock = threading.Lock()
    with servers.triton(repo) as srv:
        client = EmbeddingClient(srv.grpc_url, servers.MODEL)
        for q in queries[:8]:  # kernels, arenas, the connection
            client.encode([q.text], input_type=q.input_type)

        def one(item: tuple[int, data.Item]) -> None:
            i, q = item
            t = time.perf_counter()
            r = client.encode([q.text], input_type=q.input_type)
            took = time.perf_counter() - t
            ns = r.server_ns or {}
            with lock:
                rows.append((i, took, ns.get("tokenize_ns", 0) / 1e9, ns.get("encode_ns", 0) / 1e9))

        gc.callbacks.append(watch)
        shares = max(1, args.queries // args.share)
        for s in range(shares):
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(one, enumerate(queries[s::shares])))
        gc.callbacks.remove(watch)
    a = np.array(rows)
    pos, lat, tok, enc = a[:, 0].astype(int), a[:, 1] * 1e3, a[:, 2] * 1e3, a[:, 3] * 1e3
    p99 = np.percentile(lat, 99)
    print(f"{len(lat)} queries in {shares} shares: P50 {np.percentile(lat, 50):.1f} ms, P99 {p99:.1f} ms")
    print("positions in their share of the top 1 %:", sorted(pos[lat >= p99].tolist()))
    first = pos < 8
    print(
        f"first 8 of a share: P99 {np.percentile(lat[first], 99):.1f} ms; the rest {np.percentile(lat[~first], 99):.1f} ms"
    )
    print(
        f"tokenize P50 {np.percentile(tok, 50):.2f} ms; encode of the query's batch P50 {np.percentile(enc, 50):.1f} ms"
    )
    sizes, batches = np.unique(enc, return_counts=True)
    for b in np.unique(batches):
        print(f"  batches of {b}: {np.sum(batches == b)}, encoded in {np.median(sizes[batches == b]):.1f} ms (median)")
    print("client gen-2 collections (ms):", [round(p * 1e3, 1) for p in pauses])


if __name__ == "__main__":
    main()
