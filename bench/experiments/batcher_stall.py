"""tritonserver 2.51's dynamic batcher with and without a queue policy, straight to the encoder.

8 concurrent clients send short queries' token tensors to the encoder model (nothing of ours runs but its
``execute``), once against the exported repository as it is and once against a copy whose encoder has a
``default_queue_policy`` (10 s timeout, 128 requests). With the policy, the batcher sits idle ~0.5 s now
and then while requests wait (docs/RELIABILITY.md); the table shows it as requests over 300 ms.

    python bench/batcher_stall.py                        # the default model repository (make export)
    python bench/batcher_stall.py --repo PATH --requests 400
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from tembed.repository import parse, render
from tembed_bench import data
from tembed_serving.contract import ATTENTION_MASK, INPUT_IDS, Layout, model_names
from tembed_serving.supervisor import TritonServer

ROOT = Path(__file__).resolve().parents[1]


def with_policy(repo: Path, model: str, dest: Path) -> Path:
    """A copy of ``repo`` (hard links) whose encoder has the queue policy the export used to write."""
    shutil.copytree(repo, dest, copy_function=os.link, dirs_exist_ok=True)
    path = Layout(dest, model).model_dir("encoder") / "config.pbtxt"
    cfg = parse(path.read_text())
    policy = cfg.dynamic_batching.default_queue_policy
    policy.default_timeout_microseconds, policy.allow_timeout_override, policy.max_queue_size = 10_000_000, True, 128
    path.unlink()  # a hard link: do not write through to the original
    path.write_text(render(cfg))
    return dest


def run(repo: Path, model: str, requests: int, log: Path) -> dict:
    names = model_names(model)
    queries = data.short_queries(requests, seed=4)
    with TritonServer.on_free_ports(repo, log_file=log) as srv:
        url = srv.grpc_url.removeprefix("grpc://")
        clients = [grpcclient.InferenceServerClient(url) for _ in range(8)]
        tokens = []
        for q in queries:  # the tokenizer model's own output, so the encoder gets what the ensemble sends
            text = grpcclient.InferInput("text", [1], "BYTES")
            text.set_data_from_numpy(np.array([q.text.encode()], dtype=np.object_))
            out = clients[0].infer(names["tokenizer"], [text])
            tokens.append((out.as_numpy(INPUT_IDS), out.as_numpy(ATTENTION_MASK)))

        def inputs(i: int) -> list:
            got = []
            for name, arr in zip((INPUT_IDS, ATTENTION_MASK), tokens[i]):
                t = grpcclient.InferInput(name, list(arr.shape), "INT64")
                t.set_data_from_numpy(arr.astype(np.int64))
                got.append(t)
            return got

        def worker(k: int) -> list[float]:
            lat = []
            for i in range(k, requests, 8):
                t = time.perf_counter()
                clients[k].infer(names["encoder"], inputs(i))
                lat.append((time.perf_counter() - t) * 1e3)
            return lat

        with ThreadPoolExecutor(8) as pool:
            ms = np.array([x for v in pool.map(worker, range(8)) for x in v])
    return {
        "p50": np.median(ms),
        "p90": np.percentile(ms, 90),
        "p99": np.percentile(ms, 99),
        "max": ms.max(),
        "over_300": int((ms > 300).sum()),
        "n": ms.size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--model", default="multilingual-e5-small")
    ap.add_argument("--requests", type=int, default=400)
    args = ap.parse_args()
    work = ROOT / ".cache" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        variants = {
            "as exported": args.repo,
            "with a queue policy": with_policy(args.repo, args.model, Path(tmp) / "repo"),
        }
        print("| encoder config | P50 ms | P90 ms | P99 ms | max ms | requests over 300 ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, repo in variants.items():
            r = run(repo, args.model, args.requests, work / "tritonserver-stall.log")
            print(
                f"| {label} | {r['p50']:.1f} | {r['p90']:.1f} | {r['p99']:.1f} | {r['max']:.1f}"
                f" | {r['over_300']} of {r['n']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
