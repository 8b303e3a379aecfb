"""Retrieval measured on Qdrant's real engine (Qdrant Edge, in-process), through ``tembed_retrieval``: exact vs
HNSW, float vs int8 vs binary quantization (with and without rescoring), Matryoshka dimensions, dense vs BM25 vs
hybrid vs reranked, and the two-stage timings. Writes its section of docs/QUALITY.md (between the markers).

    python -m tembed_eval.engine --url 127.0.0.1:8001 --out docs/QUALITY.md

Each set is indexed once with ``tembed index``'s code (``build_index``: the served model, + BM25) under
``--work``; re-runs embed nothing. The variants are built from the vectors read back from that index.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tembed_retrieval.corpus import Record
from tembed_retrieval.models import Embedder
from tembed_retrieval.retrieve import QUERY, Retriever, SearchOptions, bm25_model, build_index
from tembed_retrieval.store import EdgeStore, IndexSpec, Passage, Search

from .beir import load_task
from .data import DEFAULT_DATA, ROOT, Task
from .evaluate import score, truncate

BEGIN, END = "<!-- engine:begin -->", "<!-- engine:end -->"
METRICS = ("nDCG@10", "MRR@10")
QWEN3_DIMS = {"Qwen3-Embedding-0.6B": 1024, "Qwen3-Embedding-4B": 2560, "Qwen3-Embedding-8B": 4096}


def p50(ms: list[float]) -> float:
    return round(float(np.percentile(ms, 50)), 2) if ms else float("nan")


def p95(ms: list[float]) -> float:
    return round(float(np.percentile(ms, 95)), 2) if ms else float("nan")


def _sparse(vec: Any) -> tuple[list[int], list[float]]:
    return list(vec.indices), list(vec.values)


def timed_search(store, searches: list[Search]) -> tuple[list[list[tuple[str, float]]], list[float]]:
    """One query at a time, as a user sends them: rankings and per-query milliseconds."""
    out, ms = [], []
    for s in searches:
        t0 = time.perf_counter()
        (hits,) = store.search([s])
        ms.append((time.perf_counter() - t0) * 1e3)
        out.append([(h.id, h.score) for h in hits])
    return out, ms


def variant(work: Path, name: str, doc_ids: list[str], docs: np.ndarray, spec: IndexSpec) -> EdgeStore:
    path = work / name
    if path.exists():
        import shutil

        shutil.rmtree(path)
    store = EdgeStore.open(path, spec)
    for start in range(0, len(doc_ids), 512):
        store.upsert([Passage(d, "", v) for d, v in zip(doc_ids[start : start + 512], docs[start : start + 512])])
    t0 = time.perf_counter()
    store.finish()
    store.build_s = time.perf_counter() - t0  # type: ignore[attr-defined]
    return store


def overlap(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]], k: int) -> float:
    return round(float(np.mean([len({i for i, _ in x[:k]} & {i for i, _ in y[:k]}) / k for x, y in zip(a, b)])), 4)


def measure_task(args: argparse.Namespace, task: Task, embedder: Embedder, work: Path) -> dict[str, Any]:
    name = task.name.replace(" ", "-").replace("→", "-")
    out: dict[str, Any] = {"queries": len(task.queries), "docs": len(task.corpus)}
    base_path = work / f"{name}-base"
    records = [Record(d, t) for d, t in task.corpus.items()]
    spec = IndexSpec(args.model, embedder.dimension, sparse="bm25")
    report = build_index(records, base_path, spec, embedder, progress=True)
    out["index"] = {"embedded": report.embedded, "seconds": {k: round(v, 1) for k, v in report.seconds.items()}}
    out["index"]["size_bytes"] = report.size_bytes
    base = EdgeStore.open(base_path)
    doc_ids, docs = base.vectors()
    qcache = work / f"{name}-queries.npy"
    qids = list(task.queries)
    if qcache.exists() and len(np.load(qcache)) == len(qids):
        queries = np.load(qcache)
    else:
        queries = embedder.embed([task.queries[q] for q in qids], QUERY)
        np.save(qcache, queries)
    k100 = min(100, len(doc_ids))

    def quality(rankings):
        return score(task, [r[:10] for r in rankings], METRICS)

    # 1. exact vs HNSW (HNSW forced: full_scan_threshold 1 KB, or small segments are scanned exactly anyway).
    hnsw = variant(work, f"{name}-hnsw", doc_ids, docs, IndexSpec(args.model, spec.dimension, full_scan_threshold_kb=1))
    exact, exact_ms = timed_search(hnsw, [Search(q, limit=k100, exact=True) for q in queries])
    approx, approx_ms = timed_search(hnsw, [Search(q, limit=k100) for q in queries])
    out["hnsw"] = {
        "recall@10": overlap(approx, exact, 10),
        "recall@100": overlap(approx, exact, k100),
        "exact_ms_p50": p50(exact_ms),
        "hnsw_ms_p50": p50(approx_ms),
        "build_s": round(hnsw.build_s, 2),
        "exact": quality(exact),
        "hnsw": quality(approx),
    }
    hnsw.drop()
    # 2. float vs int8 vs binary, through HNSW on the quantized vectors.
    rows = {}
    for quant in ("none", "int8", "binary"):
        store = variant(
            work,
            f"{name}-{quant}",
            doc_ids,
            docs,
            IndexSpec(args.model, spec.dimension, quant, full_scan_threshold_kb=1),
        )
        modes = (
            [("float", {})]
            if quant == "none"
            else [
                ("no rescoring", {"rescore": False}),
                ("rescore", {"rescore": True}),
                ("rescore, oversampling 4", {"rescore": True, "oversampling": 4.0}),
            ]
        )
        for label, kw in modes:
            rankings, ms = timed_search(store, [Search(q, limit=10, **kw) for q in queries])
            rows[f"{quant} {label}" if quant != "none" else "float"] = {
                **quality(rankings),
                "ms_p50": p50(ms),
                "top10_vs_exact": overlap(rankings, exact, 10),
                "size": store.size_bytes(),
            }
        store.drop()
    out["quantization"] = rows
    # 3. Matryoshka: the first d dimensions, re-normalised (what the server's `dimensions` returns).
    mat = {}
    for d in sorted({spec.dimension, *(x for x in args.dims if x < spec.dimension)}, reverse=True):
        store = variant(work, f"{name}-d{d}", doc_ids, truncate(docs, d), IndexSpec(args.model, d))
        rankings, ms = timed_search(store, [Search(q, limit=10, exact=True) for q in truncate(queries, d)])
        mat[d] = {**quality(rankings), "bytes_per_vector": 4 * d, "ms_p50": p50(ms), "size": store.size_bytes()}
        store.drop()
    out["matryoshka"] = mat
    # 4. dense vs BM25 vs hybrid (the base index: float vectors + Qdrant BM25), + rerank on the first queries.
    bm25 = bm25_model()
    sparse = [_sparse(bm25.embed_query(task.queries[q])) for q in qids]
    modes = {
        "dense": [Search(q, limit=10) for q in queries],
        "BM25": [Search(None, limit=10, sparse=s) for s in sparse],
        "hybrid RRF": [Search(q, limit=10, sparse=s, fusion="rrf", depth=100) for q, s in zip(queries, sparse)],
        "hybrid DBSF": [Search(q, limit=10, sparse=s, fusion="dbsf", depth=100) for q, s in zip(queries, sparse)],
    }
    hybrid = {}
    for label, searches in modes.items():
        rankings, ms = timed_search(base, searches)
        hybrid[label] = {**quality(rankings), "ms_p50": p50(ms)}
    out["hybrid"] = hybrid
    base.close()
    # 5. two-stage through the library (Retriever: embed, search top 100, rerank to 10), first --rerank-queries.
    if args.rerank:
        sub_ids = qids[: args.rerank_queries]
        sub = Task(task.name, {q: task.queries[q] for q in sub_ids}, task.corpus, {q: task.qrels[q] for q in sub_ids})
        runs = {}
        for label, hyb in (("dense + rerank", False), ("hybrid RRF + rerank", True)):
            with Retriever(base_path, url=args.url, rerank=args.rerank) as r:
                results = [
                    r.search(task.queries[q], SearchOptions(top_k=10, hybrid=hyb, rerank_depth=100), q)
                    for q in tqdm(sub_ids, desc=f"{name} {label}", leave=False)
                ]
            t = {k: [x.timings_ms[k] for x in results] for k in ("embed", "search", "rerank", "total")}
            runs[label] = {
                **score(sub, [[(h.id, h.score) for h in x.hits] for x in results], METRICS),
                "timings_ms_p50": {k: p50(v) for k, v in t.items()},
                "timings_ms_p95": {k: p95(v) for k, v in t.items()},
                "queries": len(sub_ids),
            }
        with Retriever(base_path, url=args.url) as r:
            dense = [r.search(task.queries[q], SearchOptions(top_k=10), q) for q in sub_ids]
        t = {k: [x.timings_ms[k] for x in dense] for k in ("embed", "search", "total")}
        runs["dense (same queries)"] = {
            **score(sub, [[(h.id, h.score) for h in x.hits] for x in dense], METRICS),
            "timings_ms_p50": {k: p50(v) for k, v in t.items()},
            "queries": len(sub_ids),
        }
        out["rerank"] = runs
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def markdown(result: dict[str, Any], command: str, date: str) -> list[str]:
    tasks = result["tasks"]
    names = list(tasks)
    lines = [
        BEGIN,
        "## Retrieval on Qdrant's engine (Qdrant Edge): HNSW, quantization, Matryoshka, hybrid, two-stage",
        "",
        f"{date}, `{command}`: `{result['model']}` served by tritonserver on CPU, vectors searched by "
        f"qdrant-edge-py {result['qdrant_edge']} (Qdrant's Rust engine in-process). **Measured on a loaded 2-core "
        "machine (five sessions sharing it): milliseconds are one run each, only their ratios mean much.** "
        "Latencies are one query at a time (`EdgeShard.query`), p50. Reproduce: `make eval-engine` (exports "
        "e5-small and the reranker fixture, serves them, runs this).",
        "",
        "Sets: " + "; ".join(f"{n} {t['queries']} q / {t['docs']} docs" for n, t in tasks.items()) + ".",
        "",
        "Index time (`tembed index` code path: embed through gRPC, 2 requests of max_texts in flight, upsert, HNSW):",
        "",
        "| set | passages embedded | embed s | upsert s | HNSW build s | total s | disk MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, t in tasks.items():
        s, sz = t["index"]["seconds"], t["index"]["size_bytes"]
        lines.append(
            f"| {n} | {t['index']['embedded']} | {s.get('embed', 0)} | {s.get('upsert', 0)} | {s.get('build', 0)} | "
            f"{s.get('total', 0)} | {_mib(sz.get('disk', 0))} |"
        )
    lines += [
        "",
        "(A set already indexed shows 0 passages embedded: re-indexing is idempotent.)",
        "",
        "### Exact search vs HNSW (m 16, ef_construct 100, Qdrant's default ef)",
        "",
        "| set | recall@10 of HNSW vs exact | recall@100 | exact ms | HNSW ms | HNSW build s | nDCG@10 exact → HNSW |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for n, t in tasks.items():
        h = t["hnsw"]
        lines.append(
            f"| {n} | {h['recall@10']:.4f} | {h['recall@100']:.4f} | {h['exact_ms_p50']} | {h['hnsw_ms_p50']} | "
            f"{h['build_s']} | {h['exact']['nDCG@10']:.4f} → {h['hnsw']['nDCG@10']:.4f} |"
        )
    lines += [
        "",
        "### float vs Qdrant's int8 (scalar) and binary quantization",
        "",
        "HNSW searched on the quantized vectors; *rescore* re-scores the candidates with the float vectors, "
        "*oversampling 4* takes 4 × top-k candidates first. Resident = quantized vectors (or the float ones) + "
        "HNSW graph, what Qdrant keeps in RAM to search; disk = blocks allocated to the whole shard (float "
        "vectors kept for rescoring, payload with the texts, WAL).",
        "",
        "| set | vectors | nDCG@10 | MRR@10 | top-10 = exact float | ms | resident MiB | disk MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, t in tasks.items():
        for label, r in t["quantization"].items():
            lines.append(
                f"| {n} | {label} | {r['nDCG@10']:.4f} | {r['MRR@10']:.4f} | {r['top10_vs_exact']:.3f} | "
                f"{r['ms_p50']} | {_mib(r['size']['resident'])} | {_mib(r['size']['disk'])} |"
            )
    first = tasks[names[0]]
    lines += [
        "",
        f"### Matryoshka dimensions × bytes × quality ({result['model']}, exact search)",
        "",
        "| set | d | bytes / vector (float32) | float vectors MiB | nDCG@10 | MRR@10 | Δ MRR@10 vs full |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, t in tasks.items():
        full = t["matryoshka"][max(t["matryoshka"], key=int)]["MRR@10"]
        for d, r in t["matryoshka"].items():
            delta = (r["MRR@10"] - full) / full * 100 if full else 0.0
            lines.append(
                f"| {n} | {d} | {r['bytes_per_vector']} | {_mib(r['size']['vectors_float'])} | {r['nDCG@10']:.4f} | "
                f"{r['MRR@10']:.4f} | {delta:+.1f}% |"
            )
    lines += [
        "",
        "The Qwen3-Embedding shapes by arithmetic (bytes per vector; an index of 1 M passages): float32 4·d, "
        "Qdrant int8 d, binary d/8.",
        "",
        "| model | d | float32 B | 1 M passages float | int8 | binary | 512 dims float (index −%) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, d in QWEN3_DIMS.items():
        lines.append(
            f"| {m} | {d} | {4 * d} | {4 * d / 2**30 * 1e6:.2f} GiB | {d / 2**30 * 1e6:.2f} GiB | "
            f"{d / 8 / 2**30 * 1e6:.2f} GiB | {4 * 512 / 2**30 * 1e6:.2f} GiB (−{(1 - 512 / d) * 100:.0f}%) |"
        )
    lines += [
        "",
        "### Dense vs BM25 vs hybrid (Qdrant's BM25 sparse vectors with IDF, prefetch 100 each, fused in the engine)",
        "",
        "| set | " + " | ".join(f"{m} nDCG@10 / MRR@10" for m in first["hybrid"]) + " | RRF − dense nDCG@10 |",
        "|---|" + "---|" * len(first["hybrid"]) + "---:|",
    ]
    for n, t in tasks.items():
        cells = [f"{r['nDCG@10']:.4f} / {r['MRR@10']:.4f}" for r in t["hybrid"].values()]
        delta = t["hybrid"]["hybrid RRF"]["nDCG@10"] - t["hybrid"]["dense"]["nDCG@10"]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {delta:+.4f} |")
    lines += [
        "",
        "Lexical matching helps where the query shares words with its passage (CMRC2018 questions are written from "
        "their paragraph) and cannot help across languages (Tatoeba zh→en: BM25 finds nothing, fusion only adds "
        "noise); the sign of the last column says which, per set.",
    ]
    if "rerank" in first:
        lines += [
            "",
            f"### Two-stage: embed, top 100, rerank to top 10 (`{result['rerank']}`)",
            "",
            f"**`{result['rerank']}` has random weights** (a fixture of the real architecture; no trained reranker "
            "is available offline here): its quality figures mean nothing, its milliseconds are the real cost of "
            "the stage at this model size. Per query through `Retriever.search` (the library behind `tembed "
            "search`), p50 (p95).",
            "",
            "| set | pipeline | queries | nDCG@10 | MRR@10 | embed ms | search ms | rerank ms | total ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, t in tasks.items():
            for label, r in t["rerank"].items():
                a, b = r["timings_ms_p50"], r.get("timings_ms_p95", {})

                def cell(k, a=a, b=b):
                    return f"{a[k]}" + (f" ({b[k]})" if k in b else "") if k in a else "—"

                lines.append(
                    f"| {n} | {label} | {r['queries']} | {r['nDCG@10']:.4f} | {r['MRR@10']:.4f} | {cell('embed')} | "
                    f"{cell('search')} | {cell('rerank')} | {cell('total')} |"
                )
    lines += [END]
    return lines


def kept_section(out: Path) -> list[str]:
    """The section as ``out`` has it now (for a full ``tembed eval`` report to keep), or nothing."""
    text = out.read_text(encoding="utf-8") if out.exists() else ""
    if BEGIN not in text or END not in text:
        return []
    return [BEGIN, *text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n").splitlines(), END]


def write_section(out: Path, lines: list[str]) -> None:
    text = out.read_text(encoding="utf-8") if out.exists() else ""
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    out.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tembed_eval.engine", description=__doc__)
    ap.add_argument("--url", help="Triton gRPC address serving --model (and --rerank)")
    ap.add_argument("--serve", type=Path, metavar="REPO", help="start tritonserver on this repository instead")
    ap.add_argument("--model", default="multilingual-e5-small")
    ap.add_argument("--rerank", help="served reranker for the two-stage rows")
    ap.add_argument("--rerank-queries", type=int, default=30)
    ap.add_argument("--sets", default="cmrc2018,msmarco,tatoeba-zh-en")
    ap.add_argument("--limit", type=int, default=500, help="first N queries per set")
    ap.add_argument("--max-docs", type=int, default=1000, help="MS MARCO: first N documents")
    ap.add_argument("--dims", default="256,128")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "engine")
    ap.add_argument("--out", type=Path, help="markdown file to put the section into")
    args = ap.parse_args(argv)
    args.dims = [int(d) for d in args.dims.split(",") if d]

    import contextlib

    stack = contextlib.ExitStack()
    if args.serve:
        from tembed_serving.supervisor import TritonServer

        log = ROOT / ".cache" / "tritonserver-engine.log"
        args.url = stack.enter_context(TritonServer.on_free_ports(args.serve, log_file=log)).grpc_url
    elif not args.url:
        raise SystemExit("error: --url or --serve")
    with stack:
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    from importlib.metadata import version

    embedder = Embedder(args.model, url=args.url)
    work = args.work / args.model
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"model": args.model, "rerank": args.rerank, "qdrant_edge": version("qdrant-edge-py")}
    result["tasks"] = {}
    for name in args.sets.split(","):
        task = load_task(name, args.data, None, args.max_docs)  # the whole corpus, then its first queries
        qids = list(task.queries)[: args.limit]
        task = Task(task.name, {q: task.queries[q] for q in qids}, task.corpus, {q: task.qrels[q] for q in qids})
        result["tasks"][task.name] = measure_task(args, task, embedder, work)
        (work / "engine.json").write_text(json.dumps(result, ensure_ascii=False, indent=1, default=str))
    embedder.close()
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    command = shlex.join(["python", "-m", "tembed_eval.engine", *(sys.argv[1:] if argv is None else argv)])
    lines = markdown(result, command, date)
    if args.out:
        write_section(args.out, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
