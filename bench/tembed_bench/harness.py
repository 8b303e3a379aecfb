"""The bench harness: targets x workloads, interleaved in rounds, one JSON record per run.

    python -m tembed_bench run                                  # make bench: every target, every workload
    python -m tembed_bench run --quick --targets raw,triton     # a smoke run of our own targets
    python -m tembed_bench run --name gateway --targets triton,gateway --workloads queries,queries-c16
    python -m tembed_bench run --check-only                     # start each target, compare its vectors

Every target is started first (all at once), checked against our in-process encoder on a few texts of
each kind, then each workload runs in ``--rounds`` rounds: in each round every target sends its share
of the requests, in rotating order, so load from elsewhere on a shared machine hits all alike; ratios
are taken round by round. The CPU seconds of every process under test (/proc) are read around each
share. Writes ``.cache/bench/records/NAME-*.json``; a full run (not ``--quick``) also renders its
region of docs/BENCHMARKS.md (``python -m tembed_bench render``)."""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass

from . import data, flops, procs, record, servers, stats
from .data import Item
from .targets import TARGETS, open_target


@dataclass(frozen=True)
class Workload:
    name: str
    requests: list[list[Item]]
    concurrency: int  # for targets that take concurrent requests; in-process ones take one at a time
    throughput: bool  # a throughput workload (tokens/s) or a latency one (single queries)


# Single queries per latency workload over all rounds: a P99 of 200 was its 2nd-worst sample, and at c=8 one
# stall of the 8 in flight decided which system "won" (docs/BENCHMARKS.md, 2026-12-03 evening); of 800, the 8th.
QUERIES = 800


