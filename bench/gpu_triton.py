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

Since 2026-12-04 ``bench/gpu_session.sh`` runs two more commands (docs/GPU.md "Measured 2026-12-04"):

    python bench/gpu_triton.py latency --repo /tmp/repo --variants q2=two-step,q1=one-step --rerank rr
    python bench/gpu_triton.py m3                     # bge-m3's three outputs at the real shape, in-process

``latency`` probes every Python model of the repository (``tembed_bench.gpu_probe``), then sends one short
query at a time to in-process runners (eager and CUDA graphs) and to each served variant in interleaved
rounds, and splits each variant's mean into Triton's per-model statistics, the stubs' execute and runner
times and the synchronised GPU forward; then 16-document throughput and one rerank call of 100 pairs.
"""

from __future__ import annotations

import argparse
import functools
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
RERANK_CHARS = 800  # characters per rerank passage: ~450 Qwen3 tokens, ~510 with the reranker's prompt
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
    from tembed_fixtures.qwen3_reranker import build_qwen3_reranker_tiny
    from tembed_fixtures.qwen3_tiny import build_qwen3_tiny

    t0 = time.perf_counter()
    if args.rerank:  # scores spread over pairs like the rerank bench's own (rerank_part), not saturated
        import torch

        pairs = [(SHORT_QUERY, d) for d in doc_texts(12, target_chars=RERANK_CHARS, seed=2)]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        build_qwen3_reranker_tiny(
            args.out, dtype=args.dtype, calibration_pairs=pairs, device=device, **SHAPES[args.shape]
        )
    else:
        build_qwen3_tiny(args.out, dtype=args.dtype, **SHAPES[args.shape])
    kind = "Qwen3-Reranker" if args.rerank else "Qwen3-Embedding"
    print(f"{kind} folder {args.out} ({args.shape}) in {time.perf_counter() - t0:.1f}s", flush=True)
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


# --------------------------------------------------------------------------------------------- c=1 latency budget
STAT_FIELDS = ("success", "queue", "compute_input", "compute_infer", "compute_output")


def triton_stats(url: str) -> dict[str, dict]:
    """Per model: request count and cumulative ns of each of STAT_FIELDS (``get_inference_statistics``)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as c:
        stats = c.get_inference_statistics(as_json=True)
    out = {}
    for m in stats.get("model_stats", []):
        inf = m.get("inference_stats", {})
        out[m["name"]] = {"count": int(inf.get("success", {}).get("count", 0))} | {
            k: int(inf.get(k, {}).get("ns", 0)) for k in STAT_FIELDS
        }
    return out


def stats_delta(after: dict, before: dict) -> dict[str, dict]:
    zero = dict.fromkeys(("count", *STAT_FIELDS), 0)
    return {m: {k: v - before.get(m, zero)[k] for k, v in s.items()} for m, s in after.items()}


def _mean(records: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in records])) if records else float("nan")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


class InProcessVariant:
    """Tokenizer + TorchEncoder in this process, each part timed (the runner through gpu_probe.TimedRunner)."""

    def __init__(self, tok, runner):
        from tembed_bench.gpu_probe import TimedRunner

        self.tok, self.records, self.tok_s = tok, [], []
        self.runner = TimedRunner(runner, lambda r: self.records.append(r | {"t": time.time()}))

    def embed(self, texts: list[str], input_type: str) -> np.ndarray:
        t0 = time.perf_counter()
        b = self.tok(texts, input_type)
        self.tok_s.append(time.perf_counter() - t0)
        return self.runner([b.input_ids], [b.attention_mask])[0]


