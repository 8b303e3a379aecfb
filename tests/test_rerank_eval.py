"""Two-stage retrieval in the evaluation (tembed_eval.rerank): multilingual-e5-small retrieves from
Qdrant, a served reranker reorders the top ``depth``, ir-measures scores both orders.

The rerankers served here have random weights, so only the plumbing is checked: figures in [0, 1],
each reranked list a permutation of the retrieved one in rerank-score order, and the random-weight
note, which must come from the model's files (its README) and not from its name.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tembed_eval.data import DEFAULT_DATA, Task, load_beir, load_cmrc
from tembed_eval.index import index_stores
from tembed_eval.rerank import (
    RERANK_METRICS,
    evaluate_rerank,
    markdown,
    model_weights,
    rerank_order,
    rerank_tasks,
    two_stage,
)

from .conftest import BERT, EMBEDDER, QWEN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEFAULT_DATA / "cmrc2018").is_dir(), reason=f"no evaluation data in {DEFAULT_DATA}"),
]
QUESTIONS, DEPTH = 20, 10


@pytest.fixture(scope="module")
def cmrc_run(rerank_server):
    from tembed_client import EmbeddingClient
    from tembed_eval.evaluate import Encoder

    # The paragraphs of the first 200 questions (a corpus well over DEPTH), the first 20 questions reranked.
    task = load_cmrc(DEFAULT_DATA, 200)
    assert len(task.corpus) > 3 * DEPTH
    weights = model_weights(rerank_server.model_repository, QWEN)
    with EmbeddingClient(rerank_server.grpc_url, EMBEDDER) as emb, EmbeddingClient(rerank_server.grpc_url, QWEN) as rr:
        return task, two_stage(Encoder(emb), rr, task, index_stores(), DEPTH, limit=QUESTIONS, weights=weights)


def test_metrics_are_in_range(cmrc_run):
    _, run = cmrc_run
    assert (run.queries, run.depth, run.pairs) == (QUESTIONS, DEPTH, QUESTIONS * DEPTH)
    for figures in (run.before, run.after):
        assert set(figures) == set(RERANK_METRICS)
        assert all(0.0 <= v <= 1.0 for v in figures.values()), figures
    # e5 finds a CMRC question's paragraph (measured MRR@10 0.99 on 100 questions in test_quality).
    assert run.before["MRR@10"] > 0.8 and 0.0 <= run.recall_at_depth <= 1.0
    assert run.recall_at_depth >= run.before["MRR@10"] - 1e-9  # MRR@10 <= recall@10 for one judged doc
    s = run.summary()
    json.dumps(s)  # goes into the JSON summary line
    assert s["random_weights"] is True and s["rerank_p99_ms"] >= s["rerank_p50_ms"] > 0


def test_reranked_list_is_a_permutation_in_score_order(cmrc_run, rerank_server):
    from tembed_client import EmbeddingClient

    task, run = cmrc_run
    assert len(run.retrieved) == len(run.reranked) == QUESTIONS
    for got, was in zip(run.reranked, run.retrieved):
        assert len(was) == DEPTH
        assert sorted(d for d, _ in got) == sorted(d for d, _ in was)
        scores = [s for _, s in got]
        assert scores == sorted(scores, reverse=True)
    # The order is the served scores' order: rescore one query directly.
    qid = next(iter(task.queries))
    with EmbeddingClient(rerank_server.grpc_url, QWEN) as rr:
        direct = rr.score(task.queries[qid], [task.corpus[d] for d, _ in run.retrieved[0]])
    assert [d for d, _ in run.reranked[0]] == [run.retrieved[0][i][0] for i, _ in direct.ranking()]


def test_rerank_order_keeps_retrieval_order_on_ties():
    retrieved = [("a", 0.9), ("b", 0.8), ("c", 0.7)]
    assert [d for d, _ in rerank_order(retrieved, np.array([0.5, 0.5, 0.9]))] == ["c", "a", "b"]


def test_random_weights_are_read_from_the_files(rerank_server, tmp_path):
    import shutil

    repo = rerank_server.model_repository
    assert model_weights(repo, QWEN).random is True
    assert model_weights(repo, BERT).random is True
    assert model_weights(repo, EMBEDDER).random is False  # the real model's card
    # A random model renamed to sound real is still reported as random: the name plays no part.
    shutil.copytree(repo / f"{QWEN}-tokenizer", tmp_path / "Qwen3-Reranker-8B-tokenizer")
    assert model_weights(tmp_path, "Qwen3-Reranker-8B").random is True
    assert model_weights(tmp_path, "absent").random is None


def test_cmrc_and_msmarco_through_evaluate_rerank(rerank_server):
    cmrc = load_cmrc(DEFAULT_DATA, 40)
    marco = load_beir(DEFAULT_DATA / "msmarco-5k", limit=8, max_docs=150)
    tatoeba = Task("tatoeba zh→en", {"q": "你好"}, {"d": "hello"}, {"q": {"d": 1}})
    kept, notes = rerank_tasks([cmrc, tatoeba, marco])
    assert [t.name for t in kept] == ["cmrc2018", "msmarco-5k"] and "Tatoeba" in notes[0]
    out = evaluate_rerank(
        rerank_server.grpc_url,
        EMBEDDER,
        QWEN,
        [cmrc, tatoeba, marco],
        index_stores(),
        depth=DEPTH,
        limit=8,
        repo=rerank_server.model_repository,
    )
    assert list(out["tasks"]) == ["cmrc2018", "msmarco-5k"] and out["weights"]["random"] is True
    for t in out["tasks"].values():
        assert t["queries"] == 8 and all(0 <= t[k][m] <= 1 for k in ("before", "after") for m in RERANK_METRICS)
    text = "\n".join(markdown(out))
    assert "| cmrc2018 |" in text and "| msmarco-5k |" in text and "→" in text
    assert "random-weight reranker" in text and "Tatoeba skipped" in text


def test_cli_writes_the_two_stage_table(rerank_server, tmp_path):
    from tembed_eval.cli import main

    out = tmp_path / "QUALITY.md"
    argv = ["--url", rerank_server.grpc_url, "--models", EMBEDDER, "--tasks", "cmrc2018", "--limit", "20"]
    argv += ["--dims", "32", "--no-compare-prompt", "--check-queries", "5", "--out", str(out)]
    argv += ["--rerank", QWEN, "--rerank-depth", str(DEPTH), "--repository", str(rerank_server.model_repository)]
    assert main(argv) == 0
    text = out.read_text(encoding="utf-8")
    assert f"## Two-stage retrieval: `{EMBEDDER}` top {DEPTH}, reranked by `{QWEN}`" in text
    row = next(line for line in text.splitlines() if line.startswith("| cmrc2018 | 20 q /"))
    assert row.count("→") == 2 and "⚠" in row
    assert "random-weight reranker" in text


def test_rerank_demo_against_a_running_server(rerank_server, capsys):
    from tembed_eval.rerank_demo import main

    argv = ["--url", rerank_server.grpc_url, "--repo", str(rerank_server.model_repository)]
    assert main([*argv, "--reranker", BERT, "--passages", "30", "--depth", "10"]) == 0
    out = capsys.readouterr().out
    assert "top 3 after reranking:" in out and "gold paragraph DEV_0: cosine rank" in out
    assert f"NOTE: {BERT} has RANDOM WEIGHTS" in out
