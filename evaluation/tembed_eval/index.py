"""Documents in Qdrant, searched with exact cosine; an exact numpy search to check it against."""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass

import numpy as np
from qdrant_client import QdrantClient, models
from tqdm.auto import tqdm

Ranking = list[tuple[str, float]]  # (doc id, score), best first


def qdrant_client(url: str | None = None, path: str | None = None) -> QdrantClient:
    """A Qdrant server when ``url`` is given, else the embedded local mode (on disk at ``path``
    or in memory)."""
    if url:
        return QdrantClient(url=url)
    return QdrantClient(path=path) if path else QdrantClient(":memory:")


@dataclass
class VectorIndex:
    """One temporary collection; Qdrant point ids are row numbers, mapped back to doc ids."""

    client: QdrantClient
    doc_ids: list[str]
    name: str = ""
    batch_size: int = 256

    @classmethod
    def build(cls, client: QdrantClient, doc_ids: list[str], vectors: np.ndarray, label: str = "") -> VectorIndex:
        index = cls(client, list(doc_ids), f"tembed-eval-{uuid.uuid4().hex[:12]}")
        client.create_collection(
            index.name, vectors_config=models.VectorParams(size=vectors.shape[1], distance=models.Distance.COSINE)
        )
        bar = tqdm(total=len(doc_ids), desc=f"upsert {label}".strip(), unit="doc", leave=False)
        for start in range(0, len(doc_ids), index.batch_size):
            chunk = vectors[start : start + index.batch_size]
            ids = list(range(start, start + len(chunk)))
            client.upsert(index.name, points=models.Batch(ids=ids, vectors=chunk.tolist()), wait=True)
            bar.update(len(chunk))
        bar.close()
        return index

    def search(self, queries: np.ndarray, k: int = 10, batch: int = 64) -> list[Ranking]:
        # exact=True: a Qdrant server would otherwise answer from its HNSW graph once a collection
        # outgrows its full-scan threshold, and approximate results would blur the metrics.
        params = models.SearchParams(exact=True)
        out: list[Ranking] = []
        for start in range(0, len(queries), batch):
            requests = [
                models.QueryRequest(query=q.tolist(), limit=k, params=params, with_payload=False)
                for q in queries[start : start + batch]
            ]
            with warnings.catch_warnings():
                # Local mode says it ignores `exact`: it is always brute force.
                warnings.filterwarnings("ignore", message="Local mode performs exact")
                responses = self.client.query_batch_points(self.name, requests=requests)
            for response in responses:
                out.append([(self.doc_ids[int(p.id)], float(p.score)) for p in response.points])
        return out

    def drop(self) -> None:
        self.client.delete_collection(self.name)

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
