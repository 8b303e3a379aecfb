"""Evaluate one served model: embed through the gRPC client, index in Qdrant, score the search
results with ir-measures (pytrec_eval underneath)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ir_measures
import numpy as np
from ir_measures import RR, R, Success, nDCG
from tqdm.auto import tqdm

from tembed_client import EmbeddingClient, EmbeddingError
from tembed_client.contract import LONG_TEXT_VALUES

from .data import DEFAULT_DATA, Task, load_beir, load_cmrc, load_tatoeba, long_document
from .index import Ranking, Stores, VectorIndex, cross_check

MEASURES = {"MRR@10": RR @ 10, "R@10": R @ 10, "nDCG@10": nDCG @ 10, "acc@1": Success @ 1}
SWEEP_DIMS = (32, 64, 128, 256, 512)  # and the model's full dimension
ALL_TASKS = ("cmrc2018", "tatoeba", "msmarco", "long")


@dataclass
class EvalConfig:
    data: Path = DEFAULT_DATA
    tasks: tuple[str, ...] = ALL_TASKS
    limit: int | None = None  # queries (Tatoeba: pairs) per task
    max_docs: int | None = None  # BEIR corpora: first N documents
    beir: tuple[Path, ...] = ()  # more BEIR folders to evaluate
    compare_prompt: bool = True
    check_queries: int = 20  # per task and dimension: Qdrant vs exact numpy
    long_chars: int = 20_000
    dims: tuple[int, ...] = SWEEP_DIMS
    verify_texts: int = 8  # texts on which server-side `dimensions` must equal client truncation


def task_metrics(task: str) -> tuple[str, ...]:
    """The metrics reported for a task, headline first."""
    if task.startswith("tatoeba"):
        return ("acc@1", "MRR@10")
    if task == "cmrc2018":
        return ("MRR@10", "R@10", "nDCG@10")
    return ("nDCG@10", "MRR@10")


def truncate(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Matryoshka: the first ``dim`` components, re-normalised (what the server does)."""
    v = vectors[:, :dim].astype(np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def sweep_dims(full: int, min_dim: int, dims: tuple[int, ...] = SWEEP_DIMS) -> list[int]:
    return sorted({d for d in dims if min_dim <= d <= full} | {full})


def score(task: Task, rankings: list[Ranking], names: tuple[str, ...]) -> dict[str, float]:
    run = {qid: dict(r) for qid, r in zip(task.queries, rankings)}
    if set(run) != set(task.qrels):
        raise ValueError(f"{task.name}: run and qrels cover different queries")
    agg = ir_measures.calc_aggregate([MEASURES[n] for n in names], task.qrels, run)
    return {n: round(float(agg[MEASURES[n]]), 4) for n in names}


class Encoder:
    """Embeds through the client one server-sized request at a time, timing each request and
    caching per (input_type, text), so a text is sent once whatever tasks share it."""

    def __init__(self, client: EmbeddingClient) -> None:
        self.client = client
        self.info = client.model_info()
        self.latencies_ms: list[float] = []
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def _request(self, texts: list[str], input_type: str, dimensions: int | None = None, long_text: str | None = None):
        t0 = time.perf_counter()
        result = self.client.encode(texts, input_type=input_type, dimensions=dimensions, long_text=long_text)
        self.latencies_ms.append((time.perf_counter() - t0) * 1e3)
        return result

    def embed(self, texts: list[str], input_type: str, desc: str = "") -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if (input_type, t) not in self._cache))
        step = self.info.max_texts
        with tqdm(total=len(missing), desc=desc or f"embed {input_type}", unit="text", leave=False) as bar:
            for start in range(0, len(missing), step):
                chunk = missing[start : start + step]
                for text, vec in zip(chunk, self._request(chunk, input_type).embeddings):
                    self._cache[(input_type, text)] = vec
                bar.update(len(chunk))
        return np.stack([self._cache[(input_type, t)] for t in texts]) if texts else np.empty((0, self.info.dimension))

    def encode_one(self, text: str, input_type: str, long_text: str | None = None):
        """One text's vector and the result (token counts), timed like every request."""
        result = self._request([text], input_type, long_text=long_text)
        return result.embeddings[0], result

    def latency(self) -> dict[str, float]:
        ms = np.asarray(self.latencies_ms)
        return {
            "requests": len(ms),
            "texts_per_request_max": self.info.max_texts,
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else float("nan"),
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else float("nan"),
        }


def verify_server_truncation(enc: Encoder, texts: list[str], dims: list[int]) -> float:
    """Largest |server(dimensions=d) - client-side truncation of the full vector| over ``dims``.
    The sweep truncates client-side; this shows it is what users get when they ask the server."""
    full = enc.embed(texts, "document")
    worst = 0.0
    for d in dims:
        if d == enc.info.dimension:
            continue
        served = enc._request(texts, "document", dimensions=d).embeddings
        worst = max(worst, float(np.abs(served - truncate(full, d)).max()))
    return worst


