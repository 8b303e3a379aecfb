"""The one-step model as 1 instance x 2 ONNX Runtime threads against 2 instances x 1 thread: both in one
tritonserver, interleaved in rounds. Per round and layout: short queries with 8 in flight, 20 at c=1, and a
share of the mixed load with 8 in flight.

    python bench/experiments/instances.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np

from tembed_bench import data, servers, stats
from tembed_bench.targets import Triton
from tembed_serving.contract import LAYOUT_ONE_STEP, Layout

VARIANTS = {"1x2": (1, 2), "2x1": (2, 1)}  # name -> (instances, intra-op threads)


def write_variants(base, repo) -> None:
    from tembed.repository import parse, render

    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    for name, (instances, threads) in VARIANTS.items():
        dst = repo / f"e5-{name}"
        src = Layout(base, servers.MODEL).model_dir("encoder")
        shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns("__pycache__"))
        path = dst / "config.pbtxt"
        cfg = parse(path.read_text())
        cfg.name, cfg.instance_group[0].count = dst.name, instances
        cfg.parameters["intra_op_threads"].string_value = str(threads)
        del cfg.parameters["lanes"]
        path.unlink()  # a hard link: do not write through to the base copy
        path.write_text(render(cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    base = servers.export_repo(servers.WORK / "repo-t2-ddefault-i32-one-step", layout=LAYOUT_ONE_STEP)
    repo = servers.WORK / "instances-repo"
    write_variants(base, repo)
    queries, mixed = [[q] for q in data.short_queries(200)], data.requests(data.mixed(768), 16)
    res = {n: {"c8": [], "c1": [], "c8_rate": [], "mixed_rate": []} for n in VARIANTS}
    with servers.triton(repo) as srv:
        targets = {n: Triton(srv.grpc_url, model=f"e5-{n}") for n in VARIANTS}
        for t in targets.values():  # first calls build kernels and arenas
            for r in queries[:4] + mixed[:2]:
                t.embed(r)

        def one(name: str, r: int) -> None:
            t, got, qs = targets[name], res[name], queries[r :: args.rounds]
            lat, wall = stats.drive(t.embed, qs * 3, 8)
            got["c8"] += lat
            got["c8_rate"].append(len(lat) / wall)
            got["c1"] += stats.drive(t.embed, qs[:20], 1)[0]
            reqs = mixed[r :: args.rounds]
            got["mixed_rate"].append(sum(map(len, reqs)) / stats.drive(t.embed, reqs, 8)[1])

        stats.rounds({n: (lambda r, n=n: one(n, r)) for n in VARIANTS}, args.rounds)
    for n, v in res.items():
        c8, c1 = np.array(v["c8"]) * 1e3, np.array(v["c1"]) * 1e3
        print(
            f"{n} (instances x threads): c=8 P50 {np.percentile(c8, 50):.1f} ms, P99 {np.percentile(c8, 99):.1f} ms, "
            f"{np.median(v['c8_rate']):.1f} queries/s; c=1 P50 {np.percentile(c1, 50):.2f} ms; "
            f"mixed {np.median(v['mixed_rate']):.2f} texts/s (rounds {', '.join(f'{x:.2f}' for x in v['mixed_rate'])})"
        )


if __name__ == "__main__":
    main()
