"""A/B measurements behind the serving defaults, each pair interleaved in one run (A B A B ...)
so that load from elsewhere on a shared machine hits both sides alike.

    python bench/experiments/ab.py                 # all experiments
    python bench/experiments/ab.py raw tokenizer   # some of: raw tokenizer triton int8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tembed_bench import data, servers, stats
from tembed_bench.servers import variant_repo
from tembed_bench.targets import Raw, Triton
from tembed_serving.contract import Layout


class Load:
    def __init__(self, lat: list[float], wall: float, tokens: int) -> None:
        self.tokens_per_s, self.p50_ms = tokens / wall, stats.summary(lat)["p50"]


def drive(embed, reqs, tokens: dict[str, int], concurrency: int, *_) -> Load:
    lat, wall = stats.drive(embed, reqs, concurrency)
    return Load(lat, wall, sum(tokens[i.text] for r in reqs for i in r))


def token_counts(repo: Path, items) -> dict[str, int]:
    raw = Raw(repo)
    return {i.text: raw.tokens([i]) for i in items}


class triton_server:  # noqa: N801
    def __init__(self, repo: Path, log: Path) -> None:
        self.cm = servers.triton(repo, log)

    def __enter__(self) -> Triton:
        return Triton(self.cm.__enter__().grpc_url)

    def __exit__(self, *exc) -> None:
        self.cm.__exit__(*exc)


def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of ``rounds`` alternating runs of each variant (a number per run, e.g. tokens/s)."""
    got: dict[str, list[float]] = {k: [] for k in variants}
    for _ in tqdm(range(rounds), desc="rounds", leave=False):
        for k, f in variants.items():
            got[k].append(f())
    return {k: round(float(np.median(v)), 2) for k, v in got.items()}


def raw_experiments(repo: Path, threads: int, rounds: int) -> dict:
    reqs = data.requests(data.mixed(96, seed=5), 16)
    tokens = token_counts(repo, [i for r in reqs for i in r])
    out = {}
    pairs = {
        "trim_padding (sorted length groups) vs bucket padding": [{"trim_padding": True}, {"trim_padding": False}],
        "allow_spinning off vs on": [{"allow_spinning": False}, {"allow_spinning": True}],
        "graph optimisation all vs extended vs basic": [
            {"graph_optimization": "all"},
            {"graph_optimization": "extended"},
            {"graph_optimization": "basic"},
        ],
    }
    for title, options in pairs.items():
        runners = {json.dumps(o): Raw(repo, threads=threads, **o) for o in options}
        for r in runners.values():
            r.embed(reqs[0])

        def tps(r: Raw) -> float:
            return drive(r.embed, reqs, tokens, 1, 1e9, "").tokens_per_s

        out[title + " (tokens/s)"] = interleave({k: (lambda r=r: tps(r)) for k, r in runners.items()}, rounds)
    return out


def tokenizer_cost() -> dict:
    """Milliseconds per 1,000 mixed texts, tokenizer only (prompt, truncation, bucketed padding)."""
    from tembed.hf_folder import read_profile
    from tembed_serving.textproc import TextEncoder

    texts = [i.text for i in data.mixed(1000, seed=7)]
    out = {}
    for name in ("multilingual-e5-small", "qwen3-embedding-tiny"):
        folder = servers.FIXTURES / name
        enc = TextEncoder(read_profile(folder), folder / "tokenizer.json")
        best = []
        for _ in range(3):
            t = time.perf_counter()
            for i in range(0, len(texts), 16):  # requests of 16, as served
                enc(texts[i : i + 16])
            best.append(time.perf_counter() - t)
        one = time.perf_counter()
        for t in texts[:200]:  # single-text requests: the per-call floor
            enc([t])
        single = (time.perf_counter() - one) / 200 * 1000
        out[name] = {
            "ms_per_1000_texts_batched16": round(min(best) * 1e3, 1),
            "ms_per_1000_single": round(single * 1e3, 1),
        }
    return out


