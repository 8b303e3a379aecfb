"""``python -m tembed_eval`` / ``tembed eval``: evaluate served models, write docs/QUALITY.md."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tembed_client.contract import DEFAULT_URL

from .data import DEFAULT_DATA, ROOT
from .evaluate import ALL_TASKS, SWEEP_DIMS, EvalConfig, evaluate_model, load_tasks
from .index import index_stores
from .report import write_report
from .rerank import DEFAULT_DEPTH, evaluate_rerank
from .server_stats import find_server_pid, server_memory


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_models(value: str) -> dict[str, int | None]:
    """``m1,m2:200``: model names, each with an optional per-model query limit (for a slow
    pipeline-check model next to the real ones)."""
    out: dict[str, int | None] = {}
    for item in _csv(value):
        name, _, limit = item.partition(":")
        out[name] = int(limit) if limit else None
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--url", default=DEFAULT_URL, help="tritonserver gRPC address")
    ap.add_argument("--models", required=True, help="served models, comma-separated; NAME:N caps that model's queries")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="evaluation data folder (default: %(default)s)")
    ap.add_argument("--limit", type=int, help="queries per task (Tatoeba: pairs; CMRC: corpus = their paragraphs)")
    ap.add_argument(
        "--max-docs", type=int, help="BEIR corpora: keep the first N documents (judgements on the rest dropped)"
    )
    ap.add_argument("--beir", type=Path, action="append", default=[], help="another BEIR-format folder (repeatable)")
    ap.add_argument("--tasks", default=",".join(ALL_TASKS), help="subset of %(default)s")
    ap.add_argument(
        "--compare-prompt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also search with queries embedded without the query prompt (as documents)",
    )
    ap.add_argument("--dims", default=",".join(map(str, SWEEP_DIMS)), help="Matryoshka sweep (plus full)")
    ap.add_argument("--long-chars", type=int, default=20_000, help="length of the long-text document")
    ap.add_argument("--check-queries", type=int, default=20, help="queries per task and dim checked against numpy")
    ap.add_argument("--qdrant-url", help="a Qdrant server (default: Qdrant Edge, the same engine in-process)")
    ap.add_argument("--qdrant-path", help="folder for the Qdrant Edge indexes (default: a temporary one)")
    ap.add_argument("--server-pid", type=int, help="tritonserver pid for memory (default: the gRPC port's listener)")
    ap.add_argument(
        "--serve",
        type=Path,
        metavar="REPO",
        help="start tritonserver on this model repository for the run (ignores --url)",
    )
    ap.add_argument("--out", type=Path, default=Path("docs/QUALITY.md"), help="markdown report (PNG beside it)")
    ap.add_argument(
        "--embedding-types",
        metavar="TYPES",
        help="instead of the report: retrieval with compact vectors (e.g. float,int8,binary; float always) of the "
        "first of --models, binary with float rescoring, Qdrant's binary quantisation; writes only its section of --out",
    )
    rr = ap.add_argument_group("two-stage retrieval (embed, top depth from Qdrant, rerank)")
    rr.add_argument("--rerank", metavar="MODEL", help="served reranker to rerank each query's top --rerank-depth with")
    rr.add_argument("--rerank-depth", type=int, default=DEFAULT_DEPTH, help="passages reranked per query (%(default)s)")
    rr.add_argument("--rerank-limit", type=int, help="rerank only the first N queries of each task (corpus unchanged)")
    rr.add_argument("--retriever", help="first-stage embedding model (default: the first of --models)")
    rr.add_argument(
        "--repository",
        type=Path,
        help="the model repository the server serves, to read the reranker's files (default: --serve's)",
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval`` to another CLI's subcommands (``tembed eval``)."""
    ap = subparsers.add_parser("eval", help="retrieval quality of served models (docs/QUALITY.md)")
    add_arguments(ap)
    ap.set_defaults(func=run)
    return ap