def budget_rows(kind: str, stats: dict, probes: dict, client_ms: float, name: str, inproc=None) -> dict[str, float]:
    """Mean ms per request of one variant, split the same way for each (NaN where a part does not exist).

    Served: client wall - Triton's success = client library, gRPC and front end; the ensemble's success -
    its steps' (queue + compute_*) = the ensemble scheduler; a step's compute_infer - its execute() = stub
    IPC and pb_utils; execute - runner = parsing, tokenizing (one-step), finishing the vectors; runner -
    forward = padding, host<->device copies and the .cpu() wait; forward = the GPU forward, synchronised."""
    nan = float("nan")
    row = dict.fromkeys(BUDGET_LABELS, nan)
    row["client wall (mean)"] = client_ms
    if kind == "in-process":
        tok_ms = float(np.mean(inproc.tok_s)) * 1e3
        row["tokenizer (in-process call / tokenizer step execute)"] = tok_ms
        run, fwd = _mean(inproc.records, "runner_ms"), _mean(inproc.records, "forward_ms")
        row["runner - forward: pad, H2D, D2H (.cpu())"] = run - fwd
        row["GPU forward (synchronised)"] = fwd
        row["rest (Python around the calls)"] = client_ms - tok_ms - run
        return row

    def ms(model: str, key: str) -> float:
        st = stats.get(model, {})
        n = st.get("count", 0)
        return st.get(key, 0) / 1e6 / n if n else nan

    top = name
    row["client + gRPC + Triton front end"] = client_ms - ms(top, "success")
    from tembed_serving.contract import model_names

    names = model_names(name)
    encoder = names["encoder"] if kind == "two-step" else name
    if kind == "two-step":
        tokenizer = names["tokenizer"]
        steps = (tokenizer, encoder)
        inner = sum(ms(s, k) for s in steps for k in STAT_FIELDS[1:])
        row["ensemble: queue + scheduling between steps"] = ms(top, "success") - inner
        tok_exec = _mean(probes.get(tokenizer, {}).get("execute", []), "execute_ms")
        row["tokenizer (in-process call / tokenizer step execute)"] = tok_exec
        row["tokenizer step: stub IPC (compute_infer - execute)"] = ms(tokenizer, "compute_infer") - tok_exec
        row["tokenizer step: queue + compute_input + compute_output"] = sum(
            ms(tokenizer, k) for k in ("queue", "compute_input", "compute_output")
        )
    row["encoder: queue (dynamic batcher)"] = ms(encoder, "queue")
    row["encoder: compute_input + compute_output"] = ms(encoder, "compute_input") + ms(encoder, "compute_output")
    probe = probes.get(encoder, {})
    execute, runner = probe.get("execute", []), probe.get("runner", [])
    ex, run, fwd = _mean(execute, "execute_ms"), _mean(runner, "runner_ms"), _mean(runner, "forward_ms")
    row["encoder: stub IPC (compute_infer - execute)"] = ms(encoder, "compute_infer") - ex
    row["encoder execute - runner (parse, tokenize, finish)"] = ex - run
    row["runner - forward: pad, H2D, D2H (.cpu())"] = run - fwd
    row["GPU forward (synchronised)"] = fwd
    return row


BUDGET_LABELS = (
    "client wall (mean)",
    "client + gRPC + Triton front end",
    "ensemble: queue + scheduling between steps",
    "tokenizer step: queue + compute_input + compute_output",
    "tokenizer step: stub IPC (compute_infer - execute)",
    "tokenizer (in-process call / tokenizer step execute)",
    "encoder: queue (dynamic batcher)",
    "encoder: compute_input + compute_output",
    "encoder: stub IPC (compute_infer - execute)",
    "encoder execute - runner (parse, tokenize, finish)",
    "runner - forward: pad, H2D, D2H (.cpu())",
    "GPU forward (synchronised)",
    "rest (Python around the calls)",
)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "--:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _f(x: float, digits: int = 2) -> str:
    return "" if x != x else f"{x:.{digits}f}"  # NaN: blank