def triton_experiments(repo: Path, work: Path, rounds: int) -> dict:
    """Server variants, each started in turn; load tokens/s at 8 in flight and c=1 query P50."""
    variants = {
        "default (1 inst x 2 thr, delay 0, no spin)": ({}, {}),
        "queue delay 2000us": ({"delay_us": "2000"}, {}),
        "spinning on": ({}, {"allow_spinning": "1"}),
        "2 instances x 1 thread": ({"instances": "2"}, {"intra_op_threads": "1"}),
        "bucket padding (no trim)": ({}, {"trim_padding": "0"}),
    }
    reqs = data.requests(data.mixed(64, seed=9), 16)
    queries = [[q] for q in data.short_queries(60, seed=3)]
    tokens = token_counts(repo, [i for r in reqs + queries for i in r])
    res: dict[str, list] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, (enc, params) in tqdm(variants.items(), desc="triton variants", leave=False):
            vrepo = variant_repo(repo, work / "ab-repo", enc, params)
            with triton_server(vrepo, work / "ab-server.log") as t:
                t.embed(reqs[0])
                load = drive(t.embed, reqs, tokens, 8, 60, "")
                q1 = drive(t.embed, queries, tokens, 1, 30, "")
            res[name].append((load.tokens_per_s, q1.p50_ms))
    return {
        k: {
            "load_tokens_per_s": round(float(np.median([a for a, _ in v]))),
            "q_c1_p50_ms": round(float(np.median([b for _, b in v])), 2),
        }
        for k, v in res.items()
    }


def int8_experiment(repo: Path, work: Path, threads: int, rounds: int) -> dict:
    """Dynamic int8 quantisation: speed against fp32, and cosine to fp32 on data texts."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    q = work / "int8-repo"
    target = Layout(q, servers.MODEL).onnx_file
    if not target.exists():
        shutil.copytree(repo, q, copy_function=os.link, dirs_exist_ok=True)
        target.unlink()
        quantize_dynamic(str(Layout(repo, servers.MODEL).onnx_file), str(target), weight_type=QuantType.QInt8)
    fp32, int8 = Raw(repo, threads=threads), Raw(q, threads=threads)
    items = data.mixed(200, seed=11)
    cos = []
    for i in range(0, len(items), 16):
        chunk = [it for it in items[i : i + 16] if it.input_type == items[i].input_type]
        a, b = (
            np.concatenate(
                s.enc([(x := s.tok([c.text for c in chunk], chunk[0].input_type)).input_ids], [x.attention_mask])
            )
            for s in (fp32, int8)
        )
        cos += (a * b).sum(1).tolist()
    reqs = data.requests(data.mixed(96, seed=5), 16)
    tokens = token_counts(repo, [i for r in reqs for i in r])
    speed = interleave(
        {
            n: (lambda s=s: drive(s.embed, reqs, tokens, 1, 1e9, "").tokens_per_s)
            for n, s in (("fp32", fp32), ("int8", int8))
        },
        rounds,
    )
    return {
        "tokens_per_s": speed,
        "cosine_to_fp32": {"mean": round(float(np.mean(cos)), 4), "min": round(float(np.min(cos)), 4)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", nargs="*", default=["tokenizer", "raw", "triton", "int8"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--work", type=Path, default=servers.ROOT / ".cache" / "bench")
    args = ap.parse_args(argv)
    repo = servers.export_repo(args.work / f"repo-t{args.threads}-ddefault-i32", threads=args.threads)
    out: dict = {}
    if "tokenizer" in args.which:
        out["tokenizer_ms"] = tokenizer_cost()
        print(out["tokenizer_ms"], flush=True)
    if "raw" in args.which:
        out["raw"] = raw_experiments(repo, args.threads, args.rounds)
        print(out["raw"], flush=True)
    if "triton" in args.which:
        out["triton"] = triton_experiments(repo, args.work, max(1, args.rounds - 1))
        print(out["triton"], flush=True)
    if "int8" in args.which:
        out["int8"] = int8_experiment(repo, args.work, args.threads, args.rounds)
        print(out["int8"], flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
