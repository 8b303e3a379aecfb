"""Measure the PyTorch GPU runner on Qwen3-Embedding-0.6B / -4B and Qwen3-Reranker-0.6B shapes
(random weights, bf16). The reranker runs one call of 100 pairs x 512 tokens through RerankModel's
yes/no head, as the served model does.

    python bench/gpu_bench.py                       # H100/H200: all three models, about 5-7 minutes
    python bench/gpu_bench.py --tiny --device cpu   # smoke run in seconds, no GPU (tiny embedding model)
    python bench/gpu_bench.py --tiny --device cpu --models qwen3-reranker-0.6b   # tiny reranker smoke run

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
    TINY_STAND_IN,
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
    full = tuple(k for k in SHAPES if not k.startswith("tiny"))
    ap.add_argument("--models", nargs="+", choices=full, help=f"default: {' '.join(full)}")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="tiny stand-ins of --models (default: the tiny embedding model) and short workloads (CPU smoke test)",
    )
    ap.add_argument("--seconds", type=float, default=15.0, help="timed seconds per workload (after warm-up)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; use --device cpu (with --tiny)")
    cuda = args.device.startswith("cuda")
    dtype = DTYPES[args.dtype or ("bfloat16" if cuda else "float32")]
    if args.tiny:
        models = list(dict.fromkeys(TINY_STAND_IN[SHAPES[m].task] for m in args.models or ["qwen3-embedding-0.6b"]))
    else:
        models = args.models or list(full)
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
        for work in workloads(args.tiny, task=shape.task):
            results.append(run_workload(runner, name, shape, params, work, seconds=seconds, peak=peak))
            print(f"  {name} / {work.name}: done", file=sys.stderr, flush=True)
            if work.name.startswith("mixed"):
                # The same batch padded to its longest text, as the runner ran it before it grouped
                # rows by length: the before/after of that change, on the same GPU in the same run.
                runner.trim_padding = False
                padded = run_workload(runner, name, shape, params, work, seconds=seconds, peak=peak)
                padded.workload += " (padded to longest)"
                results.append(padded)
                runner.trim_padding = True
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
