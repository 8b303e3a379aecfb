"""Interactive queries while bulk indexing saturates the encoder: one FIFO queue, then priority lanes.

``BULK_WORKERS`` threads send bulk requests (8 passages of ~250 tokens each, ``priority="low"``) to the
ensemble without pause, so the encoder's queue never empties; one thread sends short queries one after
another (``priority="high"``, the default). Each query's latency, and how many encoder batches ran while it
was in flight (Triton's statistics): behind a FIFO queue a query waits for every bulk request queued before
it; with lanes the bulk requests have an encoder of their own and the query waits for none of them.

    python bench/experiments/lanes.py --repo PATH [--queries 40]

The lanes variant is a copy of the repository with its priority lanes (``write_lanes``: a bulk ensemble and
encoder of their own over the same weights; what ``tembed export`` writes by default), the FIFO one a copy
without: every request, query or bulk, in the encoder's one queue.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tembed.repository import write_lanes
from tembed_client import EmbeddingClient
from tembed_client.contract import PRIORITY, PRIORITY_VALUES
from tembed_serving.contract import Layout, lane_name, model_names
from tembed_serving.supervisor import TritonServer

ROOT = Path(__file__).resolve().parents[2]  # the repository root
BULK_WORKERS = 3
PASSAGE = "检索增强生成把向量数据库召回的段落交给大模型，再由大模型写出回答。" * 8  # ~250 tokens
HIGH, LOW = PRIORITY_VALUES


def variant(repo: Path, model: str, dest: Path, lanes: bool) -> Path:
    """A copy of ``repo`` (hard links) with priority lanes (``write_lanes``) or without."""
    shutil.copytree(repo, dest, copy_function=os.link, dirs_exist_ok=True, symlinks=True)
    config = Layout(dest, model).model_dir("ensemble") / "config.pbtxt"
    text = config.read_text()
    config.unlink()  # a hard link: do not write through to the original
    config.write_text(text)
    write_lanes(dest, model, PRIORITY_VALUES[1:] if lanes else ())
    return dest


def executions(client: EmbeddingClient, encoders: set[str]) -> int:
    """Batches the encoders (the model's and its lanes') have run so far."""
    stats = client._triton.get_inference_statistics(as_json=True)  # noqa: SLF001  (one read)
    return sum(int(m.get("execution_count", 0)) for m in stats["model_stats"] if m["name"] in encoders)


def run(repo: Path, model: str, queries: int, log: Path) -> dict:
    encoder = model_names(model)["encoder"]
    encoders = {encoder, *(lane_name(encoder, lane) for lane in PRIORITY_VALUES)}
    with TritonServer.on_free_ports(repo, log_file=log) as srv:
        stop = threading.Event()
        bulk_done = [0]

        def bulk(k: int) -> None:
            with EmbeddingClient(srv.grpc_url, model, timeout=600) as c:
                while not stop.is_set():
                    c.embed([f"{k} {i} {PASSAGE}" for i in range(8)], **{PRIORITY: LOW})
                    bulk_done[0] += 1

        threads = [threading.Thread(target=bulk, args=(k,), daemon=True) for k in range(BULK_WORKERS)]
        with EmbeddingClient(srv.grpc_url, model, timeout=600) as q:
            q.embed(["warm up"])
            for t in threads:
                t.start()
            time.sleep(3.0)  # the queue fills
            ms, batches = [], []
            for i in range(queries):
                before = executions(q, encoders)
                t0 = time.perf_counter()
                q.embed([f"查询 {i}: 向量数据库怎么选？"], **{PRIORITY: HIGH})
                ms.append((time.perf_counter() - t0) * 1e3)
                batches.append(executions(q, encoders) - before - 1)  # encoder batches besides its own
            stop.set()
        for t in threads:
            t.join(600)
    ms_a = np.array(ms)
    return {
        "p50": np.median(ms_a),
        "p99": np.percentile(ms_a, 99),
        "max": ms_a.max(),
        "batches_max": max(batches),
        "batches_p50": float(np.median(batches)),
        "bulk": bulk_done[0],
        "n": len(ms),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--model", default="multilingual-e5-small")
    ap.add_argument("--queries", type=int, default=40)
    args = ap.parse_args()
    work = ROOT / ".cache" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    print(
        "| encoder queue | query P50 ms | P99 ms | max ms | other encoder batches per query (median / max) | bulk requests done |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for label, lanes in (("one FIFO queue", False), ("priority lanes", True)):
            repo = variant(args.repo, args.model, Path(tmp) / label.replace(" ", "-"), lanes)
            r = run(repo, args.model, args.queries, work / "tritonserver-lanes.log")
            print(
                f"| {label} | {r['p50']:.0f} | {r['p99']:.0f} | {r['max']:.0f} | {r['batches_p50']:.0f} / "
                f"{r['batches_max']} | {r['bulk']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
