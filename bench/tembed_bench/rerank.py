"""Reranking on CPU: our served cross-encoder (gRPC ``score``) against sentence-transformers'
``CrossEncoder.predict`` in-process, on the same weights and the same thread budget.

The model is all-MiniLM-L6-v2's trained encoder under a one-label classification head initialised
at random with a fixed seed: a cross-encoder of MiniLM size whose speed is a real one and whose scores
mean nothing (its README says random-weight). Built offline from ``fixtures/all-minilm-l6-v2``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .data import DATA
from .systems import ROOT

SOURCE = "all-minilm-l6-v2"
WEIGHTS = "model.safetensors"
README = (
    "all-MiniLM-L6-v2's trained encoder (BertForSequenceClassification, one label, sentence-transformers "
    "CrossEncoder layout) under a random-weight classification head (torch seed {seed}). Built by "
    "bench/tembed_bench/rerank.py for speed benchmarks only: its scores carry no meaning.\n"
)


def build_cross_encoder(out: Path, *, seed: int = 0, fixtures: Path = ROOT / "fixtures") -> Path:
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


@dataclass
class Stats:
    system: str
    calls: int
    pairs_per_s: float  # median over rounds of (pairs scored / wall time of the round)
    pairs_per_s_rounds: list[float]
    p50_ms: float
    p99_ms: float
    tokens_per_s: float


def interleaved(
    systems: dict[str, Callable[[], object]], *, pairs: int, tokens: int, rounds: int, calls: int
) -> dict[str, Stats]:
    """``rounds`` rounds; in each, every system makes ``calls`` back-to-back calls, in alternating
    order from round to round (A B, B A, ...), so load from elsewhere hits both alike."""
    lat: dict[str, list[float]] = {k: [] for k in systems}
    tput: dict[str, list[float]] = {k: [] for k in systems}
    names = list(systems)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t_round = time.perf_counter()
            for _ in range(calls):
                t0 = time.perf_counter()
                systems[name]()
                lat[name].append(time.perf_counter() - t0)
            tput[name].append(pairs * calls / (time.perf_counter() - t_round))
    out = {}
    for name in names:
        ms = np.asarray(lat[name]) * 1e3
        median = float(np.median(tput[name]))
        out[name] = Stats(
            system=name,
            calls=len(ms),
            pairs_per_s=round(median, 2),
            pairs_per_s_rounds=[round(x, 2) for x in tput[name]],
            p50_ms=round(float(np.percentile(ms, 50)), 1),
            p99_ms=round(float(np.percentile(ms, 99)), 1),
            tokens_per_s=round(median * tokens / pairs),
        )
    return out


def round_ratios(stats: dict[str, Stats], ours: str, theirs: str) -> list[float]:
    """ours / theirs within each round: both sides of a round ran seconds apart, under the same load."""
    return [round(a / b, 3) for a, b in zip(stats[ours].pairs_per_s_rounds, stats[theirs].pairs_per_s_rounds)]


def markdown(stats: dict[str, Stats], ours: str, theirs: str, target: float = 0.9) -> list[str]:
    lines = [
        "| system | pairs/s (median of rounds) | per call (100 pairs) P50 / P99 ms | tokens/s | calls |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in stats.values():
        lines.append(
            f"| {s.system} | {s.pairs_per_s:.1f} | {s.p50_ms:.0f} / {s.p99_ms:.0f} | {s.tokens_per_s:,.0f} | {s.calls} |"
        )
    ratio = stats[ours].pairs_per_s / stats[theirs].pairs_per_s
    per_round = round_ratios(stats, ours, theirs)
    verdict = "met" if ratio >= target else "missed"
    lines += [
        "",
        f"ours / in-process throughput: **{ratio:.2f}** (target ≥ {target}: {verdict}); "
        f"per round: median {np.median(per_round):.2f}, min {min(per_round):.2f}, max {max(per_round):.2f}",
    ]
    return lines


def results_json(stats: dict[str, Stats]) -> list[dict]:
    return [asdict(s) for s in stats.values()]
