"""Retrieval quality through the served models (tembed_eval), on small slices of the shared data.

Thresholds were measured first and set with margin; each is far above what a broken pipeline
(wrong prompt side, shuffled rows, bad truncation) reaches. qwen3-embedding-tiny has random
weights: it only checks that the pipeline runs end to end.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tembed_eval.data import DEFAULT_DATA, load_beir, load_cmrc, load_tatoeba
from tembed_eval.evaluate import EvalConfig, evaluate_model, score, sweep_dims
from tembed_eval.index import VectorIndex, cross_check, exact_search, index_stores, rankings_agree
from tembed_eval.server_stats import find_server_pid, server_memory

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEFAULT_DATA / "cmrc2018").is_dir(), reason=f"no evaluation data in {DEFAULT_DATA}"),
]
E5, MINILM, QWEN = "multilingual-e5-small", "all-minilm-l6-v2", "qwen3-embedding-tiny"


@pytest.fixture(scope="module")
def qdrant():
    return index_stores()


@pytest.fixture(scope="module")
def e5(server, qdrant):
    # 100 CMRC questions (their 28 paragraphs) and 100 Tatoeba pairs; the long document's first
    # paragraphs are those same paragraphs, so it costs one extra request.
    cfg = EvalConfig(tasks=("cmrc2018", "tatoeba", "long"), limit=100, long_chars=3000, check_queries=10)
    return evaluate_model(server.grpc_url, E5, qdrant, cfg)


def test_e5_cmrc_question_to_paragraph(e5):
    cmrc = e5["tasks"]["cmrc2018"]
    assert (cmrc["queries"], cmrc["docs"]) == (100, 28)
    # Measured 0.99 / 1.00 / 0.99; random ranking of 28 paragraphs gives MRR@10 ≈ 0.1.
    assert cmrc["metrics"]["MRR@10"] > 0.85
    assert cmrc["metrics"]["R@10"] > 0.95
    assert cmrc["metrics"]["nDCG@10"] > 0.85


def test_e5_tatoeba_both_directions(e5):
    # Measured acc@1 0.95 zh→en and 0.92 en→zh on these 100 pairs (random: 0.01).
    assert e5["tasks"]["tatoeba zh→en"]["metrics"]["acc@1"] > 0.8
    assert e5["tasks"]["tatoeba en→zh"]["metrics"]["acc@1"] > 0.8
    assert e5["tasks"]["tatoeba zh→en"]["metrics"]["MRR@10"] > 0.85


def test_e5_prompt_switch_and_matryoshka_sweep(e5):
    for task in e5["tasks"].values():
        assert set(task["no_prompt"]) == set(task["metrics"])
        assert list(task["sweep"]) == [32, 64, 128, 256, 384]  # 512 > full is left out
        assert task["sweep"][384] == task["metrics"]
        # e5-small is not Matryoshka-trained: 32 dims lose a lot (measured 0.78 vs 0.99 MRR on CMRC).
        headline = next(iter(task["metrics"]))
        assert task["sweep"][32][headline] < task["sweep"][384][headline]
    assert e5["tasks"]["cmrc2018"]["sweep"][32]["MRR@10"] > 0.5
    # The sweep truncates client-side; the server's own `dimensions` output must be the same.
    assert e5["matryoshka_check"]["ok"] and e5["matryoshka_check"]["max_abs_diff"] <= 1e-4


def test_e5_qdrant_agrees_with_numpy(e5):
    for task in e5["tasks"].values():
        assert task["cross_check"]["queries"] == 50  # 10 queries x 5 dimensions
        assert task["cross_check"]["mismatched"] == 0


def test_e5_long_text_and_latency(e5, server):
    long = e5["long_document"]
    assert long["chars"] >= 3000 and long["tokens_embedded"] == 512  # truncated at max length
    assert -1 <= long["para_to_doc_min"] <= long["para_to_doc_mean"] <= 1
    truncate, chunk = long["modes"]["truncate"], long["modes"]["chunk"]
    assert truncate["para_to_doc_mean"] == long["para_to_doc_mean"]
    # chunk embeds every window (all of max length), the whole text and more (overlap, prompts)
    assert chunk["tokens_embedded"] % 512 == 0 and chunk["tokens_embedded"] > chunk["tokens_original"] > 512
    # The last paragraph is past the first 512 tokens: only chunk sees it (measured 0.965 vs 0.864).
    assert chunk["last_to_doc"] > truncate["last_to_doc"]
    lat = e5["latency"]
    assert lat["texts_per_request_max"] == 8 and lat["requests"] > 20  # max_texts 8: many requests
    assert 0 < lat["p50_ms"] <= lat["p99_ms"]
    assert find_server_pid(server.grpc_url) == server.proc.pid
    mem = server_memory(server.proc.pid, [E5, MINILM, QWEN])
    assert mem["processes"] > 3 and all(v > 10 for v in mem["model_stubs_mib"].values())
    assert mem["total_mib"] > sum(mem["model_stubs_mib"].values())


def test_minilm_msmarco_beats_random(server, qdrant):
    cfg = EvalConfig(tasks=("msmarco",), limit=10, max_docs=60, dims=(32,), check_queries=10)
    result = evaluate_model(server.grpc_url, MINILM, qdrant, cfg)["tasks"]["msmarco-5k"]
    task = load_beir(DEFAULT_DATA / "msmarco-5k", 10, 60)
    rng = random.Random(0)
    shuffled = [[(d, 1.0 - i / 100) for i, d in enumerate(rng.sample(list(task.corpus), 10))] for _ in task.queries]
    chance = score(task, shuffled, ("nDCG@10",))["nDCG@10"]
    # Measured 0.89 on these 10 queries / 60 documents; seeded shuffles score 0.0-0.15.
    assert result["metrics"]["nDCG@10"] > max(0.6, chance + 0.4)
    assert result["no_prompt"] == result["metrics"]  # MiniLM has no prompts: the switch changes nothing
    assert list(result["sweep"]) == [32, 384]


def test_qwen3_pipeline_through_the_cli(server, tmp_path, capsys):
    from tembed_eval.cli import main

    out = tmp_path / "docs" / "QUALITY.md"
    args = ["--url", server.grpc_url, "--models", QWEN, "--limit", "12", "--max-docs", "30", "--long-chars", "2000"]
    assert main([*args, "--check-queries", "5", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    qwen = summary["models"][QWEN]
    assert set(qwen["tasks"]) == {"cmrc2018", "tatoeba zh→en", "tatoeba en→zh", "msmarco-5k"}
    assert all(list(t["sweep"]) == ["32", "64"] for t in qwen["tasks"].values())  # JSON keys; full dim 64
    assert qwen["long_document"]["tokens_embedded"] > 512  # an 8192-token model takes the whole 2000 chars
    text = out.read_text()
    assert QWEN in text and "| Matryoshka d=32 (128 B) |" in text and "--limit 12" in text
    assert f"| | {QWEN} truncate | {QWEN} chunk |" in text  # the long document both ways
    assert out.with_suffix(".png").stat().st_size > 1000


def test_loaders_and_sweep_dims():
    cmrc = load_cmrc(DEFAULT_DATA)
    assert (len(cmrc.queries), len(cmrc.corpus)) == (3219, 848)
    zh_en, en_zh = load_tatoeba(DEFAULT_DATA)
    assert len(zh_en.queries) == len(en_zh.corpus) == 1000
    ms = load_beir(DEFAULT_DATA / "msmarco-5k")
    assert (len(ms.queries), len(ms.corpus)) == (43, 5000)
    assert sweep_dims(384, 32) == [32, 64, 128, 256, 384]
    assert sweep_dims(1024, 128) == [128, 256, 512, 1024]


def test_qdrant_cross_check_catches_disagreement(qdrant):
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(50, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    docs[7] = docs[3]  # an exact tie
    queries = docs[:5] + 0.05 * rng.normal(size=(5, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(50)]
    with VectorIndex.build(qdrant, ids, docs) as index:
        assert cross_check(index, queries, docs) == (5, 0)
        got = index.search(queries)
    want = exact_search(queries, docs, ids)
    for q, tie in ((3, True), (0, False)):  # query 3's top two are the tied d3 and d7
        scores = {ids[j]: float(queries[q] @ docs[j]) for j in range(50)}
        assert rankings_agree(got[q], want[q], scores)
        swapped = [want[q][1], want[q][0], *want[q][2:]]
        assert rankings_agree(swapped, want[q], scores) is tie  # only a tie may change order


def test_cli_registers_as_a_subcommand():
    import argparse

    from tembed_eval import register
    from tembed_eval.cli import parse_models

    ap = argparse.ArgumentParser(prog="tembed")
    register(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["eval", "--models", "a,b:50", "--no-compare-prompt", "--max-docs", "9"])
    assert args.func.__name__ == "run" and args.compare_prompt is False and args.max_docs == 9
    assert parse_models(args.models) == {"a": None, "b": 50}
