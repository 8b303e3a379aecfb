"""``tembed index`` / ``tembed search`` end to end: CMRC2018 paragraphs embedded by the served e5 (a real
tritonserver) into Qdrant Edge, Chinese questions answered by their own paragraph; re-indexing is idempotent;
an index refuses another model or dimension and a bad corpus, unchanged; two-stage search with a served reranker."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tembed_client import EmbeddingClient
from tembed_eval.beir import write_beir
from tembed_eval.data import DEFAULT_DATA, load_cmrc
from tembed_retrieval.cli import main as retrieval_cli
from tembed_retrieval.corpus import read_corpus
from tembed_retrieval.models import Embedder
from tembed_retrieval.retrieve import Retriever, SearchOptions, build_index
from tembed_retrieval.store import IndexSpec

from .conftest import EMBEDDER, QWEN
from .test_retrieval_store import tree_digest

QUESTIONS = 40  # the first questions of CMRC2018 dev and their paragraphs (~10)


@pytest.fixture(scope="module")
def cmrc(tmp_path_factory):
    task = load_cmrc(DEFAULT_DATA, QUESTIONS)
    return task, write_beir(task, tmp_path_factory.mktemp("beir") / "cmrc2018")


@pytest.fixture(scope="module")
def built(server, cmrc, tmp_path_factory):
    _, folder = cmrc
    index = tmp_path_factory.mktemp("ix") / "cmrc"
    argv = ["index", str(folder / "corpus.jsonl"), "--index", str(index), "--model", EMBEDDER, "--url", server.grpc_url]
    assert retrieval_cli([*argv, "--sparse", "bm25"]) == 0
    return index, argv


def test_indexed_paragraphs_answer_their_questions(server, cmrc, built):
    task, _ = cmrc
    index, _ = built
    with Retriever(index, url=server.grpc_url) as r:
        assert r.spec.model == EMBEDDER and r.store.count() == len(task.corpus)
        for hybrid in (False, True):
            ranks = []
            for qid, text in task.queries.items():
                hits = r.search(text, SearchOptions(top_k=5, hybrid=hybrid)).hits
                (gold,) = task.qrels[qid]
                ranks.append([h.id for h in hits].index(gold) if gold in [h.id for h in hits] else 99)
            assert np.mean(np.asarray(ranks) == 0) >= 0.8 and max(ranks) < 5, (hybrid, ranks)


def test_search_cli_json_lines(server, cmrc, built, capsys):
    task, folder = cmrc
    index, _ = built
    capsys.readouterr()
    argv = ["search", "--index", str(index), "--url", server.grpc_url, "--queries", str(folder / "queries.jsonl")]
    assert retrieval_cli([*argv, "--json", "--top-k", "3", "--hybrid"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["query_id"] for x in lines] == list(task.queries)
    for x in lines:
        assert len(x["hits"]) == 3 and set(x["hits"][0]) == {"id", "score"}
        assert set(x["timings_ms"]) == {"embed", "search", "rerank", "total"} and x["timings_ms"]["rerank"] == 0
        assert all(h["id"] in task.corpus for h in x["hits"])
    assert retrieval_cli(["search", "北京", "--index", str(index), "--url", server.grpc_url, "--show-text"]) == 0
    assert "embed" in capsys.readouterr().out


def test_reindex_is_idempotent_and_replaces_changed_passages(server, cmrc, tmp_path):
    _, folder = cmrc
    records = read_corpus([folder / "corpus.jsonl"])
    index = tmp_path / "ix"
    embedder = Embedder(EMBEDDER, url=server.grpc_url)
    try:
        spec = IndexSpec(EMBEDDER, embedder.dimension)
        first = build_index(records, index, spec, embedder, progress=False)
        assert (first.embedded, first.unchanged, first.points) == (len(records), 0, len(records))
        with Retriever(index, url=server.grpc_url) as r:
            before = [r.search(rec.text[:30]).hits for rec in records[:3]]
        again = build_index(records, index, spec, embedder, progress=False)
        assert (again.embedded, again.unchanged, again.points) == (0, len(records), len(records))
        changed = [records[0].__class__(records[0].doc_id, "北京是中华人民共和国的首都。"), *records[1:]]
        third = build_index(changed, index, spec, embedder, progress=False)
        assert (third.embedded, third.points) == (1, len(records))
        with Retriever(index, url=server.grpc_url) as r:
            after = [r.search(rec.text[:30]).hits for rec in records[1:3]]
            (top,) = r.search("中国的首都是哪里？", SearchOptions(top_k=1, with_text=True)).hits

        def others(hits):  # the unchanged passages keep their vectors, so their scores and order
            return [h for h in hits if h.id != records[0].doc_id][:5]

        assert [others(h) for h in after] == [others(h) for h in before[1:]]
        assert (top.id, top.text) == (records[0].doc_id, changed[0].text)
    finally:
        embedder.close()


def test_other_model_dimension_or_bad_corpus_leave_the_index_unchanged(server, cmrc, built, tmp_path, capsys):
    _, folder = cmrc
    index, argv = built
    digest = tree_digest(index)
    with pytest.raises(SystemExit, match="built with dimension 384"):
        retrieval_cli([*argv, "--sparse", "bm25", "--dimensions", "128"])
    with pytest.raises(SystemExit, match="built with model"):
        retrieval_cli([*argv[:4], "--model", "all-minilm-l6-v2", "--url", server.grpc_url, "--sparse", "bm25"])
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"_id": "x", "text": "ok"}\n{"text": "no id"}\n')
    with pytest.raises(SystemExit, match="corpus.jsonl:2: record without an _id"):
        retrieval_cli(["index", str(bad), *argv[2:], "--sparse", "bm25"])
    assert tree_digest(index) == digest


def test_two_stage_search_reranks_the_dense_top(rerank_server, cmrc, tmp_path):
    task, folder = cmrc
    index = tmp_path / "ix"
    url = rerank_server.grpc_url
    assert (
        retrieval_cli(["index", str(folder / "corpus.jsonl"), "--index", str(index), "--model", EMBEDDER, "--url", url])
        == 0
    )
    question = next(iter(task.queries.values()))
    with Retriever(index, url=url) as dense:  # Qdrant Edge holds its directory exclusively: one at a time
        top = dense.search(question, SearchOptions(top_k=8, with_text=True)).hits
    with Retriever(index, url=url, rerank=QWEN) as two:
        result = two.search(question, SearchOptions(top_k=3, rerank_depth=8))
    with EmbeddingClient(url, QWEN) as rr:
        scores = rr.score(question, [h.text for h in top]).scores
    want = [top[i].id for i in np.argsort(-scores, kind="stable")[:3]]
    assert [h.id for h in result.hits] == want
    assert [h.score for h in result.hits] == pytest.approx(sorted(scores, reverse=True)[:3], rel=1e-5)
    assert result.timings_ms["rerank"] > 0 and result.timings_ms["total"] >= result.timings_ms["search"]