def workloads(names: list[str], quick: bool, concurrency: int, queries: int = QUERIES) -> dict[str, Workload]:
    n = 8 if quick else 1
    out = {}
    for name in names:
        kind, _, c = name.partition("-c")
        if kind == "queries":
            reqs = [[q] for q in data.short_queries(queries // n)]
            out[name] = Workload(name, reqs, int(c) if c else 1, False)
        elif kind == "mixed":  # 40% short queries, 30% passages, 22% Chinese paragraphs, 8% long documents
            out[name] = Workload(name, data.requests(data.mixed(768 // n), 16), int(c or concurrency), True)
        elif kind == "long":  # documents past the 512-token limit (truncated), 4 a request
            docs = data.pools()["long"][: 96 // n]
            out[name] = Workload(name, [docs[i : i + 4] for i in range(0, len(docs), 4)], int(c or concurrency), True)
        else:
            raise ValueError(f"unknown workload {name!r}: queries[-cN], mixed[-cN], long[-cN]")
    return out


def check_items() -> list[list[Item]]:
    """A few texts of each kind, one request per kind (input types differ)."""
    p = data.pools()
    return [p["short"][:3], p["en_passage"][:2], p["zh_paragraph"][:2], p["long"][:1]]


def run(args: argparse.Namespace) -> dict:
    repo = servers.export_repo(servers.WORK / f"repo-t{args.threads}-ddefault-i32", threads=args.threads)
    loads = workloads(args.workloads.split(","), args.quick, args.concurrency, args.queries)
    reference = open_target("raw", contextlib.ExitStack(), repo, args.threads, {})
    tokens = {i.text: reference.tokens([i]) for w in loads.values() for r in w.requests for i in r}
    probe = check_items()
    expected = [reference.vectors(r) for r in probe]
    shape = flops.EncoderShape.from_config(servers.FIXTURES / servers.MODEL)
    out: dict = {"targets": {}, "workloads": {}, "notes": [], "shape": vars(shape)}
    with contextlib.ExitStack() as stack:
        shared: dict = {}
        live = {}
        for name in args.targets.split(","):
            try:  # one target that fails to start must not cost the others' numbers
                t = live[name] = reference if name == "raw" else open_target(name, stack, repo, args.threads, shared)
                cos = min(float(stats.cosine(t.vectors(r), e).min()) for r, e in zip(probe, expected))
                out["targets"][name] = {"system": t.name, "min_cosine": cos}
                print(f"{t.name}: min cosine to our encoder {cos:.6f}", flush=True)
                if cos < getattr(t, "min_cosine", 0.999):
                    out["notes"].append(f"{t.name}: vectors differ from ours (min cosine {cos:.4f})")
            except Exception as exc:
                live.pop(name, None)
                out["notes"].append(f"{name} failed: {type(exc).__name__}: {str(exc).strip()[-400:]}")
                print(out["notes"][-1], flush=True)
        if args.check_only:
            return out
        # The CPU's limit, in the runtime the encoder runs in, while every target is up and idle.
        out["peak_gflops"] = {"onnxruntime": flops.peaks(args.threads), "threads": args.threads}
        if any(k.startswith("raw-openvino") for k in live):
            out["peak_gflops"]["openvino"] = flops.peaks(args.threads, "openvino")
        print(f"MatMul peak {out['peak_gflops']}", flush=True)
        sampler = procs.Sampler(shared.get("pids", {}), own="client (this process)")
        for w in loads.values():
            # In-process targets take one request at a time: concurrent single queries are not theirs.
            names = [k for k, t in live.items() if t.concurrent or w.concurrency == 1 or w.throughput]
            for k in names:  # first calls build kernels, arenas, connections
                for r in w.requests[:2]:
                    live[k].embed(r)
            res = {k: {"lat": [], "tokens": 0, "texts": 0, "seconds": 0.0, "rates": [], "cpu": {}} for k in names}

            def share(name: str, r: int, w: Workload = w, res: dict = res) -> None:
                t, got = live[name], res[name]
                reqs = w.requests[r :: args.rounds]
                before = sampler.cpu()
                lat, wall = stats.drive(t.embed, reqs, w.concurrency if t.concurrent else 1)
                for k, v in procs.delta(sampler.cpu(), before).items():
                    got["cpu"][k] = got["cpu"].get(k, 0.0) + v
                n_tok = sum(tokens[i.text] for q in reqs for i in q)
                got["lat"] += lat
                got["tokens"] += n_tok
                got["texts"] += sum(len(q) for q in reqs)
                got["seconds"] += wall
                got["rates"].append(n_tok / wall)

            print(f"{w.name}: {len(w.requests)} requests x {len(names)} targets, {args.rounds} rounds", flush=True)
            stats.rounds({k: (lambda r, k=k: share(k, r)) for k in names}, args.rounds)
            ref = next(iter(res))
            work = flops.encoder_flops(shape, (tokens[i.text] for q in w.requests for i in q))
            table = {}
            for k, got in res.items():
                n = len(got["lat"])
                table[k] = {
                    "latency_ms": stats.summary(got.pop("lat")),
                    "concurrency": w.concurrency if live[k].concurrent else 1,
                    "texts_per_s": got["texts"] / got["seconds"],
                    "tokens_per_s": got["tokens"] / got["seconds"],
                    "gflops_per_s": flops.gflops(work, got["seconds"]),
                    "vs_" + ref: stats.ratio(got["rates"], res[ref]["rates"]),
                    "cpu_ms_per_request": {p: s * 1e3 / n for p, s in got.pop("cpu").items()},
                    **got,
                }
            out["workloads"][w.name] = {
                "throughput": w.throughput,
                "requests": len(w.requests),
                "gflop": work / 1e9,
                "results": table,
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="compare", help="the record's name (and its region in the doc)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {','.join(TARGETS)}")
    ap.add_argument("--workloads", default="mixed,queries,queries-c8", help="comma list of queries[-cN], mixed, long")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds per workload")
    ap.add_argument("--queries", type=int, default=QUERIES, help="single queries per queries[-cN] workload, all rounds")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight for servers under load")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="ORT / torch threads, every target")
    ap.add_argument("--quick", action="store_true", help="an eighth of the requests; the doc is left alone")
    ap.add_argument("--check-only", action="store_true", help="start each target and check its vectors")
    args = ap.parse_args(argv)
    args.rounds = min(args.rounds, 2) if args.quick else args.rounds
    out = run(args)
    failed = any("failed" in n or "differ" in n for n in out["notes"])
    if args.check_only:
        print(out)
        return 1 if failed or not out["targets"] else 0
    record.write(args.name, out, quick=args.quick, args=vars(args))
    from . import render

    print(render.section(args.name, record.latest(args.name, quick=True)))
    if not args.quick:
        render.main([args.name])
    return 0
