"""CPU runtimes x precisions for the encoder, through the runners the server uses (tembed_serving.runners:
OrtEncoder, OpenVinoEncoder), interleaved in rounds: raw throughput (b=16 x 128 tokens) and one 16-token
query (c=1), GFLOP/s against each runtime's MatMul peak (tembed_bench.flops), and, with ``--score``, the
int8 gate's retrieval on its slices in the runtime that runs the graph (tembed_eval.int8_gate).

    python bench/experiments/runtimes.py --repo .cache/q/fp32 --model multilingual-e5-small \\
        --int8 .cache/int8_methods/multilingual-e5-small --score ov-int8-nncf

The int8 graphs are int8_methods.py's (``nncf.onnx``, ``dynamic.onnx`` in ``--int8``)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from tembed_bench.flops import EncoderShape, encoder_flops, gflops, peaks
from tembed_serving.contract import Layout
from tembed_serving.profile import ModelProfile
from tembed_serving.runners.openvino import OpenVinoEncoder
from tembed_serving.runners.ort import OrtEncoder, OrtOptions

RUNNERS = {"onnxruntime": OrtEncoder, "openvino": OpenVinoEncoder}


def paths(layout: Layout, int8: Path) -> dict[str, tuple[str, str, Path]]:
    """name -> (runtime, precision, graph)."""
    out = {
        "ort-fp32": ("onnxruntime", "fp32", layout.onnx_file),
        "ov-fp32": ("openvino", "fp32", layout.onnx_file),
        "ort-int8-dynamic": ("onnxruntime", "int8 dynamic", int8 / "dynamic.onnx"),
        "ort-int8-nncf": ("onnxruntime", "int8 nncf", int8 / "nncf.onnx"),
        "ov-int8-nncf": ("openvino", "int8 nncf", int8 / "nncf.onnx"),
    }
    return {k: v for k, v in out.items() if v[2].exists()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--model", default="multilingual-e5-small")
    ap.add_argument("--int8", type=Path, required=True, help="folder of int8_methods.py's graphs for the model")
    ap.add_argument("--fixtures", type=Path, default=Path("fixtures"))
    ap.add_argument("--only", default="", help="comma list of paths (default: every one whose graph exists)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--score", default="", help="comma list of paths to score on the int8 gate's slices")
    ap.add_argument("--out", type=Path, default=Path(".cache/runtimes.json"))
    args = ap.parse_args()
    layout = Layout(args.repo, args.model)
    profile = ModelProfile.load(layout.profile_file)
    wanted = paths(layout, args.int8)
    if args.only:
        wanted = {k: v for k, v in wanted.items() if k in args.only.split(",")}
    opts = OrtOptions(intra_op_threads=args.threads)
    encs, load_s = {}, {}
    for k, (rt, _, path) in wanted.items():
        t0 = time.perf_counter()
        encs[k] = RUNNERS[rt](path, pad_token_id=profile.pad_token_id, padding_side=profile.padding_side, options=opts)
        load_s[k] = round(time.perf_counter() - t0, 1)
    rng = np.random.default_rng(0)
    shapes = {"b16x128": (16, 128), "b1x16": (1, 16)}
    feeds = {}
    for s, (b, n) in shapes.items():
        ids = rng.integers(1000, 20000, size=(b, n)).astype(np.int64)
        feeds[s] = ([ids], [np.ones_like(ids)])
    times = {k: {s: [] for s in shapes} for k in encs}
    for enc in encs.values():  # warm-up: kernels, arenas, OpenVINO's per-shape compilation
        for ids, mask in feeds.values():
            enc(ids, mask)
            enc(ids, mask)
    ref = {s: encs[next(iter(encs))](*f)[0] for s, f in feeds.items()}
    cos = {}
    for k, enc in encs.items():
        v, r = enc(*feeds["b16x128"])[0], ref["b16x128"]
        cos[k] = round(float(((v * r).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(r, axis=1)).min()), 6)
    for i in range(args.rounds):
        order = list(encs)[i % len(encs) :] + list(encs)[: i % len(encs)]  # rotating order
        for k in order:
            for s, (ids, mask) in feeds.items():
                reps = 1 if s == "b16x128" else 5
                for _ in range(reps):
                    t0 = time.perf_counter()
                    encs[k](ids, mask)
                    times[k][s].append(time.perf_counter() - t0)
        print(f"round {i + 1}/{args.rounds} load {os.getloadavg()[0]:.1f}", flush=True)
    shape = EncoderShape.from_config(args.fixtures / args.model)
    work = encoder_flops(shape, [128] * 16)
    peak = {rt: peaks(args.threads, rt) for rt in {v[0] for v in wanted.values()}}
    base = "ort-fp32" if "ort-fp32" in encs else next(iter(encs))
    res = {}
    for k, (rt, prec, path) in wanted.items():
        t = {s: float(np.median(v)) for s, v in times[k].items()}
        # ratio round by round against the base path (b16x128: one call per round each)
        ratios = np.array(times[base]["b16x128"]) / np.array(times[k]["b16x128"])
        res[k] = {
            "runtime": rt,
            "precision": prec,
            "graph": str(path),
            "load_s": load_s[k],
            "min_cosine_to_" + base: cos[k],
            "b16x128_ms": round(t["b16x128"] * 1e3, 2),
            "b16x128_tokens_per_s": round(16 * 128 / t["b16x128"], 1),
            "speedup_vs_" + base: round(float(np.median(ratios)), 3),
            "b1x16_p50_ms": round(t["b1x16"] * 1e3, 2),
            "b1x16_p99_ms": round(float(np.percentile(times[k]["b1x16"], 99)) * 1e3, 2),
            "gflops": round(gflops(work, t["b16x128"]), 1),
            "peak_fraction": round(gflops(work, t["b16x128"]) / peak[rt]["int8" if "int8" in prec else "fp32"], 3),
        }
        print(json.dumps({k: res[k]}), flush=True)
    if args.score:
        from tembed_eval.int8_gate import Scorer

        scored = {}
        for k in ["ort-fp32", *[k for k in args.score.split(",") if k != "ort-fp32"]]:
            rt, _, path = wanted[k]
            scored[k] = Scorer(profile, layout.tokenizer_file, None, None, runtime=rt)(path)
            print(json.dumps({k: scored[k]}, ensure_ascii=False), flush=True)
        for k, m in scored.items():
            deltas = {f"{t} {n}": m[t][n] - v for t, ms in scored["ort-fp32"].items() for n, v in ms.items()}
            worst = min(deltas, key=deltas.get)
            res[k]["gate"] = {"metrics": m, "worst": worst, "worst_delta_points": round(deltas[worst] * 100, 2)}
    out = {
        "model": args.model,
        "threads": args.threads,
        "rounds": args.rounds,
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "peak_gflops": peak,
        "b16x128_gflop": round(work / 1e9, 2),
        "paths": res,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False))
    print(json.dumps({"peak_gflops": peak, "load_avg_1m_end": out["load_avg_1m_end"]}), flush=True)


if __name__ == "__main__":
    main()
