"""Two-stage retrieval: embed, take the top ``depth`` from the Qdrant index, rerank those passages
with a served reranker (``EmbeddingClient.score``), and score both orders with ir-measures.

Whether a reranker's scores mean anything is read from its files, never from its name: the
``source`` folder recorded in ``NAME-tokenizer/1/profile.json`` of the model repository (or the
copy of the Hugging Face folder beside a PyTorch-served encoder) holds its README.md, and the
test fixtures say "Random-weight model ..." there.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tembed_client import EmbeddingClient
from tembed_serving.contract import Layout
from tembed_serving.profile import ModelProfile

from .data import ROOT, Task
from .evaluate import Encoder, score
from .index import Ranking, Stores, VectorIndex

RERANK_METRICS = ("MRR@10", "nDCG@10")
DEFAULT_DEPTH = 100
# Tasks a reranker is evaluated on. Tatoeba is a 1:1 translation lookup (sentence -> its
# translation), not query -> passage relevance, so a reranker has nothing to do there.
SKIPPED = {"tatoeba": "Tatoeba skipped: 1:1 translation lookup, not query → passage relevance."}
_RANDOM = re.compile(r"random[- ]weight", re.IGNORECASE)


@dataclass(frozen=True)
class WeightsInfo:
    """What the served model's own files say about its weights."""

    model: str
    random: bool | None  # None: no README found to decide from
    evidence: str  # the README that decided it, or why nothing was found

    @property
    def note(self) -> str:
        if self.random:
            return "random-weight reranker: its figures mean nothing (pipeline check)"
        if self.random is None:
            return f"weights unknown ({self.evidence})"
        return ""


def _source_candidates(source: str, repo: Path) -> list[Path]:
    path = Path(source)
    if path.is_absolute():
        return [path]
    # Relative to where `tembed export` ran: most often the checkout, or next to the repository.
    return [Path.cwd() / path, ROOT / path, Path(repo).resolve().parent / path]


def model_weights(repo: Path, model: str) -> WeightsInfo:
    """Read ``model``'s profile in ``repo`` and the README of the folder it was exported from."""
    layout = Layout(Path(repo), model)
    if not layout.profile_file.is_file():
        return WeightsInfo(model, None, f"no {layout.profile_file}")
    profile = ModelProfile.load(layout.profile_file)
    folders = [layout.hf_dir] + (_source_candidates(profile.source, repo) if profile.source else [])
    for folder in folders:
        readme = folder / "README.md"
        if readme.is_file():
            text = readme.read_text(encoding="utf-8", errors="replace")
            return WeightsInfo(model, bool(_RANDOM.search(text)), str(readme))
    return WeightsInfo(model, None, f"no README.md in the source folder {profile.source!r}")


def rank_scores(ranking: Ranking) -> dict[str, float]:
    """Scores that make ir-measures read ``ranking`` in exactly its order (it sorts by score and
    breaks ties by doc id, which would reorder tied rerank or cosine scores)."""
    return {doc: float(len(ranking) - i) for i, (doc, _) in enumerate(ranking)}


def rerank_order(retrieved: Ranking, scores: np.ndarray) -> Ranking:
    """``retrieved`` reordered by rerank score, best first; ties keep the retrieval order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [(retrieved[i][0], float(scores[i])) for i in order]


@dataclass
class TwoStage:
    """One task's two-stage run; rankings are kept for checks, ``summary()`` is what is reported."""

    task: str
    retriever: str
    reranker: str
    depth: int
    queries: int
    docs: int
    retrieved: list[Ranking]
    reranked: list[Ranking]
    before: dict[str, float]
    after: dict[str, float]
    recall_at_depth: float  # share of judged-relevant documents in the top `depth`: the reranker's ceiling
    rerank_ms: list[float] = field(default_factory=list)  # one `score` call (all chunks) per query
    pairs: int = 0
    tokens: int = 0
    weights: WeightsInfo | None = None

    def summary(self) -> dict[str, Any]:
        ms = np.asarray(self.rerank_ms) if self.rerank_ms else np.asarray([np.nan])
        return {
            "task": self.task,
            "retriever": self.retriever,
            "reranker": self.reranker,
            "depth": self.depth,
            "queries": self.queries,
            "docs": self.docs,
            "before": self.before,
            "after": self.after,
            "recall_at_depth": self.recall_at_depth,
            "pairs": self.pairs,
            "tokens_per_pair": round(self.tokens / max(self.pairs, 1), 1),
            "rerank_p50_ms": round(float(np.percentile(ms, 50)), 1),
            "rerank_p99_ms": round(float(np.percentile(ms, 99)), 1),
            "random_weights": None if self.weights is None else self.weights.random,
            "note": "" if self.weights is None else self.weights.note,
        }


def recall_at(task: Task, rankings: list[Ranking]) -> float:
    got = [len(set(task.qrels[q]) & {d for d, _ in r}) / len(task.qrels[q]) for q, r in zip(task.queries, rankings)]
    return round(float(np.mean(got)), 4) if got else float("nan")


