"""The retrieval stores on the real engine (Qdrant Edge in-process; a Qdrant server when TEMBED_QDRANT_URL names
one), on small synthetic corpora: no tritonserver. The same tests run against both stores through the one
``Store`` interface; the corpus readers' refusals; an index refusing another model or dimension unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from tembed_retrieval.corpus import CorpusError, read_corpus, read_queries
from tembed_retrieval.retrieve import bm25_model
from tembed_retrieval.store import (
    RRF_K,
    EdgeStore,
    IndexSpec,
    Passage,
    RetrievalError,
    Search,
    open_store,
    server_request,
)

QDRANT_URL = os.environ.get("TEMBED_QDRANT_URL")
NO_SERVER = (
    "no Qdrant server here: it is not on PyPI and this machine runs no containers; "
    "set TEMBED_QDRANT_URL=http://host:6333 to run the same tests against one"
)
N, D = 600, 48
WORDS = ["apple", "banana", "cherry", "delta", "echo", "falcon", "garnet", "harbor", "island", "jungle"]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(7)
    docs = unit(rng.standard_normal((N, D)))
    texts = [f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]} passage number {i}" for i in range(N)]
    queries = unit(docs[:40] + 0.4 * rng.standard_normal((40, D)) / np.sqrt(D))
    return [f"doc-{i}" for i in range(N)], texts, docs, queries


@pytest.fixture(params=["edge", "server"])
def make_store(request, tmp_path):
    made = []

    def make(spec: IndexSpec | None = None, name: str = "ix"):
        if request.param == "server":
            if not QDRANT_URL:
                pytest.skip(NO_SERVER)
            store = open_store(f"tembed-test-{name}-{uuid.uuid4().hex[:8]}", spec, qdrant_url=QDRANT_URL)
        else:
            store = open_store(tmp_path / name, spec)
        made.append(store)
        return store

    yield make
    for s in made:
        s.drop() if request.param == "server" else s.close()


def fill(store, corpus, sparse=False):
    ids, texts, docs, _ = corpus
    bm25 = bm25_model() if sparse else None
    vec = (lambda t: (list((v := bm25.embed_document(t)).indices), list(v.values))) if sparse else (lambda t: None)
    store.upsert([Passage(i, t, d, vec(t)) for i, t, d in zip(ids, texts, docs)])
    store.finish()


def exact_top(corpus, k):
    ids, _, docs, queries = corpus
    order = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order]


def test_index_then_search_returns_the_nearest_ids(make_store, corpus):
    store = make_store(IndexSpec("m", D, full_scan_threshold_kb=1))  # HNSW searched, not a full scan
    fill(store, corpus)
    assert store.count() == N
    want = exact_top(corpus, 10)
    got = store.search([Search(q, limit=10, with_text=True) for q in corpus[3]])
    assert [r[0].id for r in got] == [w[0] for w in want]
    assert np.mean([len({h.id for h in g} & set(w)) / 10 for g, w in zip(got, want)]) >= 0.95
    texts = dict(zip(corpus[0], corpus[1]))
    assert all(h.text == texts[h.id] for h in got[0])
    exact = store.search([Search(q, limit=10, exact=True) for q in corpus[3]])
    assert [[h.id for h in r] for r in exact] == want


def test_hybrid_rrf_equals_reference_fusion(make_store, corpus):
    store = make_store(IndexSpec("m", D, sparse="bm25"))
    fill(store, corpus, sparse=True)
    bm25, depth = bm25_model(), 30
    for qi in range(5):
        q, text = corpus[3][qi], f"{WORDS[qi]} {WORDS[(qi + 3) % 10]}"
        sq = bm25.embed_query(text)
        sparse = (list(sq.indices), list(sq.values))
        dense_list = store.search([Search(q, limit=depth)])[0]
        sparse_list = store.search([Search(None, limit=depth, sparse=sparse)])[0]
        assert sparse_list and set(text.split()) & set(corpus[1][int(sparse_list[0].id.split("-")[1])].split())
        reference: dict[str, float] = {}
        for ranking in (dense_list, sparse_list):
            for rank, hit in enumerate(ranking):  # Qdrant's RRF: 1 / (k + rank), ranks from 0
                reference[hit.id] = reference.get(hit.id, 0.0) + 1.0 / (RRF_K + rank)
        fused = store.search([Search(q, limit=10, sparse=sparse, fusion="rrf", depth=depth)])[0]
        assert len(fused) == 10
        for hit in fused:
            assert hit.score == pytest.approx(reference[hit.id], rel=1e-5)
        best = sorted(reference.values(), reverse=True)[:10]
        assert [h.score for h in fused] == pytest.approx(best, rel=1e-5)
        dbsf = store.search([Search(q, limit=10, sparse=sparse, fusion="dbsf", depth=depth)])[0]
        assert {h.id for h in dbsf} <= {h.id for h in dense_list} | {h.id for h in sparse_list}


@pytest.mark.parametrize("quantization", ["int8", "binary"])
def test_quantized_search_with_rescoring_returns_float_top_hits(make_store, corpus, quantization):
    store = make_store(IndexSpec("m", D, quantization=quantization, full_scan_threshold_kb=1))
    fill(store, corpus)
    want = exact_top(corpus, 10)
    queries = corpus[3]
    rescored = store.search([Search(q, limit=10, rescore=True, oversampling=8.0) for q in queries])
    plain = store.search([Search(q, limit=10, rescore=False) for q in queries])
    assert [r[0].id for r in rescored] == [w[0] for w in want]
    overlap = [len({h.id for h in r} & set(w)) / 10 for r, w in zip(rescored, want)]
    overlap_plain = [len({h.id for h in r} & set(w)) / 10 for r, w in zip(plain, want)]
    # 1-bit codes of 48 random dimensions are a coarse filter: binary keeps the top hit, not the whole top 10.
    assert np.mean(overlap) >= (0.9 if quantization == "int8" else 0.6)
    assert np.mean(overlap) > np.mean(overlap_plain)
    # Rescored scores are the float cosines; the quantized ones are not (the engine really quantized).
    ids, _, docs, _ = corpus
    cos = {i: float(queries[0] @ d) for i, d in zip(ids, docs)}
    assert all(h.score == pytest.approx(cos[h.id], abs=1e-4) for h in rescored[0])
    assert any(abs(h.score - cos[h.id]) > 1e-3 for h in plain[0])


def test_upserting_the_same_passages_again_is_idempotent(make_store, corpus):
    store = make_store(IndexSpec("m", D))
    fill(store, corpus)
    before = store.search([Search(q, limit=10) for q in corpus[3][:5]])
    fill(store, corpus)
    assert store.count() == N
    assert store.search([Search(q, limit=10) for q in corpus[3][:5]]) == before
    assert len(store.fingerprints()) == N


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    "other",
    [IndexSpec("other-model", D), IndexSpec("m", D // 2), IndexSpec("m", D, quantization="binary")],
    ids=["model", "dimension", "quantization"],
)
def test_index_built_with_another_model_or_dimension_is_refused_unchanged(tmp_path, corpus, other):
    store = EdgeStore.open(tmp_path / "ix", IndexSpec("m", D))
    fill(store, corpus)
    store.close()
    digest = tree_digest(tmp_path / "ix")
    field = other.mismatch(IndexSpec("m", D))[0].split()[0]
    with pytest.raises(RetrievalError, match=f"built with {field}"):
        EdgeStore.open(tmp_path / "ix", other)
    assert tree_digest(tmp_path / "ix") == digest
    with EdgeStore.open(tmp_path / "ix") as again:  # and it still opens and answers
        assert again.count() == N and again.spec == IndexSpec("m", D)


def test_a_folder_that_is_not_an_index_is_not_written_into(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RetrievalError, match="not an index"):
        EdgeStore.open(tmp_path, IndexSpec("m", D))
    with pytest.raises(RetrievalError, match="tembed index"):
        EdgeStore.open(tmp_path / "missing")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_server_requests_are_the_edge_queries(corpus):
    """What can be checked of the server path without a server: the qdrant-client requests it sends are valid
    models carrying the same search (the same named vectors, fusion, quantization parameters)."""
    from qdrant_client import models

    from tembed_retrieval.store import server_collection_config

    q = corpus[3][0]
    hybrid = server_request(Search(q, limit=7, sparse=([1, 5], [1.0, 1.0]), fusion="rrf", depth=40, rescore=True))
    assert isinstance(hybrid, models.QueryRequest) and hybrid.limit == 7
    assert [p.using for p in hybrid.prefetch] == ["dense", "bm25"] and {p.limit for p in hybrid.prefetch} == {40}
    assert hybrid.query.rrf.k == RRF_K and hybrid.prefetch[0].params.quantization.rescore is True
    cfg = server_collection_config(IndexSpec("m", D, quantization="int8", sparse="bm25"))
    assert cfg["vectors_config"]["dense"].size == D and cfg["metadata"]["tembed"]["model"] == "m"
    assert cfg["quantization_config"].scalar.type == models.ScalarType.INT8
    with pytest.raises(RetrievalError, match="server URL"):
        open_store("c", IndexSpec("m", D), qdrant_url="localhost")  # never qdrant-client's local mode


# --- corpora ------------------------------------------------------------------------------------------------


def write(path: Path, lines: list) -> Path:
    path.write_text("".join((json.dumps(x, ensure_ascii=False) if not isinstance(x, str) else x) + "\n" for x in lines))
    return path


def test_beir_and_plain_text_corpora(tmp_path):
    beir = write(tmp_path / "corpus.jsonl", [{"_id": 1, "title": "T", "text": "body"}, {"_id": "b", "text": "二"}])
    records = read_corpus([beir])
    assert [(r.doc_id, r.passage) for r in records] == [("1", "T body"), ("b", "二")]
    (tmp_path / "notes.txt").write_text("first line\n\nsecond line\n")
    assert [r.doc_id for r in read_corpus([tmp_path / "notes.txt"])] == ["notes:1", "notes:3"]
    assert [r.doc_id for r in read_corpus([tmp_path])] == ["1", "b"]  # a BEIR folder: its corpus.jsonl
    assert read_queries(write(tmp_path / "q.jsonl", [{"_id": "q1", "text": "why"}])) == {"q1": "why"}


@pytest.mark.parametrize(
    "lines, message",
    [
        ([{"title": "t", "text": "x"}], "without an _id"),
        ([{"_id": "a", "text": "  "}], "empty text"),
        (["not json"], "not a JSON line"),
        ([["a", "b"]], "is an object"),
        ([{"_id": "a", "text": "x"}, {"_id": "a", "text": "y"}], "appears twice"),
    ],
)
def test_bad_corpus_records_are_refused_with_where(tmp_path, lines, message):
    path = write(tmp_path / "corpus.jsonl", lines)
    with pytest.raises(CorpusError, match=message):
        read_corpus([path])


def test_unknown_format_is_refused(tmp_path):
    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        read_corpus([tmp_path / "c.parquet"])
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CorpusError, match="not UTF-8"):
        read_corpus([tmp_path / "c.txt"])
