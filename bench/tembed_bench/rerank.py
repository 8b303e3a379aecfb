"""Reranking on CPU: our served cross-encoder (gRPC ``score``) against sentence-transformers'
``CrossEncoder.predict`` in-process, on the same weights and the same thread budget.

The model is all-MiniLM-L6-v2's trained encoder under a one-label classification head initialised
at random with a fixed seed: a cross-encoder of MiniLM size whose speed is a real one and whose scores
mean nothing (its README says random-weight). Built offline from ``fixtures/all-minilm-l6-v2``.

    python -m tembed_bench rerank            # make bench-rerank: about 2-3 minutes on 2 cores
    python -m tembed_bench rerank --quick    # a quick look
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tembed_serving.profile import ModelProfile

from . import record, render, servers, stats
from .data import DATA

SOURCE = "all-minilm-l6-v2"
WEIGHTS = "model.safetensors"
README = (
    "all-MiniLM-L6-v2's trained encoder (BertForSequenceClassification, one label, sentence-transformers "
    "CrossEncoder layout) under a random-weight classification head (torch seed {seed}). Built by "
    "bench/tembed_bench/rerank.py for speed benchmarks only: its scores carry no meaning.\n"
)


def build_cross_encoder(out: Path, *, seed: int = 0, fixtures: Path = servers.FIXTURES) -> Path:
    """A MiniLM cross-encoder folder that both ``CrossEncoder`` (offline) and ``export_model`` read."""
    out = Path(out)
    if (out / WEIGHTS).is_file():
        return out
    import torch
    from transformers import AutoModelForSequenceClassification

    from tembed_fixtures.build import build_fixtures
    from tembed_fixtures.cross_encoder import save_cross_encoder

    src = build_fixtures(fixtures, only=[SOURCE])[SOURCE]
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(src), num_labels=1).eval()
    return save_cross_encoder(model, src, out, README.format(seed=seed))


def workload(tokenizer_file: Path, n: int = 100, tokens: int = 200) -> tuple[str, list[str]]:
    """One MS MARCO query and ``n`` passages of exactly ``tokens`` word pieces (this tokenizer, no
    specials): consecutive MS MARCO passages joined until long enough, then cut at a token boundary."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_truncation()
    tok.no_padding()
    folder = DATA / "msmarco-5k"
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        query = json.loads(next(f))["text"]
    out, buf = [], ""
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            buf = f"{buf} {(doc.get('title') or '')} {doc['text']}".strip()
            enc = tok.encode(buf, add_special_tokens=False)
            if len(enc.ids) >= tokens:
                out.append(buf[: enc.offsets[tokens - 1][1]])
                buf = ""
                if len(out) == n:
                    return query, out
    raise ValueError(f"{folder}: not enough text for {n} passages of {tokens} tokens")


class Served:
    """Our reranker through tritonserver: one ``score`` call (the client splits it by max_texts)."""

    name = "tembed Triton (gRPC `score`)"

    def __init__(self, url: str, model: str) -> None:
        from tembed_client import EmbeddingClient

        self.client = EmbeddingClient(url, model)
        self.max_texts = self.client.model_info().max_texts

    def __call__(self, query: str, docs: list[str]) -> np.ndarray:
        return self.client.score(query, docs).scores

    def token_counts(self, query: str, docs: list[str]) -> np.ndarray:
        return self.client.score(query, docs).token_counts


class InProcess:
    """sentence-transformers ``CrossEncoder.predict``, torch on ``threads`` threads."""

    def __init__(self, folder: Path, *, threads: int, batch_size: int) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        torch.set_num_threads(threads)
        self.model = CrossEncoder(str(folder), device="cpu", local_files_only=True)
        self.batch_size = batch_size
        self.name = f"sentence-transformers CrossEncoder.predict (in-process, batch_size={batch_size})"

    def __call__(self, query: str, docs: list[str]) -> np.ndarray:
        scores = self.model.predict([(query, d) for d in docs], batch_size=self.batch_size, show_progress_bar=False)
        return np.asarray(scores, dtype=np.float32)


NAME = "minilm-cross-encoder"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads = torch threads (%(default)s)")
    ap.add_argument("--passages", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=200, help="word pieces per passage")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds (A B, B A, ...)")
    ap.add_argument("--calls", type=int, default=3, help="calls per system and round")
    ap.add_argument("--batch-size", type=int, default=32, help="CrossEncoder.predict batch_size (its default: 32)")
    ap.add_argument(
        "--max-texts",
        type=int,
        default=ModelProfile.max_texts,
        help="server's documents per request (export's default)",
    )
    ap.add_argument("--quick", action="store_true", help="2 rounds x 1 call, 20 passages; the doc is left alone")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.calls, args.passages = 2, 1, min(args.passages, 20)
    from tembed.pipeline import ExportOptions, export_model
    from tembed.repository import ServingOptions
    from tembed_serving.contract import Layout

    folder = build_cross_encoder(servers.WORK / NAME)
    repo = servers.WORK / f"rerank-repo-t{args.threads}-m{args.max_texts}"
    if not Layout(repo, NAME).onnx_file.is_file():
        serving = ServingOptions(intra_op_threads=args.threads)
        result = export_model(folder, repo, ExportOptions(name=NAME, max_texts=args.max_texts, serving=serving))
        assert result.profile.task == "rerank", result.profile.task
    query, docs = workload(folder / "tokenizer.json", args.passages, args.tokens)
    theirs = InProcess(folder, threads=args.threads, batch_size=args.batch_size)
    with servers.triton(repo) as srv:
        ours = Served(srv.grpc_url, NAME)
        # Same weights, same pairs: the scores must agree (ONNX vs PyTorch float32) before any timing.
        max_diff = float(np.abs(ours(query, docs) - theirs(query, docs)).max())
        if max_diff > 1e-4:
            raise SystemExit(f"scores differ by {max_diff:.2e}: not the same model or tokenization")
        tokens = int(ours.token_counts(query, docs).sum())
        lat: dict[str, list[float]] = {ours.name: [], theirs.name: []}
        rates: dict[str, list[float]] = {ours.name: [], theirs.name: []}

        def share(system, r: int) -> None:
            got, wall = stats.drive(lambda _: system(query, docs), range(args.calls))
            lat[system.name] += got
            rates[system.name].append(len(docs) * args.calls / wall)

        stats.rounds({s.name: (lambda r, s=s: share(s, r)) for s in (ours, theirs)}, args.rounds)
    results = {
        k: {"pairs_per_s": float(np.median(rates[k])), "rounds": rates[k], "latency_ms": stats.summary(lat[k])}
        | {"tokens_per_s": float(np.median(rates[k])) * tokens / len(docs)}
        for k in lat
    }
    ratio = stats.ratio(rates[ours.name], rates[theirs.name])
    ratio["overall"] = results[ours.name]["pairs_per_s"] / results[theirs.name]["pairs_per_s"]
    numbers = {"results": results, "ratio": ratio, "pairs": len(docs), "tokens_per_call": tokens}
    numbers |= {"max_texts": ours.max_texts, "max_abs_score_diff": max_diff}
    record.write("rerank", numbers, quick=args.quick, args=vars(args))
    print(render.section("rerank", record.latest("rerank", quick=True)))
    if not args.quick:
        render.main(["rerank"])
    return 0
