"""``make search-demo``: the shipped CMRC2018 paragraphs indexed with the default model, a few Chinese questions
answered, each stage timed. Three commands, printed before they run:

    tembed index .cache/beir/cmrc2018/corpus.jsonl --index .cache/search-demo --model multilingual-e5-small --sparse bm25
    tembed search "..." --index .cache/search-demo --hybrid --show-text
    tembed search "..." --index .cache/search-demo --rerank qwen3-reranker-tiny --rerank-depth 100

Re-running it re-embeds nothing (the index is idempotent). ``--url`` uses a server already serving the models.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import subprocess
import sys
from pathlib import Path

from .beir import write_beir
from .data import DEFAULT_DATA, ROOT, load_cmrc
from .rerank_demo import EMBEDDER, RERANKER, prepare_repository

REPO = ROOT / ".cache" / "search_repository"
QUESTIONS = ("DEV_0_QUERY_0", "DEV_1_QUERY_0", "DEV_2_QUERY_0")


def _rel(path: Path) -> str:
    """Paths as a user in the checkout would type them."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _run(args: list[str]) -> None:
    shown = ["tembed", *args]
    print("\n$ " + shlex.join(shown), flush=True)
    subprocess.run([sys.executable, "-m", "tembed_retrieval", *args], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tembed_eval.search_demo", description=__doc__)
    ap.add_argument("--url", help="a server already serving both models (default: start one on --repo)")
    ap.add_argument("--repo", type=Path, default=REPO)
    ap.add_argument("--index", type=Path, default=ROOT / ".cache" / "search-demo")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    task = load_cmrc(args.data)
    beir = write_beir(task, ROOT / ".cache" / "beir" / "cmrc2018")
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            from tembed_serving.supervisor import TritonServer

            prepare_repository(args.repo, [EMBEDDER, RERANKER] if args.rerank else [EMBEDDER])
            log = ROOT / ".cache" / "tritonserver-search-demo.log"
            url = stack.enter_context(TritonServer.on_free_ports(args.repo, log_file=log)).grpc_url
        common = ["--index", _rel(args.index), "--url", url]
        _run(["index", _rel(beir / "corpus.jsonl"), *common, "--model", EMBEDDER, "--sparse", "bm25"])
        for qid in QUESTIONS:
            gold = next(iter(task.qrels[qid]))
            print(f"\n(gold paragraph of {qid}: {gold})")
            _run(["search", task.queries[qid], *common, "--hybrid", "--top-k", "3", "--show-text"])
        if args.rerank:
            print(f"\n({RERANKER} has random weights: its order is a pipeline check, its scores mean nothing)")
            _run(
                [
                    "search",
                    task.queries[QUESTIONS[0]],
                    *common,
                    "--top-k",
                    "3",
                    "--rerank",
                    RERANKER,
                    "--rerank-depth",
                    "100",
                ]
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