def cmd_latency(args: argparse.Namespace) -> int:
    """c=1 short queries interleaved over in-process runners and served variants, with the budget of each;
    16-document throughput; a rerank call of 100 pairs. Prints tables and writes one JSON file."""
    import torch

    from tembed_bench.gpu_probe import environment, probe_repository, read_probes
    from tembed_client import EmbeddingClient
    from tembed_serving.contract import HF_DIR, Layout
    from tembed_serving.profile import ModelProfile
    from tembed_serving.runners.torch import TorchEncoder
    from tembed_serving.supervisor import TritonServer
    from tembed_serving.textproc import TextEncoder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    out: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}
    served = [v.split("=", 1) for v in args.variants.split(",")]  # name=kind
    base = served[0][0]
    probe_dir = args.probe_dir
    print("probed models:", ", ".join(probe_repository(args.repo, probe_dir)), flush=True)

    # In-process: the first two-step variant's weights and tokenizer, eager and with CUDA graphs.
    layout = Layout(args.repo, base)
    enc_dir = layout.version_dir("encoder")
    profile = ModelProfile.load(enc_dir)
    tok = TextEncoder(profile, layout.tokenizer_file)
    eager = TorchEncoder.load(enc_dir / HF_DIR, profile, dtype=dtype, device=device)
    graphed = TorchEncoder(
        eager.model,
        pad_token_id=profile.pad_token_id,
        padding_side=profile.padding_side,
        device=device,
        cuda_graph_tokens=args.graph_tokens,
    )
    inproc = {"in-process": InProcessVariant(tok, eager), "in-process + graphs": InProcessVariant(tok, graphed)}
    out["env"] = {"bench process": environment(device)}

    log = Path(args.log)
    t0 = time.perf_counter()
    with TritonServer.on_free_ports(args.repo, log_file=log) as srv:
        out["server_ready_s"] = time.perf_counter() - t0
        print(f"tritonserver ready in {out['server_ready_s']:.1f}s", flush=True)
        clients = {name: EmbeddingClient(srv.grpc_url, name) for name, _ in served}
        calls = {name: functools.partial(v.embed, [SHORT_QUERY], "query") for name, v in inproc.items()}
        calls |= {name: functools.partial(c.embed, [SHORT_QUERY], input_type="query") for name, c in clients.items()}
        kinds = {"in-process": "in-process", "in-process + graphs": "in-process"} | dict(served)
        for _ in range(5):  # warm-up: CUDA graphs captured, allocator settled, connections open
            for call in calls.values():
                call()
        for v in inproc.values():
            v.records.clear()
            v.tok_s.clear()
        # Parity of what the graphs change: the query and each parity text alone (lone rows: graphed).
        parity = {}
        ref_q = inproc["in-process"].embed([SHORT_QUERY], "query")
        ref_docs = np.concatenate([inproc["in-process"].embed([t], "document") for t in PARITY_TEXTS])
        parity["in-process graphs vs eager, query"] = float(
            np.abs(inproc["in-process + graphs"].embed([SHORT_QUERY], "query") - ref_q).max()
        )
        for name, c in clients.items():
            got = np.stack([c.embed([t])[0] for t in PARITY_TEXTS])
            parity[f"{name} vs in-process eager, texts alone"] = float(np.abs(got - ref_docs).max())
        out["parity_max_abs"] = parity

        names = list(calls)
        lat: dict[str, list[float]] = {n: [] for n in names}
        before = triton_stats(srv.grpc_url)
        since = time.time()
        stop = time.perf_counter() + args.seconds
        rounds = 0
        while rounds < args.rounds and time.perf_counter() < stop:
            order = names[rounds % len(names) :] + names[: rounds % len(names)]  # rotate who goes first
            for n in order:
                t = time.perf_counter()
                calls[n]()
                lat[n].append(time.perf_counter() - t)
            rounds += 1
        until = time.time()
        time.sleep(0.5)  # Triton counts a request once its response has left
        delta = stats_delta(triton_stats(srv.grpc_url), before)
        probes = read_probes(probe_dir, since, until)
        out["rounds"] = rounds
        out["c1"] = {n: summary(lat[n]) for n in names}
        out["stats"] = delta
        out["env"] |= {m: p["env"][-1] for m, p in probes.items() if p.get("env")}
        budget = {n: budget_rows(kinds[n], delta, probes, out["c1"][n]["mean"], n, inproc.get(n)) for n in names}
        out["budget_ms"] = budget
        out["graph_failed"] = {
            m: r["graph_failed"] for m, p in probes.items() for r in p.get("runner", [])[-1:] if r.get("graph_failed")
        }
        graphs = inproc["in-process + graphs"].runner.graphs  # the CudaGraphs object (TimedRunner wraps its call)
        if graphs is not None and graphs.failed:
            out["graph_failed"]["in-process"] = graphs.failed
        out["in_process_graph_lengths"] = sorted(graphs.graphs) if graphs is not None else []
        out["graphed_calls"] = {m: sum(r.get("graphed", 0) for r in p.get("runner", [])) for m, p in probes.items()}

        # 16 documents per call: texts/s at c=1 (and c=4 served), two-step against one-step.
        docs = doc_texts(16)
        bulk = {"in-process c=1": _throughput(lambda i: lambda: inproc["in-process"].embed(docs, "document"), 16, 1,
                                              args.bulk_seconds)}  # fmt: skip
        for name, kind in served:
            if name not in args.bulk.split(","):
                continue
            for conc in (1, 4):
                bulk[f"{name} ({kind}) c={conc}"] = _throughput(
                    functools.partial(_client_call, srv.grpc_url, name, docs), 16, conc, args.bulk_seconds
                )
        out["bulk_16_docs"] = bulk
        out["doc_tokens_mean"] = int(tok(docs, "document").token_count.mean())
        if args.rerank:
            out["rerank"] = rerank_part(args, srv.grpc_url, device, dtype)
        for c in clients.values():
            c.close()

    print_latency(out, names, kinds)
    Path(args.json).write_text(json.dumps(out, indent=1, default=float), encoding="utf-8")
    return 0


