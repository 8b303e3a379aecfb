"""Two-stage retrieval, end to end on one question (``make rerank-demo``).

Builds the fixtures it needs, exports multilingual-e5-small and a reranker fixture into a model
repository, serves it, embeds CMRC2018 paragraphs, searches the top ``depth`` for one Chinese
question in Qdrant, reranks them with the served reranker, and prints the top passages with both
scores. Whether the reranker's scores mean anything is read from its files (its README), and said.

    python -m tembed_eval.rerank_demo                       # start a server on .cache/rerank_repository
    python -m tembed_eval.rerank_demo --url 127.0.0.1:8001  # a server already serving both models
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path

from .data import DEFAULT_DATA, ROOT, load_cmrc

EMBEDDER = "multilingual-e5-small"
RERANKER = "qwen3-reranker-tiny"  # the family of the reference deployment (Qwen3-Reranker)
REPO = ROOT / ".cache" / "rerank_repository"
QUESTION_ID = "DEV_0_QUERY_0"  # 《战国无双3》是由哪两个公司合作开发的？


def prepare_repository(repo: Path, models: list[str], fixtures: Path = ROOT / "fixtures") -> Path:
    """Build the fixture folders that are missing and export each model not yet in ``repo``."""
    from tembed.pipeline import ExportOptions, export_model
    from tembed_fixtures.build import build_fixtures
    from tembed_serving.contract import Layout

    missing = [m for m in models if not Layout(repo, m).onnx_file.is_file()]
    if not missing:
        return repo
    folders = build_fixtures(fixtures, only=missing)
    for name in missing:
        t0 = time.perf_counter()
        export_model(folders[name], repo, ExportOptions())
        print(f"exported {name} into {repo} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return repo


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def demo(url: str, repo: Path | None, args: argparse.Namespace) -> int:
    from tembed_client import EmbeddingClient

    from .index import VectorIndex, index_stores
    from .rerank import model_weights, rerank_order

    task = load_cmrc(args.data)
    doc_ids = list(task.corpus)[: args.passages]
    if args.question:
        question, gold = args.question, set()
    else:
        question, gold = task.queries[QUESTION_ID], set(task.qrels[QUESTION_ID])
    with EmbeddingClient(url, args.embedder) as emb, EmbeddingClient(url, args.reranker) as rr:
        t0 = time.perf_counter()
        docs = emb.embed([task.corpus[d] for d in doc_ids], input_type="document")
        t_embed = time.perf_counter() - t0
        query = emb.embed([question], input_type="query")
        with VectorIndex.build(index_stores(), doc_ids, docs, "cmrc2018") as index:
            (retrieved,) = index.search(query, k=min(args.depth, len(doc_ids)))
        t0 = time.perf_counter()
        result = rr.score(question, [task.corpus[d] for d, _ in retrieved])  # chunked by max_texts
        t_rerank = time.perf_counter() - t0
    reranked = rerank_order(retrieved, result.scores)
    cosine = {d: (rank, s) for rank, (d, s) in enumerate(retrieved, 1)}

    print()
    print(f"question: {question}")
    print(
        f"{len(doc_ids)} CMRC2018 paragraphs embedded by {args.embedder} in {t_embed:.1f}s; "
        f"top {len(retrieved)} by cosine (Qdrant, exact) reranked by {args.reranker} in {t_rerank * 1e3:.0f} ms "
        f"({int(result.token_counts.sum())} tokens)"
    )
    print()
    print(f"top {args.top} after reranking:")
    print(f"  {'rank':>4}  {'cos rank':>8}  {'cosine':>6}  {'rerank':>8}  passage")
    for rank, (d, score) in enumerate(reranked[: args.top], 1):
        crank, cos = cosine[d]
        mark = "  ← gold" if d in gold else ""
        print(f"  {rank:>4}  {crank:>8}  {cos:6.3f}  {score:8.4f}  {_short(task.corpus[d])}{mark}")
    if gold:
        before = next((r for r, (d, _) in enumerate(retrieved, 1) if d in gold), None)
        after = next((r for r, (d, _) in enumerate(reranked, 1) if d in gold), None)
        print(f"gold paragraph {', '.join(sorted(gold))}: cosine rank {before}, rerank rank {after}")
    print()
    weights = model_weights(repo, args.reranker) if repo else None
    if weights is None:
        print(f"note: reranker weights not checked (pass --repo, the repository the server at {url} serves)")
    elif weights.random:
        print(
            f"NOTE: {args.reranker} has RANDOM WEIGHTS ({weights.evidence} says so): its rerank scores and "
            "order are meaningless; this demo shows the pipeline, not quality."
        )
    elif weights.random is None:
        print(f"note: could not tell whether {args.reranker} has trained weights ({weights.evidence})")
    else:
        print(f"{args.reranker}: trained weights ({weights.evidence} does not say random-weight)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tembed_eval.rerank_demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--url", help="use this tritonserver (gRPC) instead of starting one on --repo")
    ap.add_argument("--repo", type=Path, default=REPO, help="model repository (default: %(default)s)")
    ap.add_argument("--embedder", default=EMBEDDER)
    ap.add_argument("--reranker", default=RERANKER)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--passages", type=int, default=300, help="first N CMRC2018 paragraphs embedded (of 848)")
    ap.add_argument("--depth", type=int, default=100, help="passages retrieved and reranked")
    ap.add_argument("--top", type=int, default=3, help="passages printed")
    ap.add_argument("--question", help=f"a question of your own (default: CMRC2018 {QUESTION_ID}, gold known)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            from tembed_serving.supervisor import TritonServer

            prepare_repository(args.repo, [args.embedder, args.reranker])
            log = ROOT / ".cache" / "tritonserver-rerank-demo.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            url = stack.enter_context(TritonServer.on_free_ports(args.repo, log_file=log)).grpc_url
            print(f"serving {args.repo} at {url} (log: {log})", flush=True)
        rc = demo(url, args.repo, args)
    print(f"done in {time.perf_counter() - t0:.0f}s")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
