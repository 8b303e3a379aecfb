"""``tembed index`` and ``tembed search``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tembed_client import contract as c

from .corpus import CorpusError, read_corpus, read_queries
from .models import DEFAULT_IN_FLIGHT, Embedder
from .retrieve import Retriever, SearchOptions, build_index
from .store import FUSIONS, QUANTIZATIONS, SPARSE_KINDS, IndexSpec, RetrievalError


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--index", required=True, help="index directory (Qdrant Edge), or collection name with --qdrant-url"
    )
    ap.add_argument("--url", default=c.DEFAULT_URL, help="Triton gRPC address of the served models (%(default)s)")
    ap.add_argument("--gateway", metavar="URL", help="embed (and rerank) through the HTTP gateway instead of gRPC")
    ap.add_argument("--qdrant-url", help="a Qdrant server (http://host:6333) instead of the embedded Qdrant Edge")


def cmd_index(args: argparse.Namespace) -> int:
    try:
        records = read_corpus(args.corpus, per_file=args.per_file)
    except CorpusError as exc:
        raise SystemExit(f"error: {exc}") from None
    embedder = Embedder(args.model, url=args.url, gateway=args.gateway)
    try:
        dim = args.dimensions or embedder.dimension
        if dim is None:  # the gateway does not announce it: one probe
            dim = int(embedder.embed(["probe"], "document", priority=args.priority).shape[1])
            embedder.dimension = dim
        if embedder.min_dimension and not embedder.min_dimension <= dim <= embedder.dimension:
            raise SystemExit(
                f"error: --dimensions {dim} outside {embedder.min_dimension}..{embedder.dimension} of {args.model}"
            )
        spec = IndexSpec(
            model=args.model,
            dimension=dim,
            quantization=args.quantization,
            sparse=args.sparse,
            long_text=args.long_text,
            hnsw_m=args.hnsw_m,
            hnsw_ef_construct=args.hnsw_ef_construct,
            full_scan_threshold_kb=args.full_scan_threshold_kb,
        )
        report = build_index(
            records,
            args.index,
            spec,
            embedder,
            qdrant_url=args.qdrant_url,
            in_flight=args.in_flight,
            priority=args.priority,
        )
    except RetrievalError as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        embedder.close()
    s = report.seconds
    print(
        f"{args.index}: {report.points} passages ({report.embedded} embedded, {report.unchanged} unchanged) "
        f"{args.model} d={dim} quantization={args.quantization}{' +bm25' if args.sparse else ''}; "
        f"embed {s['embed']:.1f} s, upsert {s['upsert']:.1f} s, HNSW {s['build']:.1f} s, total {s['total']:.1f} s"
        + (f"; {report.size_bytes['disk'] / 2**20:.1f} MiB on disk" if report.size_bytes else ""),
        flush=True,
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.queries is None):
        raise SystemExit("error: give a query, or --queries QUERIES.jsonl")
    try:
        queries = {"q": args.query} if args.query is not None else read_queries(args.queries)
    except CorpusError as exc:
        raise SystemExit(f"error: {exc}") from None
    opts = SearchOptions(
        top_k=args.top_k,
        hybrid=args.hybrid,
        fusion=args.fusion,
        depth=args.depth,
        rerank_depth=args.rerank_depth,
        exact=args.exact,
        hnsw_ef=args.hnsw_ef,
        rescore=args.rescore,
        oversampling=args.oversampling,
        with_text=args.show_text,
    )
    try:
        retriever = Retriever(
            args.index, url=args.url, gateway=args.gateway, qdrant_url=args.qdrant_url, rerank=args.rerank
        )
    except RetrievalError as exc:
        raise SystemExit(f"error: {exc}") from None
    with retriever:
        for qid, text in queries.items():
            try:
                result = retriever.search(text, opts, qid)
            except ValueError as exc:
                raise SystemExit(f"error: {exc}") from None
            if args.json:
                print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
                continue
            t = result.timings_ms
            print(f"{qid}: {text}")
            print(
                f"  embed {t['embed']:.1f} ms, search {t['search']:.1f} ms"
                + (f", rerank {t['rerank']:.1f} ms" if args.rerank else "")
                + f", total {t['total']:.1f} ms"
            )
            for rank, h in enumerate(result.hits, 1):
                snippet = (h.text or "").replace("\n", " ")[:80] if args.show_text or args.rerank else ""
                print(f"  {rank:>2}. {h.score:8.4f}  {h.id}  {snippet}".rstrip())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``index`` and ``search`` to ``tembed``."""
    ix = subparsers.add_parser("index", help="embed a corpus through the served model into a Qdrant index")
    ix.add_argument("corpus", nargs="+", type=Path, help="BEIR corpus.jsonl (_id, title, text), .txt files, or folders")
    _common(ix)
    ix.add_argument("--model", required=True, help="served embedding model")
    ix.add_argument("--dimensions", type=int, help="Matryoshka size of the stored vectors (default: the model's)")
    ix.add_argument(
        "--quantization", choices=QUANTIZATIONS, default="none", help="Qdrant's own, rescored at query time"
    )
    ix.add_argument("--sparse", choices=SPARSE_KINDS, help="also store Qdrant's BM25 vectors (for --hybrid search)")
    ix.add_argument(
        "--long-text",
        choices=c.LONG_TEXT_VALUES,
        help="passages over the model's window: truncate (server default) or chunk (windows pooled into one vector)",
    )
    ix.add_argument("--per-file", action="store_true", help="plain text: one passage per file, not per line")
    ix.add_argument("--hnsw-m", type=int, default=IndexSpec.hnsw_m)
    ix.add_argument("--hnsw-ef-construct", type=int, default=IndexSpec.hnsw_ef_construct)
    ix.add_argument(
        "--full-scan-threshold-kb",
        type=int,
        default=IndexSpec.full_scan_threshold_kb,
        help="segments under this many KB of vectors are searched exactly, as Qdrant does (%(default)s)",
    )
    ix.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT, help="embedding requests kept in flight")
    ix.add_argument(
        "--priority",
        choices=c.PRIORITY_VALUES,
        default=c.PRIORITY_BULK,
        help="the embedding requests' lane: %(default)s (bulk, behind users' queries) unless told",
    )
    ix.set_defaults(func=cmd_index)

    se = subparsers.add_parser("search", help="search an index built by `tembed index`")
    se.add_argument("query", nargs="?", help="one query (or --queries)")
    _common(se)
    se.add_argument("--queries", type=Path, help="BEIR queries.jsonl (_id, text)")
    se.add_argument("--top-k", type=int, default=10)
    se.add_argument(
        "--hybrid", action="store_true", help="dense + BM25 prefetch, fused (index built with --sparse bm25)"
    )
    se.add_argument("--fusion", choices=FUSIONS, default="rrf")
    se.add_argument("--depth", type=int, default=100, help="hybrid: candidates of each prefetch (%(default)s)")
    se.add_argument("--rerank", metavar="MODEL", help="served reranker for the top --rerank-depth")
    se.add_argument("--rerank-depth", type=int, default=100)
    se.add_argument("--exact", action="store_true", help="full scan instead of HNSW")
    se.add_argument("--hnsw-ef", type=int)
    se.add_argument("--rescore", action=argparse.BooleanOptionalAction, default=None, help="quantized: rescore")
    se.add_argument("--oversampling", type=float, help="quantized: candidates = oversampling x top-k, rescored")
    se.add_argument("--json", action="store_true", help="one JSON line per query: query_id, hits, timings_ms")
    se.add_argument(
        "--show-text", action="store_true", help="print each hit's text (with --rerank it is fetched anyway)"
    )
    se.set_defaults(func=cmd_search)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tembed_retrieval")
    register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
