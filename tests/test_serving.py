"""The served ensembles against a real tritonserver over gRPC: parity, batching, options, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tembed_client import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError

from .conftest import SERVED, TEXTS

pytestmark = pytest.mark.slow


def reference(references, name, texts, prompt_name=None, prompt=None):
    st = references(name)
    kw = {"prompt": prompt} if prompt is not None else {"prompt_name": prompt_name} if prompt_name else {}
    return st.encode(texts, normalize_embeddings=True, convert_to_numpy=True, **kw)


@pytest.mark.parametrize("name", SERVED)
@pytest.mark.parametrize("input_type", ["query", "document"])
def test_parity_with_sentence_transformers(clients, references, profiles, name, input_type):
    got = clients[name].embed(TEXTS, input_type=input_type)
    prompt = profiles[name].prompts.get(input_type, "")
    ref = reference(references, name, TEXTS, prompt=prompt)
    cos = (got * ref).sum(1)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", SERVED)
def test_alone_equals_in_batch(clients, name):
    client = clients[name]
    batch = client.embed(TEXTS)
    for i, text in enumerate(TEXTS):
        alone = client.embed([text])[0]
        assert np.abs(alone - batch[i]).max() <= 1e-5, (i, np.abs(alone - batch[i]).max())


def test_token_counts_match_the_tokenizer(clients, references):
    result = clients["multilingual-e5-small"].encode(TEXTS, input_type="query")
    tok = references("multilingual-e5-small").tokenizer
    expected = [len(tok("query: " + t)["input_ids"]) for t in TEXTS]
    assert result.token_counts.tolist() == expected


def test_concurrent_clients_get_their_own_results(server, clients):
    name = "all-minilm-l6-v2"
    expected = clients[name].embed(TEXTS)
    errors, barrier = [], threading.Barrier(8)

    def worker(seed):
        rng = np.random.default_rng(seed)
        with EmbeddingClient(server.grpc_url, name) as c:
            barrier.wait()
            for _ in range(5):
                order = rng.permutation(len(TEXTS))[: rng.integers(1, len(TEXTS) + 1)]
                got = c.embed([TEXTS[i] for i in order])
                if np.abs(got - expected[order]).max() > 1e-5:
                    errors.append((seed, order))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_client_chunks_long_lists(clients):
    client = clients["all-minilm-l6-v2"]
    texts = [f"句子 number {i}: {'词' * (i % 7)}" for i in range(3 * client.model_info().max_texts + 3)]
    got = client.embed(texts)
    assert got.shape == (len(texts), 384)
    np.testing.assert_allclose(got[-3:], client.embed(texts[-3:]), atol=1e-5)


def test_async_client_matches_sync(server, clients):
    import asyncio

    async def run():
        async with AsyncEmbeddingClient(server.grpc_url, "qwen3-embedding-tiny") as c:
            return await c.embed(TEXTS * 3, input_type="query")

    np.testing.assert_allclose(
        asyncio.run(run()), clients["qwen3-embedding-tiny"].embed(TEXTS * 3, input_type="query"), atol=1e-5
    )


def test_qwen3_instruction_changes_queries_only(clients, references, profiles):
    client, p = clients["qwen3-embedding-tiny"], profiles["qwen3-embedding-tiny"]
    default = client.embed(TEXTS, input_type="query")
    custom = client.embed(TEXTS, instruction="Given a Chinese question, retrieve the passage that answers it")
    ref = reference(
        references,
        "qwen3-embedding-tiny",
        TEXTS,
        prompt="Instruct: Given a Chinese question, retrieve the passage that answers it\nQuery:",
    )
    assert (custom * ref).sum(1).min() >= 0.9999
    np.testing.assert_allclose(
        client.embed(TEXTS, input_type="query", instruction=p.default_instruction), default, atol=1e-6
    )
    assert ((custom * default).sum(1) < 0.9999).all()  # the instruction reaches the model
    docs = client.embed(TEXTS, input_type="document")
    np.testing.assert_allclose(docs, client.embed(TEXTS), atol=1e-6)  # documents are the default, unprompted
    np.testing.assert_allclose(docs, reference(references, "qwen3-embedding-tiny", TEXTS, prompt=""), atol=1e-4)
    with pytest.raises(EmbeddingError, match="documents never carry an instruction") as err:
        client.embed(TEXTS, input_type="document", instruction="x")
    assert err.value.code == "INVALID_ARGUMENT"


def test_qwen3_last_token_pooling_under_left_padding(clients, references):
    """Short texts padded next to long ones must pool the end token, not a pad."""
    client = clients["qwen3-embedding-tiny"]
    texts = ["短", " ".join(["a much longer sentence"] * 12), "中"]
    np.testing.assert_allclose(client.embed(texts), reference(references, "qwen3-embedding-tiny", texts), atol=1e-4)


@pytest.mark.parametrize("dims", [32, 100, 384])
def test_dimensions_truncate_then_renormalise(clients, dims):
    client = clients["multilingual-e5-small"]
    full = client.embed(TEXTS)
    got = client.embed(TEXTS, dimensions=dims)
    expected = full[:, :dims] / np.linalg.norm(full[:, :dims], axis=1, keepdims=True)
    assert got.shape == (len(TEXTS), dims)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def raw_infer(server, model, inputs):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return c.infer(model, inputs)
    finally:
        c.close()


def text_input(values, dtype="BYTES"):
    arr = np.array(values, dtype=object) if dtype == "BYTES" else np.asarray(values)
    t = grpcclient.InferInput("text", list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


def int_input(name, value):
    t = grpcclient.InferInput(name, [1], "INT32")
    t.set_data_from_numpy(np.array([value], dtype=np.int32))
    return t


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (lambda: [text_input([b"ok", b""])], r"text\[1\] is empty"),
        (lambda: [text_input([b"ok", b"\xff\xfe bad"])], r"text\[1\] is not valid UTF-8"),
        (lambda: [text_input([b"x"] * 9)], "too many texts: 9 > 8"),
        (lambda: [text_input([b"x"]), int_input("dimensions", 16)], "dimensions must be between 32 and 384"),
        (lambda: [text_input([b"x"]), int_input("dimensions", 385)], "dimensions must be between 32 and 384"),
        (
            lambda: [text_input(np.array([1, 2], dtype=np.int32), "INT32")],
            "data-type is 'INT32', but model .* expects 'BYTES'",
        ),
    ],
    ids=["empty", "utf8", "too-many", "dims-small", "dims-large", "wrong-dtype"],
)
def test_bad_requests_get_invalid_arg_and_server_keeps_serving(server, clients, inputs, message):
    with pytest.raises(InferenceServerException, match=message) as err:
        raw_infer(server, "multilingual-e5-small", inputs())
    assert "INVALID_ARG" in str(err.value.status())
    assert clients["multilingual-e5-small"].embed(["还在工作吗？"]).shape == (1, 384)


def test_bad_request_does_not_disturb_concurrent_good_ones(server, clients):
    """Errors are per request: good requests racing bad ones still get their own vectors."""
    name = "multilingual-e5-small"
    expected = clients[name].embed(TEXTS)
    failures = []

    def good():
        with EmbeddingClient(server.grpc_url, name) as c:
            for _ in range(5):
                if np.abs(c.embed(TEXTS) - expected).max() > 1e-5:
                    failures.append("wrong vector")

    def bad():
        for _ in range(5):
            try:
                raw_infer(server, name, [text_input([b"fine", b"\xc3\x28"])])
                failures.append("bad request succeeded")
            except InferenceServerException:
                pass

    threads = [threading.Thread(target=f) for f in (good, bad, good, bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
