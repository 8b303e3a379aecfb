"""perf_analyzer load test of the served ensemble over gRPC: a concurrency sweep, one CSV.

    python -m tembed_bench.perf                      # export if needed, start tritonserver, sweep
    python -m tembed_bench.perf --url 127.0.0.1:8001 # against a running server

perf_analyzer comes in the tritonclient==2.50.0 wheel (``.venv/bin/perf_analyzer``). It needs
``libb64.so.0d`` (``apt-get install -y libb64-0d``) and ``libcudart.so.12`` even on CPU: this
module puts the one from ``nvidia-cuda-runtime-cu12==12.4.127`` (``pip install --target
.cache/perf-deps``, see bench/perf.sh) on LD_LIBRARY_PATH. Newer perf_analyzer builds need
glibc 2.38 and do not start on Debian 12.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from tembed_client.contract import INPUT_TYPE

from . import data, servers

DEPS = servers.ROOT / ".cache" / "perf-deps"
COLUMNS = ("Concurrency", "Inferences/Second", "p50 latency", "p90 latency", "p95 latency", "p99 latency")


def perf_analyzer() -> Path:
    exe = Path(sys.executable).parent / "perf_analyzer"
    if not exe.exists():
        raise SystemExit(f"{exe} missing: pip install tritonclient[all]==2.50.0")
    return exe


def env() -> dict[str, str]:
    cudart = DEPS / "nvidia" / "cuda_runtime" / "lib"
    if not (cudart / "libcudart.so.12").exists():
        raise SystemExit(f"{cudart}/libcudart.so.12 missing: run bench/perf.sh (or make perf)")
    e = dict(os.environ)
    e["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cudart), e.get("LD_LIBRARY_PATH", "")) if p)
    return e


def input_data(path: Path, n: int = 400, batch: int = 4, seed: int = 0) -> Path:
    """perf_analyzer's JSON: one entry per request, cycled in order.

    Half the requests are single texts (a search box), half small batches of mixed documents
    (an indexer); ``input_type`` goes with each, as clients send it.
    """
    items = data.mixed(n, seed)
    entries = []
    i = 0
    while i < len(items):
        size = 1 if len(entries) % 2 == 0 else batch
        chunk = items[i : i + size]
        i += size
        entries.append(
            {
                "text": {"content": [t.text for t in chunk], "shape": [len(chunk)]},
                INPUT_TYPE: {"content": [chunk[0].input_type], "shape": [1]},
            }
        )
    path.write_text(json.dumps({"data": entries}, ensure_ascii=False), encoding="utf-8")
    return path


def sweep(
    url: str, model: str, data_file: Path, out: Path, levels: list[int], window_ms: int, percentile: int, stability: int
) -> Path:
    """One perf_analyzer run per concurrency level (a list, not a linear range), merged into ``out``."""
    rows: list[dict[str, str]] = []
    work = out.parent / f"{out.stem}.parts"
    work.mkdir(parents=True, exist_ok=True)
    for c in tqdm(levels, desc="perf_analyzer concurrency"):
        part = work / f"c{c}.csv"
        cmd = [str(perf_analyzer()), "-m", model, "-i", "grpc", "-u", url, "--input-data", str(data_file)]
        cmd += ["--concurrency-range", f"{c}:{c}", f"--percentile={percentile}", "-f", str(part)]
        # Requests take 10 ms to seconds on CPU and the texts are mixed on purpose, so windows differ by
        # more than the default 10%: a loose stability bound with few trials keeps each level bounded.
        cmd += ["--measurement-interval", str(window_ms), "--max-trials", "3", "--stability-percentage", str(stability)]
        proc = subprocess.run(cmd, env=env(), capture_output=True, text=True)
        (work / f"c{c}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not part.exists():
            # An unstable level still wrote its numbers; a hard failure has none to keep.
            print(f"perf_analyzer c={c}: exit {proc.returncode}: {proc.stderr.strip()[-400:]}", flush=True)
            if not part.exists():
                continue
        with part.open() as f:
            rows += [{k: r[k] for k in COLUMNS if k in r} for r in csv.DictReader(f)]
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(rows)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="gRPC url of a running server (default: start one on free ports)")
    ap.add_argument("--model", default=servers.MODEL)
    ap.add_argument("--concurrency", default="1,2,4,8,16")
    ap.add_argument("--window-ms", type=int, default=10000, help="perf_analyzer --measurement-interval")
    ap.add_argument("--percentile", type=int, default=99, help="latency percentile used for stability")
    ap.add_argument("--stability", type=int, default=500, help="perf_analyzer --stability-percentage")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--work", type=Path, default=servers.ROOT / ".cache" / "bench")
    ap.add_argument("--out", type=Path, default=servers.ROOT / "docs" / "perf_analyzer.csv")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data_file = input_data(args.work / "perf_input.json")
    levels = [int(c) for c in args.concurrency.split(",")]
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            repo = servers.export_repo(args.work / f"repo-t{args.threads}-ddefault-i32", threads=args.threads)
            url = stack.enter_context(servers.triton(repo, args.work / "perf-server.log")).grpc_url
        out = sweep(url, args.model, data_file, args.out, levels, args.window_ms, args.percentile, args.stability)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
