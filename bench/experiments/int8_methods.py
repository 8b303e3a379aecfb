"""int8 methods for the CPU encoder side by side: retrieval on the export gate's slices and raw ONNX
Runtime speed, interleaved in one run (tembed.quantize).

    python bench/experiments/int8_methods.py --repo .cache/q/fp32 --models multilingual-e5-small
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tembed.quantize import METHODS, Method, quantize
from tembed_bench.flops import EncoderShape, encoder_flops, peaks
from tembed_eval.int8_gate import Scorer
from tembed_serving.contract import ATTENTION_MASK, INPUT_IDS, Layout
from tembed_serving.profile import ModelProfile

VARIANTS = (
    *METHODS,
    Method("static-s8", "static", symmetric_activations=True),
    Method("static-all-layers", "static", fp32_last_layers=0),
    Method("static-2-last-fp32", "static", fp32_last_layers=2),
    Method("nncf-last-fp32", "nncf", fp32_last_layers=1),
    # ONNX Runtime's dynamic int8 with per-channel and 7-bit weights (its advice without VNNI), FFN down fp32
    Method("dynamic-pc", "dynamic", fp32_last_layers=0),
    Method("dynamic-pc-7bit", "dynamic", fp32_last_layers=0, reduce_range=True),
    Method("dynamic-pc-7bit-ffn-fp32", "dynamic", reduce_range=True, fp32_last_layers=0, fp32_ffn_out=True),
)


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def speed(paths: dict[str, Path], shapes, rounds: int) -> dict[str, dict[str, float]]:
    sessions = {k: _session(p) for k, p in paths.items()}
    rng = np.random.default_rng(0)
    out = {k: {} for k in paths}
    for b, n in shapes:
        ids = rng.integers(1000, 20000, size=(b, n)).astype(np.int64)
        mask = np.ones_like(ids)
        times = {k: [] for k in paths}
        for s in sessions.values():  # warm-up
            s.run(None, {INPUT_IDS: ids, ATTENTION_MASK: mask})
        for _ in range(rounds):
            for k, s in sessions.items():  # interleaved
                t0 = time.perf_counter()
                s.run(None, {INPUT_IDS: ids, ATTENTION_MASK: mask})
                times[k].append(time.perf_counter() - t0)
        for k in paths:
            out[k][f"b{b}x{n}_ms"] = round(float(np.median(times[k])) * 1e3, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--fixtures", type=Path, default=Path("fixtures"), help="the models' folders (config.json)")
    ap.add_argument("--models", default="multilingual-e5-small,all-minilm-l6-v2")
    ap.add_argument("--methods", default=",".join(m.name for m in VARIANTS))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(".cache/int8_methods.json"))
    args = ap.parse_args()
    wanted = [m for m in VARIANTS if m.name in args.methods.split(",")]
    results = {}
    for model in args.models.split(","):
        layout = Layout(args.repo, model)
        profile = ModelProfile.load(layout.profile_file)
        fp32 = layout.onnx_file
        work = Path(".cache/int8_methods") / model
        work.mkdir(parents=True, exist_ok=True)
        paths = {"fp32": fp32}
        qtime = {}
        for m in wanted:
            t0 = time.perf_counter()
            if (work / f"{m.name}.onnx").exists():
                paths[m.name] = work / f"{m.name}.onnx"
                continue
            paths[m.name] = quantize(fp32, work / f"{m.name}.onnx", m, profile, layout.tokenizer_file)
            qtime[m.name] = round(time.perf_counter() - t0, 1)
        scorer = Scorer(profile, layout.tokenizer_file, None, None)
        metrics, enc_s = {}, {}
        for k, p in paths.items():
            print(f"gate encode {model} {k}", flush=True)
            t0 = time.perf_counter()
            metrics[k] = scorer(p)
            enc_s[k] = round(time.perf_counter() - t0, 1)
            print(json.dumps({k: metrics[k], "s": enc_s[k]}, ensure_ascii=False), flush=True)
        sp = speed(paths, [(1, 16), (16, 128)], args.rounds)
        flops = encoder_flops(EncoderShape.from_config(args.fixtures / model), [128] * 16)
        for k in paths:
            sp[k]["b16x128_gflops"] = round(flops / (sp[k]["b16x128_ms"] / 1e3) / 1e9, 1)
        results[model] = {
            k: {"metrics": metrics[k], "gate_encode_s": enc_s[k], "quantize_s": qtime.get(k), **sp[k]} for k in paths
        }
        print(json.dumps({model: results[model]}, indent=1, ensure_ascii=False), flush=True)
    results["matmul_peak_gflops"] = peaks()
    print(json.dumps(results["matmul_peak_gflops"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