def _client_call(url: str, name: str, docs: list[str], _thread: int):
    """One thread's call of ``_throughput``: its own client."""
    from tembed_client import EmbeddingClient

    client = EmbeddingClient(url, name)
    return lambda: client.embed(docs)


def rerank_part(args: argparse.Namespace, url: str, device: str, dtype: str) -> dict:
    """One rerank call of 100 passages of ~512-token pairs, served, against the runner in-process (same bf16)
    and the fp32 RerankModel (the reference): latency, pairs/s, parity."""
    import torch

    from tembed_client import EmbeddingClient
    from tembed_serving.contract import HF_DIR, Layout
    from tembed_serving.pairs import PairEncoder
    from tembed_serving.profile import ModelProfile
    from tembed_serving.runners.torch import TorchEncoder
    from tembed_serving.runners.torch_model import load_rerank_model

    layout = Layout(args.repo, args.rerank)
    enc_dir = layout.version_dir("encoder")
    profile = ModelProfile.load(enc_dir)
    pairs = PairEncoder(profile, layout.tokenizer_file)
    query = SHORT_QUERY
    docs = doc_texts(args.rerank_docs, target_chars=args.rerank_chars, seed=1)
    batch = pairs.encode(query, docs)
    tokens = batch.attention_mask.sum(1)
    runner = TorchEncoder.load(enc_dir / HF_DIR, profile, dtype=dtype, device=device)
    out: dict = {"pairs": len(docs), "pair_tokens_mean": float(tokens.mean()), "pair_tokens_max": int(tokens.max())}
    with EmbeddingClient(url, args.rerank) as c:
        for _ in range(2):
            c.score(query, docs)
            runner([batch.input_ids], [batch.attention_mask])
        served_lat, local_lat = [], []
        stop = time.perf_counter() + args.rerank_seconds
        while time.perf_counter() < stop or len(served_lat) < 3:  # interleaved: served, then in-process
            t = time.perf_counter()
            served = c.score(query, docs).scores
            served_lat.append(time.perf_counter() - t)
            t = time.perf_counter()
            local = runner([batch.input_ids], [batch.attention_mask])[0].reshape(-1)
            local_lat.append(time.perf_counter() - t)
    del runner
    ref_model = load_rerank_model(enc_dir / HF_DIR, profile, dtype=torch.float32, attn="sdpa", device=device)
    with torch.inference_mode():
        ids = torch.from_numpy(batch.input_ids.astype(np.int64)).to(device)
        mask = torch.from_numpy(batch.attention_mask.astype(np.int64)).to(device)
        ref = torch.cat([ref_model(ids[i : i + 25], mask[i : i + 25]) for i in range(0, len(docs), 25)])
        ref = ref.float().cpu().numpy().reshape(-1)
    del ref_model
    if device == "cuda":
        torch.cuda.empty_cache()
    s, lo = summary(served_lat), summary(local_lat)
    out |= {
        "served": s | {"pairs_per_s": len(docs) / (s["mean"] / 1e3)},
        "in_process": lo | {"pairs_per_s": len(docs) / (lo["mean"] / 1e3)},
        "served_vs_fp32_max_abs": float(np.abs(served - ref).max()),
        "served_vs_fp32_spearman": _spearman(served, ref),
        "served_vs_in_process_max_abs": float(np.abs(served - local).max()),
        "score_range": [float(ref.min()), float(ref.max())],
        "score_std": float(ref.std()),
    }
    return out


