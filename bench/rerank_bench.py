"""Rerank one query against 100 passages of ~200 tokens on CPU: our served MiniLM cross-encoder
(tritonserver, gRPC client ``score``) vs ``sentence_transformers.CrossEncoder.predict`` in-process,
same weights, same thread budget (ONNX Runtime intra-op threads = torch threads).

    python bench/rerank_bench.py                 # about 2-3 minutes on 2 cores
    python bench/rerank_bench.py --rounds 2 --calls 1   # a quick look

Prints a markdown table and the ratio ours / in-process, then one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tembed_bench without installing bench/

from tembed_bench.rerank import (  # noqa: E402
    InProcess,
    Served,
    build_cross_encoder,
    interleaved,
    markdown,
    results_json,
    round_ratios,
    workload,
)
from tembed_bench.systems import ROOT  # noqa: E402

NAME = "minilm-cross-encoder"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench", help="model folder and repository")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads = torch threads (%(default)s)")
    ap.add_argument("--passages", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=200, help="word pieces per passage")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds (A B, B A, ...)")
    ap.add_argument("--calls", type=int, default=3, help="calls per system and round")
    ap.add_argument("--batch-size", type=int, default=32, help="CrossEncoder.predict batch_size (its default: 32)")
    ap.add_argument("--max-texts", type=int, default=64, help="server's documents per request (export default: 64)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    from tembed.pipeline import ExportOptions, export_model
    from tembed.repository import ServingOptions
    from tembed_serving.contract import Layout
    from tembed_serving.supervisor import TritonServer

    folder = build_cross_encoder(args.work / NAME)
    repo = args.work / f"rerank-repo-t{args.threads}-m{args.max_texts}"
    if not Layout(repo, NAME).onnx_file.is_file():
        serving = ServingOptions(intra_op_threads=args.threads)
        result = export_model(folder, repo, ExportOptions(name=NAME, max_texts=args.max_texts, serving=serving))
        assert result.profile.task == "rerank", result.profile.task
    query, docs = workload(folder / "tokenizer.json", args.passages, args.tokens)

    theirs = InProcess(folder, threads=args.threads, batch_size=args.batch_size)
    log = args.work / "tritonserver-rerank-bench.log"
    with TritonServer.on_free_ports(repo, log_file=log) as srv:
        ours = Served(srv.grpc_url, NAME)
        # Same weights, same pairs: the scores must agree (ONNX vs PyTorch float32) before any timing.
        a, b = ours(query, docs), theirs(query, docs)
        max_diff = float(np.abs(a - b).max())
        if max_diff > 1e-4:
            raise SystemExit(f"scores differ by {max_diff:.2e}: not the same model or tokenization")
        tokens = int(ours.token_counts(query, docs).sum())
        stats = interleaved(
            {ours.name: lambda: ours(query, docs), theirs.name: lambda: theirs(query, docs)},
            pairs=len(docs),
            tokens=tokens,
            rounds=args.rounds,
            calls=args.calls,
        )
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    header = (
        f"{date}, {os.cpu_count()} cores ({platform.machine()}), {args.threads} threads each; "
        f"1 query x {len(docs)} passages of {args.tokens} word pieces ({tokens} tokens per call with query and "
        f"specials); server max_texts {ours.max_texts}; scores agree to {max_diff:.1e}"
    )
    print(header)
    print()
    print("\n".join(markdown(stats, ours.name, theirs.name)))
    summary = {
        "date": date,
        "cores": os.cpu_count(),
        "threads": args.threads,
        "pairs": len(docs),
        "tokens_per_call": tokens,
        "max_texts": ours.max_texts,
        "batch_size": args.batch_size,
        "max_abs_score_diff": max_diff,
        "ratio": stats[ours.name].pairs_per_s / stats[theirs.name].pairs_per_s,
        "round_ratios": round_ratios(stats, ours.name, theirs.name),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "results": results_json(stats),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