def evaluate_task(enc: Encoder, task: Task, qdrant: Stores, cfg: EvalConfig) -> dict[str, Any]:
    name, names = task.name, task_metrics(task.name)
    doc_ids = list(task.corpus)
    docs = enc.embed([task.corpus[d] for d in doc_ids], "document", f"{enc.info.name} {name} docs")
    query_texts = list(task.queries.values())
    queries = enc.embed(query_texts, "query", f"{enc.info.name} {name} queries")
    # Without the prompt = the query embedded exactly like a document (input_type "document"):
    # symmetric encoding, and the document embeddings (and the index) stay the same.
    plain = enc.embed(query_texts, "document", f"{enc.info.name} {name} plain") if cfg.compare_prompt else None
    out: dict[str, Any] = {"queries": len(query_texts), "docs": len(doc_ids), "sweep": {}}
    checked = mismatched = 0
    full = enc.info.dimension
    for dim in sweep_dims(full, enc.info.min_dimension, cfg.dims):
        q, d = truncate(queries, dim), truncate(docs, dim)
        with VectorIndex.build(qdrant, doc_ids, d, f"{name} d={dim}") as index:
            out["sweep"][dim] = score(task, index.search(q), names)
            n, bad = cross_check(index, q[: cfg.check_queries], d)
            checked, mismatched = checked + n, mismatched + bad
            if dim == full:
                out["metrics"] = out["sweep"][dim]
                if plain is not None:
                    out["no_prompt"] = score(task, index.search(truncate(plain, dim)), names)
    out["cross_check"] = {"queries": checked, "mismatched": mismatched}
    return out


def long_text(enc: Encoder, paragraphs: list[str]) -> dict[str, Any]:
    """Stability over a long document: first vs last paragraph, and each paragraph against the
    whole document embedded at once, once per ``long_text`` mode: ``truncate`` (the server cuts it
    at the model's max length; its figures are also the top-level keys) and ``chunk`` (every window
    embedded, their vectors pooled)."""
    p = enc.embed(paragraphs, "document", f"{enc.info.name} long-text paragraphs")
    out: dict[str, Any] = {
        "paragraphs": len(paragraphs),
        "chars": sum(map(len, paragraphs)),
        "first_last_cos": round(float(p[0] @ p[-1]), 4),
        "modes": {},
    }
    for mode in LONG_TEXT_VALUES:
        t0 = time.perf_counter()
        try:
            whole, result = enc.encode_one("\n".join(paragraphs), "document", long_text=mode)
        except EmbeddingError as exc:  # a model whose window cap the document is over
            out["modes"][mode] = {"error": exc.message}
            continue
        to_whole = p @ whole
        out["modes"][mode] = {
            "tokens_embedded": int(result.token_counts[0]),
            "tokens_original": None if result.original_token_counts is None else int(result.original_token_counts[0]),
            "first_to_doc": round(float(to_whole[0]), 4),
            "last_to_doc": round(float(to_whole[-1]), 4),
            "para_to_doc_mean": round(float(to_whole.mean()), 4),
            "para_to_doc_min": round(float(to_whole.min()), 4),
            "ms": round((time.perf_counter() - t0) * 1e3),
        }
    out.update(
        {
            k: out["modes"][LONG_TEXT_VALUES[0]].get(k)
            for k in ("tokens_embedded", "para_to_doc_mean", "para_to_doc_min")
        }
    )
    return out


def load_tasks(cfg: EvalConfig, limit: int | None) -> list[Task]:
    tasks: list[Task] = []
    if "cmrc2018" in cfg.tasks:
        tasks.append(load_cmrc(cfg.data, limit))
    if "tatoeba" in cfg.tasks:
        tasks.extend(load_tatoeba(cfg.data, limit))
    beir = [cfg.data / "msmarco-5k"] if "msmarco" in cfg.tasks else []
    tasks.extend(load_beir(folder, limit, cfg.max_docs) for folder in [*beir, *cfg.beir])
    return tasks


def evaluate_model(url: str, model: str, qdrant: Stores, cfg: EvalConfig, limit: int | None = None) -> dict[str, Any]:
    """Every configured task for one served model; ``limit`` overrides ``cfg.limit``."""
    limit = cfg.limit if limit is None else limit
    t0 = time.perf_counter()
    with EmbeddingClient(url, model) as client:
        enc = Encoder(client)
        info = enc.info
        result: dict[str, Any] = {
            "name": model,
            "dimension": info.dimension,
            "min_dimension": info.min_dimension,
            "tasks": {},
        }
        tasks = load_tasks(cfg, limit)
        dims = sweep_dims(info.dimension, info.min_dimension, cfg.dims)
        if tasks:
            sample = list(tasks[0].corpus.values())[: cfg.verify_texts]
            diff = verify_server_truncation(enc, sample, dims)
            result["matryoshka_check"] = {"texts": len(sample), "max_abs_diff": diff, "ok": diff <= 1e-4}
            if diff > 1e-4:
                raise RuntimeError(f"{model}: server `dimensions` differs from client truncation by {diff:.2e}")
        for task in tasks:
            result["tasks"][task.name] = evaluate_task(enc, task, qdrant, cfg)
        if "long" in cfg.tasks:
            result["long_document"] = long_text(enc, long_document(cfg.data, cfg.long_chars))
        result["latency"] = enc.latency()
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return result