def _command(args: argparse.Namespace) -> str:
    """The command line for the report: main()'s own argv, or this process's (``tembed eval``)."""
    if getattr(args, "argv", None) is not None:
        return shlex.join(["python", "-m", "tembed_eval", *args.argv])
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def _notes(args: argparse.Namespace, memory: dict[str, Any] | None) -> list[str]:
    versions = ", ".join(f"{p} {version(p)}" for p in ("qdrant-edge-py", "ir-measures", "pytrec-eval-terrier"))
    mem = (
        f"VmRSS from /proc of tritonserver (pid {memory['pid']}) and its {memory['processes'] - 1} child processes "
        "(Python backend stubs: tokenizer, encoder, postprocess of every loaded model), read once after all runs; "
        "'this model's stubs' sums the stubs whose model directory belongs to the model, 'whole' adds every stub "
        "and the server itself (shared pages counted per process)."
        if memory
        else "server memory not measured (no tritonserver pid found; pass --server-pid)."
    )
    return [
        f"Data: `{os.path.relpath(Path(args.data).resolve(), ROOT)}` (see its README.md for sources and licences). Sizes are in the table: "
        "CMRC2018 dev is question → the paragraph it was asked about; Tatoeba cmn–eng line i ↔ line i, both directions; "
        "MS MARCO is the BEIR-format 5k subset, graded qrels"
        + (
            f", corpus capped at its first {args.max_docs} documents (queries without a judged document left dropped)"
            if args.max_docs
            else ""
        )
        + ".",
        "The MS MARCO subset is dense in judgements (4,102 of its 5,000 passages are judged relevant to one of its "
        "queries, ~95 per query), so MRR@10 saturates near 1 and graded nDCG@10 is the figure that separates models. "
        "Tatoeba is symmetric (sentence ↔ sentence): an asymmetric query prompt may cost accuracy there.",
        "Embeddings come from the served model through `tembed_client` only, one request per `max_texts` texts. "
        'Queries are sent with `input_type="query"` (the model\'s own query prompt or default instruction), '
        'documents with `input_type="document"`. *Without prompt* sends the queries as documents too '
        "(symmetric: same prompt as the documents, e.g. `passage: ` for e5, none for MiniLM or Qwen3), so the "
        "document index is unchanged and the delta isolates the query prompt.",
        "Search: every corpus is upserted into Qdrant's engine (Qdrant Edge in-process unless --qdrant-url; cosine, exact search) and the top 10 of each query scored with "
        f"ir-measures (`RR@10`, `R@10`, `nDCG@10`, `Success@1` = accuracy@1). {versions}. "
        f"The first {args.check_queries} queries of every task and dimension are checked against exact numpy search "
        "(same ids at every rank except for ties).",
        "Matryoshka: full vectors are truncated to d and re-normalised client-side; on a sample of documents the "
        "server's own `dimensions=d` output is compared with that truncation (max abs diff in the table). "
        "Bytes per vector = 4·d (float32).",
        f"Long text: CMRC2018 paragraphs concatenated in file order (one per article, so several articles) to ≥ "
        f"{args.long_chars} characters; cosine of the first and last paragraph, and of each paragraph to the whole "
        "document embedded at once (the server truncates it to the model's max length: 'tokens embedded'); the "
        "truncate-vs-chunk section embeds the same document with `long_text` chunk too (windows of max_length "
        "tokens, their vectors' token-weighted mean), its 'tokens embedded' summing every window's tokens.",
        "Latency: wall time of each embedding request this run made (mixed lengths, up to max_texts texts, "
        "one at a time, on a shared machine), P50/P99.",
        mem,
        "`qwen3-embedding-tiny` has random weights: it is a pipeline check, its figures mean nothing.",
    ]


def run_compact(args: argparse.Namespace, model: str, cfg: EvalConfig) -> int:
    from .compact import check_types, evaluate_compact, markdown, write_section

    types = check_types(_csv(args.embedding_types))
    cfg.tasks = tuple(t for t in cfg.tasks if t != "long")
    qdrant = index_stores(args.qdrant_url, args.qdrant_path)
    with contextlib.ExitStack() as stack:
        if args.serve:
            from tembed_serving.supervisor import TritonServer

            log = Path(".cache") / "tritonserver-eval.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            args.url = stack.enter_context(TritonServer.on_free_ports(args.serve, log_file=log)).grpc_url
        result = evaluate_compact(args.url, model, load_tasks(cfg, cfg.limit), qdrant, types)
    limits = [f"first {args.limit} queries per task (Tatoeba: pairs; CMRC2018: their paragraphs)" if args.limit else ""]
    limits.append(f"MS MARCO corpus capped at its first {args.max_docs} documents" if args.max_docs else "")
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    limit_text = "; ".join(x for x in limits if x) or "no limits"
    out = write_section(args.out, markdown(result, _command(args), date, limit_text))
    print(json.dumps({"date": date, "out": str(out), "compact": result}, ensure_ascii=False), flush=True)
    return 0 if all(all(t["signs_match_float"].values()) for t in result["tasks"].values()) else 1


def run(args: argparse.Namespace) -> int:
    models = parse_models(args.models)
    cfg = EvalConfig(
        data=args.data,
        tasks=tuple(_csv(args.tasks)),
        limit=args.limit,
        max_docs=args.max_docs,
        beir=tuple(args.beir),
        compare_prompt=args.compare_prompt,
        check_queries=args.check_queries,
        long_chars=args.long_chars,
        dims=tuple(int(d) for d in _csv(args.dims)),
    )
    if getattr(args, "embedding_types", None):
        return run_compact(args, next(iter(models)), cfg)
    qdrant = index_stores(args.qdrant_url, args.qdrant_path)
    with contextlib.ExitStack() as stack:
        if args.serve:
            from tembed_serving.supervisor import TritonServer

            log = Path(".cache") / "tritonserver-eval.log"  # gitignored, beside `tembed serve`'s log
            log.parent.mkdir(parents=True, exist_ok=True)
            srv = stack.enter_context(TritonServer.on_free_ports(args.serve, log_file=log))
            args.url, args.server_pid = srv.grpc_url, srv.proc.pid
        results = {m: evaluate_model(args.url, m, qdrant, cfg, limit) for m, limit in models.items()}
        rerank = None
        if args.rerank:
            retriever = args.retriever or next(iter(models))
            rerank = evaluate_rerank(
                args.url,
                retriever,
                args.rerank,
                load_tasks(cfg, models.get(retriever) or cfg.limit),
                qdrant,
                depth=args.rerank_depth,
                limit=args.rerank_limit,
                repo=args.repository or args.serve,
            )
        pid = args.server_pid or find_server_pid(args.url)
        memory = server_memory(pid, list(models)) if pid else None
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out, png = write_report(results, memory, args.out, _command(args), date, _notes(args, memory), rerank=rerank)
    mismatched = sum(t["cross_check"]["mismatched"] for r in results.values() for t in r["tasks"].values())
    summary = {"date": date, "out": str(out), "plot": str(png), "memory": memory, "models": results}
    if rerank is not None:
        summary["rerank"] = rerank
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 1 if mismatched else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tembed_eval", description=__doc__)
    add_arguments(ap)
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return run(args)
