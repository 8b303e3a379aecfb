"""One interface over two Qdrant stores: Qdrant Edge (the engine in-process, a directory) and a Qdrant server
(``qdrant-client`` over a URL). Both run Qdrant's own engine: HNSW, quantization with rescoring, sparse vectors
with IDF, prefetch + fusion. What an index is (model, dimension, quantization, ...) is an ``IndexSpec`` kept
with the data, so a search or a re-index with another model is refused before anything is written."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

DENSE = "dense"  # the named vectors of every index
SPARSE = "bm25"
QUANTIZATIONS = ("none", "int8", "binary")
SPARSE_KINDS = ("bm25",)  # the model's own sparse output (bge-m3) joins here: IndexSpec.sparse = its name
FUSIONS = ("rrf", "dbsf")
RRF_K = 60  # the usual constant of reciprocal rank fusion (Cormack et al. 2009)
SPEC_FILE = "tembed-index.json"
REBUILDABLE = ("hnsw_m", "hnsw_ef_construct", "full_scan_threshold_kb")  # IndexSpec fields a re-index may change
SHARD_DIR = "shard"
ID_NAMESPACE = uuid.UUID("5d0c1f7e-3b7a-4e55-9a53-2f1c7a0b6e11")  # doc id -> point id, stable across runs


class RetrievalError(ValueError):
    """An index that cannot take this request (another model or dimension, a missing index)."""


@dataclass(frozen=True)
class IndexSpec:
    """What the vectors of an index are; compared field by field on every open."""

    model: str
    dimension: int
    quantization: str = "none"
    sparse: str | None = None  # "bm25": Qdrant's BM25 text vectors beside the dense ones
    multivector: str | None = None  # hook for a model's multi-vector output (bge-m3 colbert); not built here
    long_text: str | None = None  # how passages longer than the model's window were embedded
    hnsw_m: int = 16  # Qdrant's defaults
    hnsw_ef_construct: int = 100
    full_scan_threshold_kb: int = 10_000  # segments smaller than this are searched exactly, as Qdrant does

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {self.quantization!r}")
        if self.sparse is not None and self.sparse not in SPARSE_KINDS:
            raise ValueError(f"sparse must be one of {', '.join(SPARSE_KINDS)}, not {self.sparse!r}")

    def mismatch(self, other: IndexSpec) -> list[str]:
        """The fields that make ``other`` a different index (HNSW parameters may change on re-index)."""
        keys = [f.name for f in fields(self) if f.name not in REBUILDABLE]
        return [
            f"{k} {getattr(self, k)!r} (asked: {getattr(other, k)!r})"
            for k in keys
            if getattr(self, k) != getattr(other, k)
        ]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Passage:
    """One indexed record: its id, its text (what a reranker reads) and its vectors."""

    doc_id: str
    text: str
    dense: np.ndarray
    sparse: tuple[list[int], list[float]] | None = None
    title: str = ""


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str | None = None


@dataclass(frozen=True)
class Search:
    """One query. ``sparse`` with ``fusion`` = hybrid: dense and sparse top ``depth`` each, fused by Qdrant;
    ``sparse`` alone (``dense`` None) = BM25 only."""

    dense: np.ndarray | None
    limit: int = 10
    sparse: tuple[list[int], list[float]] | None = None
    fusion: str | None = None  # "rrf" | "dbsf"
    depth: int = 100  # each prefetch's limit in a hybrid search
    exact: bool = False  # full scan, no HNSW (the reference for recall)
    hnsw_ef: int | None = None
    rescore: bool | None = None  # quantized indexes: rescore the candidates with the original vectors
    oversampling: float | None = None
    ignore_quantization: bool = False
    with_text: bool = False


def point_id(doc_id: str) -> str:
    """A stable UUID per document id: re-indexing a corpus overwrites its points instead of adding copies."""
    return str(uuid.uuid5(ID_NAMESPACE, doc_id))


def check_search(search: Search) -> None:
    if search.fusion is not None and search.fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, not {search.fusion!r}")
    if search.fusion and (search.sparse is None or search.dense is None):
        raise ValueError("a fused (hybrid) search needs the query's dense and sparse vectors: index with --sparse bm25")
    if search.dense is None and search.sparse is None:
        raise ValueError("a search needs a dense or a sparse query vector")


class Store(Protocol):
    """What an index does, whichever engine holds it."""

    spec: IndexSpec

    def upsert(self, passages: Sequence[Passage]) -> None: ...
    def finish(self) -> None: ...  # build what is built after the upserts (HNSW, quantized vectors)
    def search(self, searches: Sequence[Search]) -> list[list[Hit]]: ...
    def count(self) -> int: ...
    def fingerprints(self) -> dict[str, str]: ...  # doc id -> hash of the passage it was embedded from
    def size_bytes(self) -> dict[str, int]: ...
    def close(self) -> None: ...
    def drop(self) -> None: ...


def fingerprint(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _payload(p: Passage) -> dict[str, Any]:
    return {"doc_id": p.doc_id, "text": p.text, "hash": fingerprint(p.text), **({"title": p.title} if p.title else {})}


def _hit(point: Any, with_text: bool) -> Hit:
    payload = point.payload or {}
    return Hit(str(payload["doc_id"]), float(point.score), payload.get("text") if with_text else None)


# --- Qdrant Edge ------------------------------------------------------------------------------------------


class EdgeStore:
    """Qdrant's engine in this process (``qdrant-edge-py``): the index is a directory holding the shard and the
    spec. HNSW and quantized vectors are built by ``finish()`` (the shard's optimizers run in-process)."""

    def __init__(self, path: Path, spec: IndexSpec, shard: Any) -> None:
        self.path, self.spec, self._shard = Path(path), spec, shard

    @staticmethod
    def read_spec(path: Path) -> IndexSpec | None:
        file = Path(path) / SPEC_FILE
        return IndexSpec.from_json(json.loads(file.read_text(encoding="utf-8"))) if file.exists() else None

    @classmethod
    def open(cls, path: Path, spec: IndexSpec | None = None, *, threads: int | None = None) -> EdgeStore:
        """An existing index (``spec`` None, or the spec it must match), or a new one when ``spec`` is given."""
        import qdrant_edge as qe

        path = Path(path)
        have = cls.read_spec(path)
        if have is None:
            if spec is None:
                raise RetrievalError(f"{path} is not an index (no {SPEC_FILE}): build it with `tembed index`")
            if path.exists() and any(path.iterdir()):
                raise RetrievalError(f"{path} exists and is not an index: refusing to write into it")
            path.mkdir(parents=True, exist_ok=True)
            shard = qe.EdgeShard.create(str(path / SHARD_DIR), cls._config(spec, threads))
            (path / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=1) + "\n", encoding="utf-8")
            return cls(path, spec, shard)
        if spec is not None and (diff := have.mismatch(spec)):
            raise RetrievalError(f"{path} was built with {', '.join(diff)}: use another --index or the same options")
        return cls(path, have, qe.EdgeShard.load(str(path / SHARD_DIR)))

    @staticmethod
    def _config(spec: IndexSpec, threads: int | None) -> Any:
        import qdrant_edge as qe

        quant = {
            "none": None,
            "int8": qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True),
            "binary": qe.BinaryQuantizationConfig(always_ram=True),
        }[spec.quantization]
        sparse = {SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if spec.sparse else None
        return qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=spec.dimension, distance=qe.Distance.Cosine)},
            sparse_vectors=sparse,
            hnsw_config=qe.HnswIndexConfig(
                m=spec.hnsw_m, ef_construct=spec.hnsw_ef_construct, full_scan_threshold=spec.full_scan_threshold_kb
            ),
            quantization_config=quant,
            # Index every segment at finish(), whatever its size: a CLI index is built once and searched often.
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1, default_segment_number=1),
            max_search_threads=threads,
        )

    def upsert(self, passages: Sequence[Passage]) -> None:
        import qdrant_edge as qe

        points = []
        for p in passages:
            vector: dict[str, Any] = {DENSE: np.asarray(p.dense, dtype=np.float32).tolist()}
            if self.spec.sparse and p.sparse is not None:
                vector[SPARSE] = qe.SparseVector(*p.sparse)
            points.append(qe.Point(id=point_id(p.doc_id), vector=vector, payload=_payload(p)))
        if points:
            self._shard.update(qe.UpdateOperation.upsert_points(points))

    def finish(self) -> None:
        self._shard.optimize()
        self._shard.flush()

    def _request(self, s: Search) -> Any:
        import qdrant_edge as qe

        check_search(s)
        quant = None
        if s.rescore is not None or s.oversampling is not None or s.ignore_quantization:
            quant = qe.QuantizationSearchParams(
                ignore=s.ignore_quantization, rescore=s.rescore, oversampling=s.oversampling
            )
        params = qe.SearchParams(hnsw_ef=s.hnsw_ef, exact=s.exact, quantization=quant)
        payload = ["doc_id", "text"] if s.with_text else ["doc_id"]
        sparse = qe.Query.Nearest(qe.SparseVector(*s.sparse), using=SPARSE) if s.sparse is not None else None
        if s.dense is None:
            return qe.QueryRequest(limit=s.limit, query=sparse, with_payload=payload)
        dense = qe.Query.Nearest(np.asarray(s.dense, dtype=np.float32).tolist(), using=DENSE)
        if not s.fusion:
            return qe.QueryRequest(limit=s.limit, query=dense, params=params, with_payload=payload)
        fusion = qe.Fusion.Rrf(k=RRF_K) if s.fusion == "rrf" else qe.Fusion.Dbsf()
        prefetches = [
            qe.Prefetch(limit=s.depth, query=dense, params=params),
            qe.Prefetch(limit=s.depth, query=sparse),
        ]
        return qe.QueryRequest(limit=s.limit, query=fusion, prefetches=prefetches, with_payload=payload)

    def search(self, searches: Sequence[Search]) -> list[list[Hit]]:
        import qdrant_edge as qe

        if not searches:
            return []
        results = self._shard.query_batch(qe.QueryBatchRequest([self._request(s) for s in searches]))
        return [[_hit(p, s.with_text) for p in points] for s, points in zip(searches, results)]

    def count(self) -> int:
        return int(self._shard.info().points_count)

    def fingerprints(self) -> dict[str, str]:
        import qdrant_edge as qe

        out: dict[str, str] = {}
        offset = None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=1000, with_payload=["doc_id", "hash"])
            records, offset = self._shard.scroll(request)
            out.update((str(r.payload["doc_id"]), r.payload.get("hash", "")) for r in records)
            if offset is None:
                return out

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Every stored dense vector with its doc id (to build variants of an index without re-embedding)."""
        import qdrant_edge as qe

        ids, rows, offset = [], [], None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=1000, with_payload=["doc_id"], with_vector=[DENSE])
            records, offset = self._shard.scroll(request)
            for r in records:
                ids.append(str(r.payload["doc_id"]))
                rows.append(r.vector[DENSE])
            if offset is None:
                return ids, np.asarray(rows, dtype=np.float32).reshape(len(ids), self.spec.dimension)

    def size_bytes(self) -> dict[str, int]:
        """On disk: blocks allocated to the shard (Qdrant preallocates its WAL and payload pages sparsely, so file
        sizes overstate it). Resident (what Qdrant keeps in RAM to search): the quantized vectors when there are
        some (the originals are read only to rescore), else the float vectors; plus the HNSW graph."""
        files = [f for f in (self.path / SHARD_DIR).rglob("*") if f.is_file()]
        disk = sum(f.stat().st_blocks * 512 for f in files)
        dense = [f for f in files if f.parent.name == f"vector_storage-{DENSE}"]
        quantized = sum(f.stat().st_size for f in dense if f.name == "quantized.data")
        floats = sum(f.stat().st_size for f in dense if f.name.startswith("matrix"))
        graph = sum(f.stat().st_size for f in files if f.parent.name == f"vector_index-{DENSE}")
        resident = (quantized or floats) + graph
        return {
            "disk": disk,
            "vectors_float": floats,
            "vectors_quantized": quantized,
            "hnsw": graph,
            "resident": resident,
        }

    def close(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None

    def drop(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- a Qdrant server ---------------------------------------------------------------------------------------


@dataclass
class ServerStore:
    """A collection on a Qdrant server (one node or a cluster) through ``qdrant-client``: the same engine behind
    a URL. The spec lives in the collection's metadata. Never qdrant-client's local mode (a pure-Python
    emulation that ignores HNSW and quantization)."""

    client: Any
    collection: str
    spec: IndexSpec
    batch: int = field(default=256)

    @classmethod
    def open(cls, url: str, collection: str, spec: IndexSpec | None = None) -> ServerStore:
        from qdrant_client import QdrantClient

        if not url or "://" not in url:
            raise RetrievalError(f"--qdrant-url must be a server URL such as http://localhost:6333, not {url!r}")
        client = QdrantClient(url=url)
        if client.collection_exists(collection):
            meta = client.get_collection(collection).config.metadata or {}
            if "tembed" not in meta:
                raise RetrievalError(f"collection {collection!r} on {url} is not a tembed index")
            have = IndexSpec.from_json(meta["tembed"])
            if spec is not None and (diff := have.mismatch(spec)):
                raise RetrievalError(f"collection {collection!r} was built with {', '.join(diff)}")
            return cls(client, collection, have)
        if spec is None:
            raise RetrievalError(f"no collection {collection!r} on {url}: build it with `tembed index`")
        client.create_collection(collection, **server_collection_config(spec))
        return cls(client, collection, spec)

    def upsert(self, passages: Sequence[Passage]) -> None:
        from qdrant_client import models

        points = []
        for p in passages:
            vector: dict[str, Any] = {DENSE: np.asarray(p.dense, dtype=np.float32).tolist()}
            if self.spec.sparse and p.sparse is not None:
                vector[SPARSE] = models.SparseVector(indices=p.sparse[0], values=p.sparse[1])
            points.append(models.PointStruct(id=point_id(p.doc_id), vector=vector, payload=_payload(p)))
        for start in range(0, len(points), self.batch):
            self.client.upsert(self.collection, points=points[start : start + self.batch], wait=True)

    def finish(self) -> None:
        pass  # the server's optimizers index in the background

    def search(self, searches: Sequence[Search]) -> list[list[Hit]]:
        if not searches:
            return []
        responses = self.client.query_batch_points(self.collection, requests=[server_request(s) for s in searches])
        return [[_hit(p, s.with_text) for p in r.points] for s, r in zip(searches, responses)]

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def fingerprints(self) -> dict[str, str]:
        out: dict[str, str] = {}
        offset = None
        while True:
            records, offset = self.client.scroll(
                self.collection, limit=1000, offset=offset, with_payload=["doc_id", "hash"]
            )
            out.update((str(r.payload["doc_id"]), r.payload.get("hash", "")) for r in records)
            if offset is None:
                return out

    def size_bytes(self) -> dict[str, int]:
        return {}  # not visible through the API

    def close(self) -> None:
        self.client.close()

    def drop(self) -> None:
        self.client.delete_collection(self.collection)
        self.close()

    def __enter__(self) -> ServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def server_collection_config(spec: IndexSpec) -> dict[str, Any]:
    """``create_collection`` keyword arguments for ``spec``: the same index as ``EdgeStore._config``."""
    from qdrant_client import models

    quant = {
        "none": None,
        "int8": models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
        ),
        "binary": models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True)),
    }[spec.quantization]
    return {
        "vectors_config": {DENSE: models.VectorParams(size=spec.dimension, distance=models.Distance.COSINE)},
        "sparse_vectors_config": {SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)}
        if spec.sparse
        else None,
        "hnsw_config": models.HnswConfigDiff(
            m=spec.hnsw_m, ef_construct=spec.hnsw_ef_construct, full_scan_threshold=spec.full_scan_threshold_kb
        ),
        "quantization_config": quant,
        "metadata": {"tembed": spec.to_json()},
    }


def server_request(s: Search) -> Any:
    """The ``QueryRequest`` a server gets for ``s``: the same query as ``EdgeStore._request``."""
    from qdrant_client import models

    check_search(s)
    quant = None
    if s.rescore is not None or s.oversampling is not None or s.ignore_quantization:
        quant = models.QuantizationSearchParams(
            ignore=s.ignore_quantization, rescore=s.rescore, oversampling=s.oversampling
        )
    params = models.SearchParams(hnsw_ef=s.hnsw_ef, exact=s.exact, quantization=quant)
    payload = ["doc_id", "text"] if s.with_text else ["doc_id"]
    sparse = models.SparseVector(indices=s.sparse[0], values=s.sparse[1]) if s.sparse is not None else None
    if s.dense is None:
        return models.QueryRequest(query=sparse, using=SPARSE, limit=s.limit, with_payload=payload)
    dense = np.asarray(s.dense, dtype=np.float32).tolist()
    if not s.fusion:
        return models.QueryRequest(query=dense, using=DENSE, limit=s.limit, params=params, with_payload=payload)
    fusion = (
        models.RrfQuery(rrf=models.Rrf(k=RRF_K)) if s.fusion == "rrf" else models.FusionQuery(fusion=models.Fusion.DBSF)
    )
    prefetch = [
        models.Prefetch(query=dense, using=DENSE, limit=s.depth, params=params),
        models.Prefetch(query=sparse, using=SPARSE, limit=s.depth),
    ]
    return models.QueryRequest(prefetch=prefetch, query=fusion, limit=s.limit, with_payload=payload)


def open_store(
    index: str | Path, spec: IndexSpec | None = None, *, qdrant_url: str | None = None, threads: int | None = None
) -> Store:
    """``index`` is a directory (Qdrant Edge), or a collection name on ``qdrant_url``."""
    if qdrant_url:
        return ServerStore.open(qdrant_url, str(index), spec)
    return EdgeStore.open(Path(index), spec, threads=threads)
