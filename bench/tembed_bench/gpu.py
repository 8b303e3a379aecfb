"""GPU throughput of the PyTorch runner on random-weight models with the real Qwen3-Embedding and
Qwen3-Reranker shapes.

No checkpoint, network, TensorRT or Triton: the weights are random (speed does not depend on their
values), the model is ``transformers``' Qwen3 with the published sizes, and every batch goes through
``tembed_serving.runners.torch.TorchEncoder``, the code the Triton Python backend runs.

    python -m tembed_bench gpu                       # H100/H200: all three models, about 5-7 minutes
    python -m tembed_bench gpu --tiny --device cpu   # smoke run in seconds, no GPU (tiny embedding model)
    python -m tembed_bench gpu --tiny --device cpu --models qwen3-reranker-0.6b   # tiny reranker smoke run

The reranker runs one call of 100 pairs x 512 tokens through RerankModel's yes/no head, as the served
model does. Prints a markdown table, then one JSON line (the last line) with the same numbers, and
writes a record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from tembed_serving.runners.torch import DTYPES, TorchEncoder
from tembed_serving.runners.torch_model import EmbeddingModel, RerankModel

from . import record
from .stats import summary

PAD_ID = 0
END_ID = 1
# Qwen3 tokenizer ids of "yes" and "no": the two LM-head rows a Qwen3-Reranker reads.
YES_ID, NO_ID = 9693, 2152


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    task: str = "embed"  # "rerank": Qwen3-Reranker, the yes/no head of RerankModel


_QWEN3_06B = {"layers": 28, "hidden": 1024, "heads": 16, "kv_heads": 8, "head_dim": 128, "ffn": 3072, "vocab": 151_669}
_TINY = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "ffn": 128, "vocab": 1000}
# Published config.json sizes of Qwen/Qwen3-Embedding-0.6B and -4B, and of Qwen/Qwen3-Reranker-0.6B
# (the 0.6B embedding model's backbone, with its tied LM head); "tiny*" are for CPU smoke runs.
SHAPES = {
    "qwen3-embedding-0.6b": Shape(**_QWEN3_06B),
    "qwen3-embedding-4b": Shape(layers=36, hidden=2560, heads=32, kv_heads=8, head_dim=128, ffn=9728, vocab=151_669),
    "qwen3-reranker-0.6b": Shape(**_QWEN3_06B, task="rerank"),
    "tiny": Shape(**_TINY),
    "tiny-reranker": Shape(**_TINY, task="rerank"),
}
TINY_STAND_IN = {"embed": "tiny", "rerank": "tiny-reranker"}


@dataclass(frozen=True)
class Workload:
    name: str
    lengths: tuple[int, ...]  # real tokens per sequence; the batch is left-padded to the longest


def workloads(tiny: bool, seed: int = 0, task: str = "embed") -> list[Workload]:
    if task == "rerank":
        # One rerank call of a RAG pipeline: a query against its 100 retrieved passages, each pair
        # (prompt + instruction + query + passage) about 512 tokens.
        return [Workload("rerank 10 pairs x 64", (64,) * 10)] if tiny else [Workload("100 pairs x 512", (512,) * 100)]
    rng = np.random.default_rng(seed)
    if tiny:
        mixed = tuple(int(x) for x in rng.integers(8, 64, size=8))
        return [Workload("batch 4 x 64", (64,) * 4), Workload("mixed 8 x <=64", mixed), Workload("1 x 256 doc", (256,))]
    # Mixed: what a retrieval ingest batch looks like, queries and passages of 32..2048 tokens.
    mixed = tuple(int(x) for x in np.exp(rng.uniform(np.log(32), np.log(2048), size=16)).astype(int))
    return [
        Workload("batch 16 x 512", (512,) * 16),
        Workload("mixed 16 x 32..2048", mixed),
        Workload("1 x 32768 doc", (32768,)),
    ]


def build_model(shape: Shape, dtype: torch.dtype, device: str) -> EmbeddingModel | RerankModel:
    """``EmbeddingModel`` (last-token pooling) or, for ``task="rerank"``, the ``RerankModel`` the
    served Qwen3-Reranker runs: hidden state at the last position, then only the "yes" and "no"
    rows of the (tied) LM head, never the 151k-logit projection."""
    from transformers import AutoModel, AutoModelForCausalLM, Qwen3Config

    rerank = shape.task == "rerank"
    config = Qwen3Config(
        num_hidden_layers=shape.layers,
        hidden_size=shape.hidden,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.ffn,
        vocab_size=shape.vocab,
        max_position_embeddings=40960,
        pad_token_id=PAD_ID,
        tie_word_embeddings=rerank,  # Qwen3-Reranker-0.6B ties its LM head to the embeddings
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: a 4B model's fp32 init on CPU takes minutes
        if rerank:
            lm = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
            yes, no = (YES_ID, NO_ID) if shape.vocab > max(YES_ID, NO_ID) else (shape.vocab - 1, shape.vocab - 2)
            return RerankModel(lm, "lm_yes_no", yes_id=yes, no_id=no).eval()
        backbone = AutoModel.from_config(config, attn_implementation="sdpa", dtype=dtype)
    return EmbeddingModel(backbone, "last").eval()


def non_embedding_params(model: EmbeddingModel | RerankModel) -> int:
    # An embedding lookup does no multiply-adds; every other weight does 2 FLOPs per token. A
    # reranker's LM head is not among its parameters: it keeps two rows as a buffer (4 FLOPs/hidden).
    embed = model.backbone.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embed


def flops_per_token(params: int, shape: Shape, seq: int) -> float:
    """2 x params for the matmuls, plus 2 x layers x seq x (heads x head_dim) for causal QK^T and AV.

    Qwen3 attends causally: position i uses i keys, so QK^T and AV cost 2 x 2 x d x s/2 per token and
    layer on average. Counting full attention (4 x ...) put a 32k-token document above 100 % MFU on an
    H200, since SDPA's causal kernels skip the masked half. Model FLOPs for MFU, not kernel FLOPs.
    """
    return 2.0 * params + 2.0 * shape.layers * seq * shape.heads * shape.head_dim


def matmul_peak_tflops(device: str, dtype: torch.dtype, n: int, seconds: float = 2.0) -> float:
    """Dense matmul throughput measured here: the denominator of MFU, same clock and power state."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        iters += 10
        _sync(device)
    return 2.0 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def make_batch(work: Workload, vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    width = max(work.lengths)
    ids = np.full((len(work.lengths), width), PAD_ID, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(work.lengths):
        ids[row, width - n :] = rng.integers(2, vocab, size=n)
        ids[row, -1] = END_ID
        mask[row, width - n :] = 1
    return ids, mask


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Result:
    model: str
    workload: str
    batch: int
    padded_len: int
    real_tokens: int
    iters: int
    seqs_per_s: float
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    peak_mem_gib: float | None
    tflops: float
    mfu: float


def run_workload(
    runner: TorchEncoder, name: str, shape: Shape, params: int, work: Workload, *, seconds: float, peak: float
) -> Result:
    device = str(runner.device)
    ids, mask = make_batch(work, shape.vocab, seed=1)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # warm-up: cuBLAS heuristics, SDPA kernel selection, allocator
        runner([ids], [mask])
    latencies = []
    t_end = time.perf_counter() + seconds
    while len(latencies) < 3 or (time.perf_counter() < t_end and len(latencies) < 1000):
        t0 = time.perf_counter()
        runner([ids], [mask])  # returns host numpy: includes the copies the Triton model makes
        latencies.append(time.perf_counter() - t0)
    lat, ms = np.array(latencies), summary(latencies)
    real = int(mask.sum())
    # Model FLOPs of the useful (unpadded) tokens: padding waste shows up as lower MFU.
    flops = sum(n * flops_per_token(params, shape, n) for n in work.lengths)
    mean = float(lat.mean())
    tflops = flops / mean / 1e12
    return Result(
        model=name,
        workload=work.name,
        batch=len(work.lengths),
        padded_len=ids.shape[1],
        real_tokens=real,
        iters=len(lat),
        seqs_per_s=len(work.lengths) / mean,
        tokens_per_s=real / mean,
        p50_ms=ms["p50"],
        p99_ms=ms["p99"],
        peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
        tflops=tflops,
        mfu=tflops / peak,
    )


def markdown(results: list[Result], header: str) -> str:
    lines = [
        header,
        "",
        "| model | workload | batch x padded len | seq/s | tokens/s | P50 ms | P99 ms | peak GiB | TFLOP/s | MFU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        mem = "-" if r.peak_mem_gib is None else f"{r.peak_mem_gib:.1f}"
        lines.append(
            f"| {r.model} | {r.workload} | {r.batch} x {r.padded_len} | {r.seqs_per_s:.1f} | {r.tokens_per_s:,.0f} "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} | {mem} | {r.tflops:.1f} | {r.mfu:.1%} |"
        )
    return "\n".join(lines)


def results_json(results: list[Result]) -> list[dict]:
    return [asdict(r) for r in results]


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
    record.write("gpu", summary, quick=args.tiny, args=vars(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
