"""The library API: ``build_index`` (corpus -> served embedder -> Qdrant) and ``Retriever`` (query -> embed ->
search, dense or hybrid -> optional rerank), each stage timed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tembed_client import contract as c

from .corpus import Record
from .models import DEFAULT_IN_FLIGHT, Embedder, Reranker
from .store import Hit, IndexSpec, Passage, Search, Store, fingerprint, open_store

DOCUMENT, QUERY = c.INPUT_TYPES[1], c.INPUT_TYPES[0]


def bm25_model() -> Any:
    """Qdrant's BM25 (``qdrant_edge.Bm25``): the multilingual tokenizer splits CJK text too. The index holds
    term frequencies; the IDF is Qdrant's, computed over the collection at query time (``Modifier.Idf``)."""
    import qdrant_edge as qe

    return qe.Bm25(qe.Bm25Config(tokenizer=qe.TokenizerType.Multilingual))


def _sparse(vec: Any) -> tuple[list[int], list[float]]:
    return list(vec.indices), list(vec.values)


@dataclass
class IndexReport:
    records: int
    embedded: int
    unchanged: int
    points: int
    seconds: dict[str, float] = field(default_factory=dict)
    size_bytes: dict[str, int] = field(default_factory=dict)


def build_index(
    records: Sequence[Record],
    index: str | Path,
    spec: IndexSpec,
    embedder: Embedder,
    *,
    qdrant_url: str | None = None,
    in_flight: int = DEFAULT_IN_FLIGHT,
    batch: int | None = None,
    progress: bool = True,
    priority: str = c.PRIORITY_BULK,
) -> IndexReport:
    """Embed the records not yet in ``index`` with their current text, upsert them, build HNSW. A record whose id
    is indexed with the same text is skipped (re-indexing is idempotent); one whose text changed is replaced.
    The embedding requests go at ``priority`` (bulk by default: the model's bulk lane, behind users' queries)."""
    t0 = time.perf_counter()
    existed = qdrant_url is not None or (Path(index) / "tembed-index.json").exists()
    store = open_store(index, spec, qdrant_url=qdrant_url)  # refuses another model or dimension before any write
    try:
        have = store.fingerprints()
        todo = [r for r in records if have.get(r.doc_id) != fingerprint(r.passage)]
        bm25 = bm25_model() if spec.sparse == "bm25" else None
        step = batch or embedder.max_texts * max(1, in_flight) * 4
        seconds = {"embed": 0.0, "upsert": 0.0}
        bar = tqdm(total=len(todo), desc=f"index {Path(str(index)).name}", unit="passage", disable=not progress)
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            t = time.perf_counter()
            vecs = embedder.embed(
                [r.passage for r in chunk],
                DOCUMENT,
                dimensions=spec.dimension if spec.dimension != embedder.dimension else None,
                long_text=spec.long_text,
                priority=priority,
                in_flight=in_flight,
                progress=bar.update,
            )
            seconds["embed"] += time.perf_counter() - t
            if vecs.shape[1] != spec.dimension:
                raise ValueError(
                    f"{embedder.model} answered {vecs.shape[1]}-dim vectors, the index holds {spec.dimension}"
                )
            t = time.perf_counter()
            store.upsert(
                [
                    Passage(r.doc_id, r.passage, v, _sparse(bm25.embed_document(r.passage)) if bm25 else None, r.title)
                    for r, v in zip(chunk, vecs)
                ]
            )
            seconds["upsert"] += time.perf_counter() - t
        bar.close()
        t = time.perf_counter()
        store.finish()
        seconds["build"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t0
        return IndexReport(
            len(records), len(todo), len(records) - len(todo), store.count(), seconds, store.size_bytes()
        )
    except BaseException:
        if not existed:  # a new index that could not be filled is not left behind half-built
            store.drop()
            store = None
        raise
    finally:
        if store is not None:
            store.close()


@dataclass
class Result:
    query_id: str
    hits: list[Hit]
    timings_ms: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "hits": [{"id": h.id, "score": round(h.score, 6)} for h in self.hits],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }


@dataclass
class SearchOptions:
    top_k: int = 10
    hybrid: bool = False
    fusion: str = "rrf"
    depth: int = 100  # each prefetch's limit in hybrid search
    rerank_depth: int = 100
    exact: bool = False
    hnsw_ef: int | None = None
    rescore: bool | None = None
    oversampling: float | None = None
    ignore_quantization: bool = False
    with_text: bool = False  # the hits' texts (always fetched to rerank)


class Retriever:
    """Search one index with its own model: the index remembers which model and dimension built it."""

    def __init__(
        self,
        index: str | Path,
        *,
        url: str = c.DEFAULT_URL,
        gateway: str | None = None,
        qdrant_url: str | None = None,
        rerank: str | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.store: Store = open_store(index, qdrant_url=qdrant_url)
        self.spec = self.store.spec
        self.embedder = embedder or Embedder(self.spec.model, url=url, gateway=gateway)
        self.reranker = Reranker(rerank, url=url, gateway=gateway) if rerank else None
        self.bm25 = bm25_model() if self.spec.sparse == "bm25" else None

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        dims = self.spec.dimension if self.spec.dimension != self.embedder.dimension else None
        return self.embedder.embed(list(texts), QUERY, dimensions=dims, in_flight=1)

    def sparse_queries(self, texts: Sequence[str], opts: SearchOptions) -> list[tuple[list[int], list[float]] | None]:
        if not opts.hybrid:
            return [None] * len(texts)
        if self.bm25 is None:
            raise ValueError("hybrid search needs an index built with --sparse bm25")
        return [_sparse(self.bm25.embed_query(t)) for t in texts]

    def searches(self, vectors: np.ndarray, sparse: Sequence, opts: SearchOptions, limit: int) -> list[Search]:
        return [
            Search(
                v,
                limit=limit,
                sparse=sq,
                fusion=opts.fusion if sq is not None else None,
                depth=max(opts.depth, limit),
                exact=opts.exact,
                hnsw_ef=opts.hnsw_ef,
                rescore=opts.rescore,
                oversampling=opts.oversampling,
                ignore_quantization=opts.ignore_quantization,
                with_text=opts.with_text or self.reranker is not None,
            )
            for v, sq in zip(vectors, sparse)
        ]

    def search(self, query: str, opts: SearchOptions | None = None, query_id: str = "") -> Result:
        """One query, as a user sends it: embed, search, rerank, each timed."""
        opts = opts or SearchOptions()
        t0 = time.perf_counter()
        vec = self.embed_queries([query])
        sparse = self.sparse_queries([query], opts)  # Qdrant's BM25 query vector: part of the embed stage
        t1 = time.perf_counter()
        limit = opts.rerank_depth if self.reranker else opts.top_k
        hits = self.store.search(self.searches(vec, sparse, opts, limit))[0]
        t2 = time.perf_counter()
        timings = {"embed": (t1 - t0) * 1e3, "search": (t2 - t1) * 1e3, "rerank": 0.0}
        if self.reranker is not None and hits:
            scores = self.reranker.scores(query, [h.text or "" for h in hits])
            order = np.argsort(-scores, kind="stable")[: opts.top_k]
            hits = [Hit(hits[i].id, float(scores[i]), hits[i].text) for i in order]
            timings["rerank"] = (time.perf_counter() - t2) * 1e3
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return Result(query_id, hits[: opts.top_k], timings)

    def close(self) -> None:
        self.store.close()
        self.embedder.close()
        if self.reranker is not None:
            self.reranker.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