def two_stage(
    enc: Encoder,
    reranker: EmbeddingClient,
    task: Task,
    qdrant: Stores,
    depth: int = DEFAULT_DEPTH,
    *,
    limit: int | None = None,
    weights: WeightsInfo | None = None,
) -> TwoStage:
    """Retrieve the top ``depth`` of each query (full-size vectors), rerank them, score both.

    ``limit`` reranks only the first queries (the corpus, and so the retrieval, stays whole);
    before and after are scored on those same queries."""
    doc_ids = list(task.corpus)
    docs = enc.embed([task.corpus[d] for d in doc_ids], "document", f"{enc.info.name} {task.name} docs")
    qids = list(task.queries)[:limit]
    sub = Task(task.name, {q: task.queries[q] for q in qids}, task.corpus, {q: task.qrels[q] for q in qids})
    queries = enc.embed(list(sub.queries.values()), "query", f"{enc.info.name} {task.name} queries")
    with VectorIndex.build(qdrant, doc_ids, docs, f"{task.name} top-{depth}") as index:
        retrieved = index.search(queries, k=min(depth, len(doc_ids)))
    reranked, latencies, pairs, tokens = [], [], 0, 0
    name = reranker.model_info().name
    for text, ranking in tqdm(
        zip(sub.queries.values(), retrieved), total=len(retrieved), desc=f"rerank {task.name}", leave=False
    ):
        t0 = time.perf_counter()
        result = reranker.score(text, [task.corpus[d] for d, _ in ranking])  # the client chunks by max_texts
        latencies.append((time.perf_counter() - t0) * 1e3)
        reranked.append(rerank_order(ranking, result.scores))
        pairs += len(ranking)
        tokens += int(result.token_counts.sum())
    return TwoStage(
        task=task.name,
        retriever=enc.info.name,
        reranker=name,
        depth=depth,
        queries=len(qids),
        docs=len(doc_ids),
        retrieved=retrieved,
        reranked=reranked,
        before=score(sub, [list(rank_scores(r).items()) for r in retrieved], RERANK_METRICS),
        after=score(sub, [list(rank_scores(r).items()) for r in reranked], RERANK_METRICS),
        recall_at_depth=recall_at(sub, retrieved),
        rerank_ms=latencies,
        pairs=pairs,
        tokens=tokens,
        weights=weights,
    )


def rerank_tasks(tasks: list[Task]) -> tuple[list[Task], list[str]]:
    """The tasks a reranker is run on, and notes on those left out."""
    keep, notes = [], []
    for t in tasks:
        skipped = next((why for prefix, why in SKIPPED.items() if t.name.startswith(prefix)), None)
        if skipped is None:
            keep.append(t)
        elif skipped not in notes:
            notes.append(skipped)
    return keep, notes


def evaluate_rerank(
    url: str,
    retriever: str,
    reranker: str,
    tasks: list[Task],
    qdrant: Stores,
    *,
    depth: int = DEFAULT_DEPTH,
    limit: int | None = None,
    repo: Path | None = None,
) -> dict[str, Any]:
    """Two-stage results of every rerankable task: ``{"tasks": {name: summary}, "notes": [...]}``."""
    weights = model_weights(repo, reranker) if repo else WeightsInfo(reranker, None, "model repository not given")
    keep, notes = rerank_tasks(tasks)
    out: dict[str, Any] = {"retriever": retriever, "reranker": reranker, "depth": depth, "tasks": {}, "notes": notes}
    out["weights"] = {"random": weights.random, "evidence": weights.evidence}
    with EmbeddingClient(url, retriever) as emb, EmbeddingClient(url, reranker) as rr:
        enc = Encoder(emb)
        for task in keep:
            run = two_stage(enc, rr, task, qdrant, depth, limit=limit, weights=weights)
            out["tasks"][task.name] = run.summary()
    return out


def markdown(rerank: dict[str, Any]) -> list[str]:
    """The report's two-stage section: one row per data set, before → after."""
    note = ""
    if rerank["weights"]["random"]:
        note = " ⚠ random-weight reranker (its README says so): the *after* figures mean nothing"
    elif rerank["weights"]["random"] is None:
        note = f" (weights unknown: {rerank['weights']['evidence']})"
    lines = [
        f"## Two-stage retrieval: `{rerank['retriever']}` top {rerank['depth']}, reranked by `{rerank['reranker']}`",
        "",
        "| data set | size | recall@depth (ceiling) | MRR@10 before → after | nDCG@10 before → after "
        "| rerank P50 / P99 ms per query |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, t in rerank["tasks"].items():
        cells = [
            f"{t['before'][m]:.3f} → {t['after'][m]:.3f} ({t['after'][m] - t['before'][m]:+.3f}){note and ' ⚠'}"
            for m in RERANK_METRICS
        ]
        lines.append(
            f"| {name} | {t['queries']} q / {t['docs']} docs | {t['recall_at_depth']:.3f} | {cells[0]} | {cells[1]} "
            f"| {t['rerank_p50_ms']:.0f} / {t['rerank_p99_ms']:.0f} |"
        )
    paragraphs = [f"⚠{note.removeprefix(' ⚠')}."] if note else []
    paragraphs += [
        f"Each query's top {rerank['depth']} passages (cosine, exact search) are scored with the reranker through "
        "`EmbeddingClient.score` (one call per query; the client splits it into `max_texts` requests) and "
        "re-sorted by that score; both orders are scored with ir-measures on the same queries. "
        "Recall@depth is the share of judged passages within the top depth: no reranker gets above it.",
        *rerank["notes"],
    ]
    for p in paragraphs:
        lines += ["", p]
    return lines
