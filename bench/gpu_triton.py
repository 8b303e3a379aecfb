"""The PyTorch runner inside the pip-installed tritonserver: parity and speed on a GPU.

Three steps, each its own process (the GPU image's numpy 2 breaks the Python backend's BYTES
tensors, so the server side runs in a venv with numpy 1.x; the reference runs where
sentence-transformers lives):

    python bench/gpu_triton.py model --out /tmp/q06              # random-weight Qwen3-Embedding-0.6B folder
    python bench/gpu_triton.py reference --model /tmp/q06 --out /tmp/ref.npz   # sentence-transformers, fp32
    tembed export /tmp/q06 --backend pytorch --repo /tmp/repo --name qwen3-embedding-0.6b
    python bench/gpu_triton.py serve --repo /tmp/repo --model /tmp/q06 --ref /tmp/ref.npz

``serve`` measures the runner in-process first (tokenizer + TorchEncoder, no server), then starts
tritonserver on the repository and measures the same work through the ensemble over gRPC:
parity against the fp32 reference, one short query at a time (P50/P99), and 16 x ~512-token
requests at concurrency 1 and 4 (texts/s). Prints a markdown table and one JSON line.
On CPU, ``--tiny`` and ``tembed export --torch-device cpu`` make the same run a dry run.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tembed_bench.stats import drive, summary  # bench/ is this script's folder: on sys.path

# The published Qwen3-Embedding-0.6B sizes (config.json); tiny is the CPU dry run.
SHAPES = {
    "0.6b": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
    ),
    "tiny": {},
}
SHORT_QUERY = "如何在家里做一杯好喝的咖啡？"
# Mixed scripts and lengths for parity; the long one crosses several length buckets.
PARITY_TEXTS = [
    "北京是中华人民共和国的首都。",
    "The quick brown fox jumps over the lazy dog.",
    "混合 text with English 和中文, emoji 🚀 and numbers 12345.",
    "短",
    "检索增强生成把向量数据库召回的段落交给大模型。" * 20,
    "Qwen3-Embedding uses last-token pooling over a left-padded batch. " * 30,
]
PARAGRAPH = (
    "向量检索系统先用嵌入模型把文档切成段落并编码，再在查询时召回最相近的一百个段落，"
    "然后由重排序模型挑出前十个交给生成模型。 Retrieval systems embed passages once and queries at request time; "
)


def doc_texts(n: int, target_chars: int = 900, seed: int = 0) -> list[str]:
    """n distinct passages of roughly 512 Qwen3 tokens (about 900 characters; at most one 512-token bucket of this mix)."""
    rng = np.random.default_rng(seed)
    words = PARAGRAPH.split(" ")
    out = []
    for i in range(n):
        parts, size = [f"段落 {i}:"], 0
        while size < target_chars:
            w = words[int(rng.integers(len(words)))]
            parts.append(w)
            size += len(w) + 1
        out.append(" ".join(parts))
    return out


def cmd_model(args: argparse.Namespace) -> int:
    from tembed_fixtures.qwen3_tiny import build_qwen3_tiny

    t0 = time.perf_counter()
    build_qwen3_tiny(args.out, **SHAPES[args.shape])
    print(f"model folder {args.out} ({args.shape}) in {time.perf_counter() - t0:.1f}s", flush=True)
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    import torch
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    st = SentenceTransformer(str(args.model), device=device, model_kwargs={"dtype": torch.float32})
    query = st.encode([SHORT_QUERY], prompt_name="query", normalize_embeddings=True)
    docs = st.encode(PARITY_TEXTS, normalize_embeddings=True, batch_size=len(PARITY_TEXTS))
    np.savez(args.out, query=query, docs=docs)
    print(f"reference: sentence-transformers fp32 on {device}, {docs.shape} -> {args.out}", flush=True)
    return 0


def _throughput(fn, texts_per_call: int, concurrency: int, seconds: float) -> dict:
    """Calls of ``fn`` from ``concurrency`` threads for ``seconds``: texts/s and call latency."""
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        call = fn(i)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            call()
            with lock:
                lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = summary(lat)
    return {"concurrency": concurrency, "calls": len(lat), "texts_per_s": len(lat) * texts_per_call / wall} | {
        "p50_ms": ms["p50"],
        "p99_ms": ms["p99"],
    }


def in_process(repo: Path, name: str, seconds: float, device: str) -> dict:
    """The runner without a server: tokenizer + TorchEncoder as the encoder model.py builds it."""
    import torch

    from tembed_serving.contract import HF_DIR, Layout
    from tembed_serving.profile import ModelProfile
    from tembed_serving.runners.torch import TorchEncoder
    from tembed_serving.textproc import TextEncoder

    layout = Layout(repo, name)
    enc_dir = layout.version_dir("encoder")
    profile = ModelProfile.load(enc_dir)
    dtype = "bfloat16" if device == "cuda" else "float32"
    runner = TorchEncoder.load(enc_dir / HF_DIR, profile, dtype=dtype, device=device)
    tok = TextEncoder(profile, layout.tokenizer_file)

    def embed(texts: list[str], input_type: str) -> np.ndarray:
        b = tok(texts, input_type)
        return runner([b.input_ids], [b.attention_mask])[0]

    docs = doc_texts(16)
    for _ in range(3):
        embed([SHORT_QUERY], "query")
        embed(docs, "document")
    short = summary(drive(lambda _: embed([SHORT_QUERY], "query"), range(200))[0])
    bulk = _throughput(lambda i: lambda: embed(docs, "document"), 16, 1, seconds)
    out = {
        "query": embed([SHORT_QUERY], "query"),
        "docs": embed(PARITY_TEXTS, "document"),
        "short_p50_ms": short["p50"],
        "short_p99_ms": short["p99"],
        "bulk": bulk,
        "doc_tokens": int(tok(docs, "document").token_count.mean()),
    }
    runner.model.to("cpu")  # the server about to start gets the GPU memory
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def through_triton(repo: Path, name: str, seconds: float) -> dict:
    from tembed_client import EmbeddingClient
    from tembed_serving.supervisor import TritonServer

    log = Path("/tmp/tembed-gpu-triton.log")
    t0 = time.perf_counter()
    with TritonServer.on_free_ports(repo, log_file=log) as srv:
        ready_s = time.perf_counter() - t0
        print(f"tritonserver ready in {ready_s:.1f}s at {srv.grpc_url}", flush=True)
        docs = doc_texts(16)
        with EmbeddingClient(srv.grpc_url, name) as c:
            for _ in range(3):
                c.embed([SHORT_QUERY], input_type="query")
                c.embed(docs)
            query = c.embed([SHORT_QUERY], input_type="query")
            served = c.embed(PARITY_TEXTS)
            alone = np.stack([c.embed([t])[0] for t in PARITY_TEXTS])
            short = summary(drive(lambda _: c.embed([SHORT_QUERY], input_type="query"), range(200))[0])

        def client_call(i: int):
            client = EmbeddingClient(srv.grpc_url, name)
            return lambda: client.embed(docs)

        bulk = [_throughput(client_call, 16, conc, seconds) for conc in (1, 4)]
    return {
        "ready_s": ready_s,
        "query": query,
        "docs": served,
        "alone": alone,
        "short_p50_ms": short["p50"],
        "short_p99_ms": short["p99"],
        "bulk": bulk,
        "log": str(log),
    }


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).min())


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = np.load(args.ref) if args.ref and args.ref.exists() else None
    local = in_process(args.repo, args.name, args.seconds, device)
    print("in-process done", flush=True)
    served = through_triton(args.repo, args.name, args.seconds)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    summary = {
        "device": gpu,
        "torch": torch.__version__,
        "doc_tokens_mean": local["doc_tokens"],
        "server_ready_s": served["ready_s"],
        "served_vs_in_process_min_cos": _min_cos(served["docs"], local["docs"]),
        "served_vs_in_process_max_abs": float(np.abs(served["docs"] - local["docs"]).max()),
        "alone_vs_batch_max_abs": float(np.abs(served["alone"] - served["docs"]).max()),
        "short_c1": {
            "in_process_p50_ms": local["short_p50_ms"],
            "in_process_p99_ms": local["short_p99_ms"],
            "triton_p50_ms": served["short_p50_ms"],
            "triton_p99_ms": served["short_p99_ms"],
        },
        "bulk_16x512": {"in_process": local["bulk"], "triton": served["bulk"]},
    }
    if ref is not None:
        summary["served_vs_st_fp32_min_cos_docs"] = _min_cos(served["docs"], ref["docs"])
        summary["served_vs_st_fp32_min_cos_query"] = _min_cos(served["query"], ref["query"])
    s = summary
    rows = [
        ("short query, c=1, P50 ms", f"{local['short_p50_ms']:.2f}", f"{served['short_p50_ms']:.2f}"),
        ("short query, c=1, P99 ms", f"{local['short_p99_ms']:.2f}", f"{served['short_p99_ms']:.2f}"),
        (
            "16 x ~512 tok, c=1, texts/s",
            f"{local['bulk']['texts_per_s']:.0f}",
            f"{served['bulk'][0]['texts_per_s']:.0f}",
        ),
        ("16 x ~512 tok, c=4, texts/s", "", f"{served['bulk'][1]['texts_per_s']:.0f}"),
    ]
    dtype = "bf16" if device == "cuda" else "fp32"
    print(f"\n{gpu}, torch {torch.__version__}, {args.name} (random weights, real shapes), {dtype} runner\n")
    print("| measure | in-process runner | through Triton (gRPC ensemble) |\n|---|--:|--:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    print(
        f"\nparity: served vs in-process min cos {s['served_vs_in_process_min_cos']:.6f};"
        f" one text alone vs in a batch max |diff| {s['alone_vs_batch_max_abs']:.2e}"
    )
    if ref is not None:
        print(
            f"served ({dtype}) vs sentence-transformers fp32: min cos docs {s['served_vs_st_fp32_min_cos_docs']:.5f},"
            f" query {s['served_vs_st_fp32_min_cos_query']:.5f}"
        )
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model", help="write a random-weight model folder with the real Qwen3 tokenizer")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--shape", choices=tuple(SHAPES), default="0.6b")
    r = sub.add_parser("reference", help="sentence-transformers fp32 vectors of the parity texts")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("serve", help="in-process runner, then the same through tritonserver")
    s.add_argument("--repo", type=Path, required=True)
    s.add_argument("--name", default="qwen3-embedding-0.6b")
    s.add_argument("--ref", type=Path)
    s.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args(argv)
    return {"model": cmd_model, "reference": cmd_reference, "serve": cmd_serve}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
