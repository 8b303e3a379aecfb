"""Rerankers served by the real tritonserver, side by side with an embedding model: scores against
references written from the model cards (tests/rerank_reference.py), batching invariance, truncation
that keeps the prompt's end, every bad input followed by a good request."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from . import rerank_reference as ref
from .conftest import BERT, DOCS, EMBEDDER, MAX_LENGTH, QUERY, QWEN, RERANKERS, TWIN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rclients(rerank_server):
    from tembed_client import EmbeddingClient

    made = {name: EmbeddingClient(rerank_server.grpc_url, name) for name in (*RERANKERS, EMBEDDER)}
    yield made
    for c in made.values():
        c.close()


def reference(name, dirs, query, docs, instruction=None):
    if name == QWEN:
        return ref.qwen3_reranker_scores(dirs[name], query, docs, instruction, max_length=MAX_LENGTH)
    if name == TWIN:
        return ref.qwen3_seq_cls_scores(dirs[name], query, docs, instruction, max_length=MAX_LENGTH)
    return ref.cross_encoder_scores(dirs[name], query, docs)


@pytest.mark.parametrize("name", RERANKERS)
def test_scores_match_the_model_card_reference(rclients, rerank_dirs, name):
    served = rclients[name].score(QUERY, DOCS)
    expected = reference(name, rerank_dirs, QUERY, DOCS)
    print(f"\n{name}: max |served - model card reference| = {np.abs(served.scores - expected).max():.2e}")
    assert np.abs(served.scores - expected).max() <= 1e-4, (served.scores, expected)
    assert [i for i, _ in rclients[name].rerank(QUERY, DOCS)] == list(np.argsort(-expected, kind="stable"))


def test_instruction_reaches_the_prompt(rclients, rerank_dirs):
    task = "Given a question, find the passage that defines the term"
    served = rclients[QWEN].score(QUERY, DOCS, instruction=task).scores
    assert np.abs(served - reference(QWEN, rerank_dirs, QUERY, DOCS, task)).max() <= 1e-4
    assert np.abs(served - rclients[QWEN].score(QUERY, DOCS).scores).max() > 1e-4


def test_seq_cls_twin_scores_like_the_causal_model(rclients):
    causal, twin = rclients[QWEN].score(QUERY, DOCS).scores, rclients[TWIN].score(QUERY, DOCS).scores
    assert np.abs(causal - twin).max() <= 1e-5


@pytest.mark.parametrize("name", RERANKERS)
def test_a_pair_alone_scores_as_in_a_crowd(rclients, name):
    rng = np.random.default_rng(0)
    crowd = ["检索" * int(n) + " passage " * int(m) for n, m in rng.integers(1, 60, size=(50, 2))]
    alone = rclients[name].score(QUERY, [DOCS[0]]).scores[0]
    mixed = rclients[name].score(QUERY, [*crowd[:25], DOCS[0], *crowd[25:]]).scores[25]
    assert abs(alone - mixed) <= 1e-5


def test_concurrent_clients_get_their_own_scores(rclients):
    queries = [f"问题 {i}: " + QUERY * (i % 3 + 1) for i in range(12)]
    expected = {q: rclients[QWEN].score(q, DOCS).scores for q in queries}
    with ThreadPoolExecutor(6) as pool:
        got = dict(zip(queries, pool.map(lambda q: rclients[QWEN].score(q, DOCS).scores, queries)))
    for q in queries:
        assert np.abs(got[q] - expected[q]).max() <= 1e-5


def test_long_lists_are_chunked_and_merged(rclients):
    docs = [f"{d} ({i})" for i in range(3) for d in DOCS] * 2  # 36 documents, max_texts 16
    result = rclients[BERT].score(QUERY, docs)
    assert result.scores.shape == (36,)
    each = np.concatenate([rclients[BERT].score(QUERY, docs[i : i + 5]).scores for i in range(0, 36, 5)])
    assert np.abs(result.scores - each).max() <= 1e-5


def test_truncation_keeps_the_prompt_suffix(rerank_dirs, rclients):
    from tembed.hf_folder import read_profile
    from tembed_serving.pairs import PairEncoder

    profile = read_profile(rerank_dirs[QWEN], max_length=MAX_LENGTH)
    enc = PairEncoder(profile, rerank_dirs[QWEN] / "tokenizer.json")
    long_doc = "长文档的内容。" * 2858  # 20,006 characters
    batch = enc.encode(QUERY, [long_doc, DOCS[0]])
    row = batch.input_ids[0][batch.attention_mask[0] == 1].tolist()
    assert len(row) == MAX_LENGTH
    assert row[-len(enc.suffix_ids) :] == enc.suffix_ids and row[: len(enc.prefix_ids)] == enc.prefix_ids
    text = enc.tokenizer.decode(row, skip_special_tokens=False)
    assert f"<Query>: {QUERY}\n<Document>: 长文档" in text  # the query and the document's start survive
    served = rclients[QWEN].score(QUERY, [long_doc])
    assert served.token_counts.tolist() == [MAX_LENGTH]
    expected = reference(QWEN, rerank_dirs, QUERY, [long_doc])
    assert abs(served.scores[0] - expected[0]) <= 1e-4  # the model card's code cuts the same tokens


def test_a_query_too_long_for_any_document_is_refused(rclients):
    from tembed_client import EmbeddingError

    with pytest.raises(EmbeddingError, match="leave no room for a document") as exc:
        rclients[QWEN].score("问题" * 1000, DOCS[:1])
    assert exc.value.code == "INVALID_ARGUMENT"
    with pytest.raises(EmbeddingError, match="does not fit") as exc:
        rclients[BERT].score("question " * 1000, DOCS[:1])
    assert rclients[BERT].score(QUERY, DOCS[:1]).scores.shape == (1,)


def test_embedding_and_reranker_side_by_side(rclients):
    vec = rclients[EMBEDDER].embed(["北京是中华人民共和国的首都。"])
    assert vec.shape == (1, 384)
    assert rclients[QWEN].score(QUERY, DOCS[:2]).scores.shape == (2,)


def _raw_infer(server, model, inputs):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensors = []
    for name, value in inputs.items():
        arr = np.array(value, dtype=np.object_)
        t = grpcclient.InferInput(name, list(arr.shape), "BYTES")
        t.set_data_from_numpy(arr)
        tensors.append(t)
    return client.infer(model, tensors)


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        (QWEN, {"query": [b""], "documents": [b"a"]}, "query is empty"),
        (QWEN, {"query": [b"q"], "documents": [b"a", b"  "]}, "documents[1] is empty"),
        (QWEN, {"query": [b"q"], "documents": [b"ok", b"\xff\xfe"]}, "documents[1] is not valid UTF-8"),
        (QWEN, {"query": [b"\xc3"], "documents": [b"a"]}, "query[0] is not valid UTF-8"),
        (QWEN, {"query": [b"q"], "documents": [b"d"] * 17}, "too many documents: 17 > 16"),
        (QWEN, {"query": [b"q"], "documents": [b"d"], "instruction": [b"   "]}, "instruction is empty"),
        (BERT, {"query": [b"q"], "documents": [b"d"], "instruction": [b"find"]}, "takes no instruction"),
    ],
)
def test_bad_input_is_refused_and_the_next_request_succeeds(rerank_server, rclients, model, inputs, message):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as exc:
        _raw_infer(rerank_server, model, inputs)
    assert message in exc.value.message() and "INVALID_ARG" in str(exc.value.status())
    assert rclients[model].score(QUERY, DOCS[:2]).scores.shape == (2,)


def test_client_refuses_the_wrong_task(rclients):
    from tembed_client import EmbeddingError

    with pytest.raises(EmbeddingError, match="is a reranker"):
        rclients[QWEN].embed(["text"])
    with pytest.raises(EmbeddingError, match="is an embedding model"):
        rclients[EMBEDDER].rerank("q", ["d"])
