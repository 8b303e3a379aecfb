"""Documents in Qdrant's engine (``tembed_retrieval``: Qdrant Edge in-process, or a Qdrant server), searched
with exact cosine; an exact numpy search to check it against."""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tembed_retrieval.store import IndexSpec, Passage, Search, Store, open_store

Ranking = list[tuple[str, float]]  # (doc id, score), best first


@dataclass
class Stores:
    """Where the evaluation's temporary indexes live: directories of Qdrant Edge (under ``path``, else a temporary
    folder), or collections on the Qdrant server at ``url``. Never qdrant-client's local mode, which emulates
    Qdrant in Python and ignores HNSW and quantization."""

    url: str | None = None
    path: Path | None = None
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def engine(self) -> str:
        return f"Qdrant server {self.url}" if self.url else "Qdrant Edge (qdrant-edge-py, in-process)"

    def create(self, dimension: int, label: str = "", **spec: object) -> Store:
        name = f"tembed-eval-{uuid.uuid4().hex[:12]}"
        if self.url:
            return open_store(name, IndexSpec("eval", dimension, **spec), qdrant_url=self.url)
        if self.path is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="tembed-eval-")
            self.path = Path(self._tmp.name)
        return open_store(Path(self.path) / name, IndexSpec("eval", dimension, **spec))


def index_stores(url: str | None = None, path: str | Path | None = None) -> Stores:
    """A Qdrant server when ``url`` is given, else Qdrant Edge (on disk under ``path``, or a temporary folder)."""
    return Stores(url, Path(path) if path else None)


def fill(store: Store, doc_ids: list[str], vectors: np.ndarray, label: str = "", batch: int = 256) -> Store:
    bar = tqdm(total=len(doc_ids), desc=f"upsert {label}".strip(), unit="doc", leave=False)
    for start in range(0, len(doc_ids), batch):
        chunk = vectors[start : start + batch]
        store.upsert([Passage(d, "", v) for d, v in zip(doc_ids[start : start + batch], chunk)])
        bar.update(len(chunk))
    bar.close()
    store.finish()
    return store


@dataclass
class VectorIndex:
    """One temporary index of ``doc_ids``; searched exactly (full scan) unless asked otherwise."""

    store: Store
    doc_ids: list[str]

    @classmethod
    def build(cls, stores: Stores, doc_ids: list[str], vectors: np.ndarray, label: str = "", **spec) -> VectorIndex:
        return cls(fill(stores.create(vectors.shape[1], label, **spec), list(doc_ids), vectors, label), list(doc_ids))

    def search(self, queries: np.ndarray, k: int = 10, batch: int = 64, exact: bool = True, **params) -> list[Ranking]:
        # exact=True: a segment over the full-scan threshold would otherwise be answered from its HNSW graph,
        # and approximate results would blur the metrics.
        out: list[Ranking] = []
        for start in range(0, len(queries), batch):
            hits = self.store.search(
                [Search(q, limit=k, exact=exact, **params) for q in queries[start : start + batch]]
            )
            out += [[(h.id, h.score) for h in r] for r in hits]
        return out

    def drop(self) -> None:
        self.store.drop()

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()


def exact_search(queries: np.ndarray, docs: np.ndarray, doc_ids: list[str], k: int = 10) -> list[Ranking]:
    """Brute-force cosine top-k in numpy (rows are unit length)."""
    scores = queries.astype(np.float64) @ docs.astype(np.float64).T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(doc_ids[j], float(row[j])) for j in idx] for row, idx in zip(scores, top)]


def rankings_agree(got: Ranking, want: Ranking, exact_scores: dict[str, float], tol: float = 1e-5) -> bool:
    """Same ids at every rank, except where the two ids' exact scores tie (within ``tol``,
    float32 rounding in the index) and may come in either order."""
    if len(got) != len(want):
        return False
    for (gid, gscore), (wid, _) in zip(got, want):
        if gid not in exact_scores or abs(gscore - exact_scores[gid]) > tol:
            return False  # the index's score is not the document's true cosine
        if gid != wid and abs(exact_scores[gid] - exact_scores[wid]) > tol:
            return False
    return True


def cross_check(index: VectorIndex, queries: np.ndarray, docs: np.ndarray) -> tuple[int, int]:
    """(queries checked, queries whose Qdrant ranking disagrees with exact numpy search)."""
    got = index.search(queries)
    want = exact_search(queries, docs, index.doc_ids)
    all_scores = queries.astype(np.float64) @ docs.astype(np.float64).T
    bad = 0
    for g, w, row in zip(got, want, all_scores):
        scores = {index.doc_ids[j]: float(row[j]) for j in range(len(row))}
        bad += not rankings_agree(g, w, scores)
    return len(queries), bad