def print_latency(out: dict, names: list[str], kinds: dict[str, str]) -> None:
    print(f"\n{out['device']}, torch {out['torch']}; {out['rounds']} interleaved rounds of one short query each\n")
    head = ["one short query, c=1", *[f"{n} ({kinds[n]})" for n in names]]
    rows = [
        ["P50 ms", *[_f(out["c1"][n]["p50"]) for n in names]],
        ["P99 ms", *[_f(out["c1"][n]["p99"]) for n in names]],
    ]
    rows += [[label, *[_f(out["budget_ms"][n][label]) for n in names]] for label in BUDGET_LABELS]
    print(_table(head, rows))
    print("\nparity (max |diff|):", json.dumps(out["parity_max_abs"]))
    if out.get("graph_failed"):
        print("CUDA graph capture failed:", json.dumps(out["graph_failed"]))
    print("graphed runner calls in the stubs:", json.dumps(out.get("graphed_calls", {})))
    env = out["env"]
    print("\n" + _table(["process", "python", "py loop ms", "CUDA launch us", "torch threads"], [
        [k, str(v.get("python", "")), _f(v.get("py_loop_ms", float("nan"))), _f(v.get("launch_us", float("nan"))),
         str(v.get("torch_threads", ""))] for k, v in env.items()
    ]))  # fmt: skip
    print(f"\n16 documents per call (mean {out['doc_tokens_mean']} tokens)\n")
    print(_table(["variant", "texts/s", "P50 ms"], [
        [k, f"{v['texts_per_s']:.0f}", _f(v["p50_ms"], 1)] for k, v in out["bulk_16_docs"].items()
    ]))  # fmt: skip
    r = out.get("rerank")
    if r:
        print(f"\nrerank: {r['pairs']} pairs, mean {r['pair_tokens_mean']:.0f} tokens (max {r['pair_tokens_max']})\n")
        print(_table(["rerank call", "P50 ms", "P99 ms", "pairs/s"], [
            ["served (pytorch backend, two-step)", _f(r["served"]["p50"], 1), _f(r["served"]["p99"], 1),
             f"{r['served']['pairs_per_s']:.0f}"],
            ["in-process runner", _f(r["in_process"]["p50"], 1), _f(r["in_process"]["p99"], 1),
             f"{r['in_process']['pairs_per_s']:.0f}"],
        ]))  # fmt: skip
        print(
            f"parity: served vs fp32 reference max |diff| {r['served_vs_fp32_max_abs']:.2e}, Spearman"
            f" {r['served_vs_fp32_spearman']:.5f}; served vs in-process (same dtype) {r['served_vs_in_process_max_abs']:.2e};"
            f" fp32 scores in [{r['score_range'][0]:.3f}, {r['score_range'][1]:.3f}], std {r['score_std']:.3f}"
        )


