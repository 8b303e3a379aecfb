"""Measure the PyTorch GPU runner on Qwen3-Embedding-0.6B / -4B shapes (random weights, bf16).

    python bench/gpu_bench.py                       # H100/H200: both models, about 4-6 minutes
    python bench/gpu_bench.py --tiny --device cpu   # smoke run in seconds, no GPU

Prints a markdown table, then one JSON line (the last line) with the same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tembed_bench without installing bench/

from tembed_bench.gpu import (  # noqa: E402
    SHAPES,
    build_model,
    markdown,
    matmul_peak_tflops,
    non_embedding_params,
    results_json,
    run_workload,
    workloads,
)
from tembed_serving.runners.torch import DTYPES, TorchEncoder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=tuple(DTYPES), help="default: bfloat16 on GPU, float32 on CPU")
    ap.add_argument(
        "--models", nargs="+", choices=tuple(SHAPES), default=["qwen3-embedding-0.6b", "qwen3-embedding-4b"]
    )
    ap.add_argument("--tiny", action="store_true", help="tiny model and short workloads (CPU smoke test)")
    ap.add_argument("--seconds", type=float, default=15.0, help="timed seconds per workload (after warm-up)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; use --device cpu (with --tiny)")
    cuda = args.device.startswith("cuda")
    dtype = DTYPES[args.dtype or ("bfloat16" if cuda else "float32")]
    models = ["tiny"] if args.tiny else args.models
    seconds = min(args.seconds, 0.5) if args.tiny else args.seconds
    t_start = time.perf_counter()

    # Same run, same clocks: MFU is against what this GPU's matmuls reach now, not a datasheet.
    peak = matmul_peak_tflops(args.device, dtype, n=256 if args.tiny else 8192, seconds=0.3 if args.tiny else 3.0)
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    results = []
    for name in models:
        shape = SHAPES[name]
        model = build_model(shape, dtype, args.device)
        params = non_embedding_params(model)
        runner = TorchEncoder(model, pad_token_id=0, padding_side="left", device=args.device)
        for work in workloads(args.tiny):
            results.append(run_workload(runner, name, shape, params, work, seconds=seconds, peak=peak))
            print(f"  {name} / {work.name}: done", file=sys.stderr, flush=True)
        del runner, model
        if cuda:
            torch.cuda.empty_cache()

    header = (
        f"{device_name}, {str(dtype).removeprefix('torch.')}, torch {torch.__version__}, "
        f"measured matmul peak {peak:.1f} TFLOP/s"
    )
    print(markdown(results, header))
    summary = {
        "device": device_name,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "matmul_peak_tflops": peak,
        "wall_s": time.perf_counter() - t_start,
        "results": results_json(results),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
