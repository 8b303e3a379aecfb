"""ONNX Runtime's cost of sharing the cores: wall and CPU time per call with a bursty neighbour process busy for
a share of each 2 ms (as the server's gRPC threads, a tokenizer and a co-located client are while the encoder
runs), in interleaved rounds. A work-conserving runtime would lose only the neighbour's share of one core.

    python bench/experiments/ort_neighbour.py --repo .cache/bench/repo-t2-ddefault-i32 [--duty 0,0.1,0.3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

from tembed_bench import servers
from tembed_serving.contract import Layout
from tembed_serving.runners.ort import OrtEncoder, OrtOptions


def neighbour(stop, duty: float) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < 0.002 * duty:
            pass
        time.sleep(0.002 * (1 - duty))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--model", default=servers.MODEL)
    ap.add_argument("--duty", default="0,0.1,0.3", help="the neighbour's busy share of each 2 ms")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    options = OrtOptions(intra_op_threads=args.threads)
    enc = OrtEncoder(Layout(args.repo, args.model).onnx_file, pad_token_id=1, padding_side="right", options=options)
    rng = np.random.default_rng(0)
    res: dict[tuple, list[tuple[float, float]]] = {}
    for b, n, reps in ((16, 128, 3), (1, 16, 60)):
        ids = rng.integers(1000, 20000, size=(b, n)).astype(np.int64)
        mask = np.ones_like(ids)
        enc([ids], [mask])
        for _ in range(args.rounds):
            for duty in (float(d) for d in args.duty.split(",")):
                stop, proc = mp.Event(), None
                if duty:
                    proc = mp.Process(target=neighbour, args=(stop, duty))
                    proc.start()
                    time.sleep(0.05)
                c0, t0 = time.process_time(), time.perf_counter()
                for _ in range(reps):
                    enc([ids], [mask])
                res.setdefault((b, n, duty), []).append(
                    ((time.perf_counter() - t0) / reps * 1e3, (time.process_time() - c0) / reps * 1e3)
                )
                stop.set()
                if proc:
                    proc.join()
    for (b, n, duty), v in res.items():
        wall, cpu = (float(np.median([x[i] for x in v])) for i in (0, 1))
        print(f"b={b} × {n}, neighbour {duty:.0%} of a core: wall {wall:.1f} ms, ONNX Runtime CPU {cpu:.1f} ms")


if __name__ == "__main__":
    main()