# --------------------------------------------------------------------------------------------- bge-m3's outputs
M3_SHAPES = {
    # BAAI/bge-m3's config.json: XLM-R large.
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
}


def cmd_m3(args: argparse.Namespace) -> int:
    """bge-m3's dense, sparse and colbert outputs from one forward (``M3Model``, what the served graph is),
    random weights at the real shape: ms per batch for each output set (forward + the outputs' copy to the
    host) and bf16 against fp32 on the same weights and inputs."""
    import torch
    from torch import nn
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from tembed_serving.runners.torch_model import EmbeddingModel, M3Model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    low = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = XLMRobertaConfig(
        vocab_size=250002, max_position_embeddings=8194, type_vocab_size=1, pad_token_id=1, **M3_SHAPES[args.shape]
    )
    torch.manual_seed(0)
    with torch.device(device):
        backbone = XLMRobertaModel(cfg, add_pooling_layer=False)
        h = cfg.hidden_size
        sparse, colbert = nn.Linear(h, 1), nn.Linear(h, h)
    fp32 = M3Model(backbone, "cls", sparse, colbert).eval()
    import copy

    lowm = copy.deepcopy(fp32).to(low).eval()
    for m in (fp32, lowm):
        m.backbone.config._attn_implementation = "sdpa"
    dense_only = EmbeddingModel(lowm.backbone, "cls").eval()

    rng = np.random.default_rng(0)
    out: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "shape": args.shape}
    out["attn"] = lowm.backbone.config._attn_implementation
    timings = []

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for rows in (1, 16):
        ids = torch.from_numpy(rng.integers(3, 250000, size=(rows, args.tokens))).to(device)
        ids[:, 0] = 0  # <s>
        mask = torch.ones_like(ids)
        if rows > 1:  # a mixed batch: the second half padded (right, as XLM-R) to half the length
            mask[rows // 2 :, args.tokens // 2 :] = 0
            ids[mask == 0] = 1
        sets = {  # what each output set computes and copies to the host
            "dense (pooled model, no heads)": (dense_only, 1),
            "dense + sparse": (lowm, 2),
            "dense + sparse + colbert": (lowm, 3),
        }
        for name, (model, keep) in sets.items():

            def fn(model=model, keep=keep, ids=ids, mask=mask):
                got = model(ids, mask)
                return [got] if isinstance(got, torch.Tensor) else list(got[:keep])

            with torch.inference_mode():
                for _ in range(3):
                    [t.cpu() for t in fn()]
                lat, host_bytes = [], 0
                stop = time.perf_counter() + args.seconds
                while time.perf_counter() < stop or len(lat) < 5:
                    sync()
                    t = time.perf_counter()
                    got = [x.cpu().numpy() for x in fn()]
                    lat.append(time.perf_counter() - t)
                host_bytes = sum(g.nbytes for g in got)
            s = summary(lat)
            timings.append({"batch": f"{rows} x {args.tokens}", "outputs": name, "p50_ms": s["p50"], "p99_ms": s["p99"],
                            "host_mb": host_bytes / 2**20})  # fmt: skip
        with torch.inference_mode():
            ref = [x.float().cpu().numpy() for x in fp32(ids, mask)]
            got = [x.float().cpu().numpy() for x in lowm(ids, mask)]
        real = mask.cpu().numpy().astype(bool)
        dense_cos = (ref[0] * got[0]).sum(-1) / (np.linalg.norm(ref[0], axis=-1) * np.linalg.norm(got[0], axis=-1))
        w_ref, w_got = ref[1][real], got[1][real]
        v_ref, v_got = ref[2][real], got[2][real]
        v_cos = (v_ref * v_got).sum(-1) / np.maximum(
            np.linalg.norm(v_ref, axis=-1) * np.linalg.norm(v_got, axis=-1), 1e-12
        )
        out[f"parity {rows} x {args.tokens}"] = {
            "dense_min_cos": float(dense_cos.min()),
            "sparse_max_abs": float(np.abs(w_ref - w_got).max()),
            "sparse_max_weight": float(w_ref.max()),
            "sparse_spearman": _spearman(w_ref, w_got),
            "sparse_nonzero_fp32": float((w_ref > 0).mean()),
            "colbert_min_cos": float(v_cos.min()),
        }
    out["timings"] = timings
    dt = "bf16" if low == torch.bfloat16 else "fp32"
    print(f"\nbge-m3 shape ({args.shape}: XLM-R, vocab 250002), random weights, {dt}, {out['attn']}, {out['device']}\n")
    print(_table(["batch", "outputs", "P50 ms", "P99 ms", "to host MiB"], [
        [t["batch"], t["outputs"], _f(t["p50_ms"]), _f(t["p99_ms"]), _f(t["host_mb"], 2)] for t in timings
    ]))  # fmt: skip
    print()
    for k, v in out.items():
        if k.startswith("parity"):
            print(f"{k}, {dt} vs fp32:", json.dumps({a: round(b, 6) for a, b in v.items()}))
    Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model", help="write a random-weight model folder with the real Qwen3 tokenizer")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--shape", choices=tuple(SHAPES), default="0.6b")
    m.add_argument("--rerank", action="store_true", help="a Qwen3-Reranker (causal LM, yes/no head) instead")
    m.add_argument("--dtype", help="save the weights in this torch dtype (default float32)")
    r = sub.add_parser("reference", help="sentence-transformers fp32 vectors of the parity texts")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("serve", help="in-process runner, then the same through tritonserver")
    s.add_argument("--repo", type=Path, required=True)
    s.add_argument("--name", default="qwen3-embedding-0.6b")
    s.add_argument("--ref", type=Path)
    s.add_argument("--seconds", type=float, default=10.0)
    lt = sub.add_parser("latency", help="c=1 budget of in-process and served variants, bulk, one rerank call")
    lt.add_argument("--repo", type=Path, required=True)
    lt.add_argument("--variants", default="q2=two-step,q1=one-step", help="served models, name=two-step|one-step")
    lt.add_argument("--bulk", default="q2,q1", help="served models whose 16-document throughput is measured")
    lt.add_argument("--rerank", help="served reranker model name (skipped when not given)")
    lt.add_argument("--rerank-docs", type=int, default=100)
    lt.add_argument("--rerank-chars", type=int, default=RERANK_CHARS, help="characters per passage")
    lt.add_argument("--rerank-seconds", type=float, default=4.0)
    lt.add_argument("--graph-tokens", type=int, default=256, help="the in-process graphed runner's limit")
    lt.add_argument("--rounds", type=int, default=300)
    lt.add_argument("--seconds", type=float, default=40.0, help="time box of the interleaved c=1 rounds")
    lt.add_argument("--bulk-seconds", type=float, default=3.0)
    lt.add_argument("--probe-dir", type=Path, default=Path("/tmp/tembed-gpu-probe"))
    lt.add_argument("--log", default="/tmp/tembed-gpu-triton.log")
    lt.add_argument("--json", default="/tmp/gpu-latency.json")
    m3 = sub.add_parser("m3", help="bge-m3's three outputs at the real shape, in-process: time and bf16 parity")
    m3.add_argument("--shape", choices=tuple(M3_SHAPES), default="large")
    m3.add_argument("--tokens", type=int, default=512)
    m3.add_argument("--seconds", type=float, default=2.0, help="time box per output set and batch")
    m3.add_argument("--json", default="/tmp/gpu-m3.json")
    args = ap.parse_args(argv)
    cmds = {"model": cmd_model, "reference": cmd_reference, "serve": cmd_serve, "latency": cmd_latency, "m3": cmd_m3}
    return cmds[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
