"""Request options against a real tritonserver and the gateway: truncate (END / START / NONE) and the
counts before truncation, tokenize (gRPC and ``POST /tokenize``), and the ``NAME-query`` aliases
that give stock OpenAI clients (the ``openai`` package, LangChain) the query prompt."""

from __future__ import annotations

import re
import threading

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tembed_client import EmbeddingClient, EmbeddingError
from tembed_gateway import GatewaySettings, GatewayThread

from .conftest import SERVED, TEXTS

pytestmark = pytest.mark.slow

E5, MINILM, QWEN = "multilingual-e5-small", "all-minilm-l6-v2", "qwen3-embedding-tiny"
EOT = 151643
FILLER = " ".join(f"Sentence number {i} talks about nothing in particular." for i in range(120))
LONG_CATS = FILLER + " The last sentence is about cats sleeping in the sun."
LONG_ROCKETS = FILLER + " The last sentence is about rockets leaving the launch pad."


@pytest.fixture(scope="module")
def gateway(server):
    settings = GatewaySettings(server.grpc_url, model_repository=server.model_repository, aliases={"e5": E5})
    with GatewayThread(settings) as gw:
        yield gw


def post(gw: GatewayThread, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{gw.url}{path}", json=body, timeout=60)


def error(resp: httpx.Response, status: int, param: str) -> str:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] == param, err
    return err["message"]


# truncate


@pytest.mark.parametrize("name", [E5, MINILM])
def test_original_counts_exceed_embedded_for_a_long_text(clients, name):
    max_length = int(clients[name].model_info().parameters["max_length"])
    result = clients[name].encode([TEXTS[2], LONG_CATS])
    assert result.token_counts[1] == max_length < result.original_token_counts[1]
    assert result.token_counts[0] == result.original_token_counts[0]
    assert result.truncated.tolist() == [False, True]
    single = clients[name].encode(LONG_CATS)
    assert single.original_token_counts.shape == () and int(single.original_token_counts) > max_length


@pytest.mark.parametrize("name", [E5, MINILM])
def test_start_embeds_the_end_of_the_text(clients, name):
    client = clients[name]
    end = client.embed([LONG_CATS, LONG_ROCKETS])
    start = client.embed([LONG_CATS, LONG_ROCKETS], truncate="START")
    # END keeps the same first max_length tokens of both; START keeps their different endings.
    assert np.abs(end[0] - end[1]).max() <= 1e-5
    assert float(start[0] @ start[1]) < 0.999
    assert np.abs(start[0] - end[0]).max() > 1e-3
    # Under the limit nothing is cut: START is END (and the default).
    np.testing.assert_allclose(client.embed(TEXTS, truncate="START"), client.embed(TEXTS), atol=1e-5)
    np.testing.assert_allclose(client.embed(TEXTS, truncate="end"), client.embed(TEXTS), atol=1e-5)


def test_start_keeps_the_prompt(clients):
    ids = clients[E5].tokenize(LONG_CATS, input_type="query", truncate="START").ids
    tok = clients[E5]
    assert len(ids) == int(tok.model_info().parameters["max_length"])
    prompt = clients[E5].tokenize("x", input_type="query").ids
    assert ids[: len(prompt) - 2].tolist() == prompt[:-2].tolist()  # <s> query: ...
    assert ids[-1] == prompt[-1]  # </s>


def test_none_refuses_with_the_numbers(clients):
    client = clients[E5]
    count = int(client.tokenize(LONG_CATS).original_token_counts)
    with pytest.raises(EmbeddingError) as exc:
        client.embed([TEXTS[0], LONG_CATS], truncate="NONE")
    assert exc.value.code == "INVALID_ARGUMENT"
    assert f"text[1] is {count} tokens; the limit is 512 tokens" in exc.value.message
    # Under the limit NONE embeds as usual.
    np.testing.assert_allclose(client.embed(TEXTS, truncate="NONE"), client.embed(TEXTS), atol=1e-5)


def test_none_leaves_concurrent_requests_untouched(server, clients):
    expected = clients[E5].embed(TEXTS)
    failures: list[str] = []

    def good():
        with EmbeddingClient(server.grpc_url, E5) as c:
            for _ in range(4):
                if np.abs(c.embed(TEXTS, truncate="NONE") - expected).max() > 1e-5:
                    failures.append("wrong vector")

    def refused():
        with EmbeddingClient(server.grpc_url, E5) as c:
            for _ in range(4):
                try:
                    c.embed([TEXTS[0], LONG_CATS], truncate="NONE")
                    failures.append("a text over the limit was embedded")
                except EmbeddingError as exc:
                    if exc.code != "INVALID_ARGUMENT":
                        failures.append(str(exc))

    threads = [threading.Thread(target=f) for f in (good, refused, good, refused)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_bad_truncate_values(server, clients):
    with pytest.raises(EmbeddingError, match="truncate must be one of END, START, NONE, got 'MIDDLE'"):
        clients[E5].embed(["x"], truncate="MIDDLE")
    with pytest.raises(EmbeddingError, match="truncate must be one of"):
        clients[E5].tokenize(["x"], truncate="")
    # Past the client: the tokenizer model checks it too, per request.
    with grpcclient.InferenceServerClient(server.grpc_url) as raw:
        inputs = []
        for name, value in (("text", b"x"), ("truncate", b"SIDEWAYS")):
            inp = grpcclient.InferInput(name, [1], "BYTES")
            inp.set_data_from_numpy(np.array([value], dtype=object))
            inputs.append(inp)
        with pytest.raises(InferenceServerException, match="truncate must be one of END, START, NONE") as exc:
            raw.infer(E5, inputs)
        assert "INVALID_ARG" in str(exc.value.status())


# tokenize


def test_qwen3_keeps_one_end_token_in_every_mode(clients):
    client = clients[QWEN]
    max_length = int(client.model_info().parameters["max_length"])
    huge = "word " * (max_length + 200) + "the very end"
    for truncate in ("END", "START"):
        for input_type in ("query", "document"):
            got = client.tokenize([huge, "short"], input_type=input_type, truncate=truncate)
            for ids in got.ids:
                assert ids[-1] == EOT and ids.tolist().count(EOT) == 1
            assert got.token_counts.tolist()[0] == max_length == len(got.ids[0])
            assert got.original_token_counts[0] > max_length
    start = client.tokenize(huge, input_type="query", truncate="START").ids
    prompt = client.tokenize("x", input_type="query").ids
    assert start[: len(prompt) - 3].tolist() == prompt[:-3].tolist()  # the instruction is kept
    with pytest.raises(EmbeddingError, match=rf"text\[0\] is \d+ tokens; the limit is {max_length} tokens"):
        client.tokenize(huge, truncate="NONE")


def test_tokenize_equals_sentence_transformers_with_the_prompt(clients, references):
    got = clients[E5].tokenize(TEXTS, input_type="query")
    tok = references(E5).tokenizer
    assert [ids.tolist() for ids in got.ids] == [tok("query: " + t)["input_ids"] for t in TEXTS]
    assert got.token_counts.tolist() == [len(ids) for ids in got.ids]
    np.testing.assert_array_equal(got.token_counts, clients[E5].encode(TEXTS, input_type="query").token_counts)


def test_gateway_tokenize_equals_grpc(gateway, clients):
    for body, kwargs in (
        ({"input": TEXTS}, {}),
        ({"input": TEXTS, "input_type": "query"}, {"input_type": "query"}),
        ({"input": [LONG_CATS, "short"], "truncate": "start"}, {"truncate": "START"}),
    ):
        resp = post(gateway, "/tokenize", {"model": E5, **body})
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        grpc = clients[E5].tokenize(body["input"], **kwargs)
        assert [d["tokens"] for d in doc["data"]] == [ids.tolist() for ids in grpc.ids]
        assert [d["token_count"] for d in doc["data"]] == grpc.token_counts.tolist()
        assert [d["original_token_count"] for d in doc["data"]] == grpc.original_token_counts.tolist()
        assert doc["max_model_len"] == 512 and doc["usage"]["total_tokens"] == int(grpc.token_counts.sum())
    # The -query alias is the query prompt here too.
    alias = post(gateway, "/tokenize", {"model": f"{E5}-query", "input": TEXTS}).json()
    query = post(gateway, "/tokenize", {"model": E5, "input": TEXTS, "input_type": "query"}).json()
    assert alias["data"] == query["data"]


def test_gateway_truncate_and_counts(gateway, clients):
    body = {"model": E5, "input": [TEXTS[2], LONG_CATS]}
    doc = post(gateway, "/v1/embeddings", body).json()
    grpc = clients[E5].encode(body["input"])
    assert [d["truncated"] for d in doc["data"]] == [False, True]
    assert doc["usage"]["original_tokens"] == int(grpc.original_token_counts.sum()) > doc["usage"]["total_tokens"]
    start = post(gateway, "/v1/embeddings", {**body, "truncate": "START"}).json()
    np.testing.assert_allclose(
        [d["embedding"] for d in start["data"]], clients[E5].embed(body["input"], truncate="START"), atol=1e-6
    )
    message = error(post(gateway, "/v1/embeddings", {**body, "truncate": "NONE"}), 400, "input")
    assert re.search(r"text\[1\] is \d+ tokens; the limit is 512 tokens", message)
    resp = post(gateway, "/v1/embeddings", {**body, "truncate": "NONE"})
    assert resp.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/embeddings", {"truncate": "MIDDLE"}, "truncate"),
        ("/v1/embeddings", {"truncate": 1}, "truncate"),
        ("/tokenize", {"truncate": "sideways"}, "truncate"),
        ("/tokenize", {"input_type": "passages"}, "input_type"),  # "passage" is NIM's document
        ("/v1/embeddings", {"model": f"{E5}-query", "input_type": "document"}, "input_type"),
        ("/tokenize", {"model": "no-such-model-query"}, "model"),
        ("/v1/embeddings", {"input": [[0, 10**9]]}, "input"),
        ("/v1/embeddings", {"priority": "urgent"}, "priority"),
    ],
)
def test_gateway_bad_options(gateway, path, body, param):
    resp = post(gateway, path, {"model": E5, "input": ["x"], **body})
    assert resp.status_code in (400, 404), resp.text
    assert resp.json()["error"]["param"] == param


def test_token_ids_outside_the_vocabulary(gateway):
    message = error(post(gateway, "/v1/embeddings", {"model": E5, "input": [[5, 250_000_000]]}), 400, "input")
    assert "outside this model's vocabulary" in message


# NAME-query aliases for stock OpenAI clients


def test_models_lists_the_query_aliases(gateway):
    models = {m.id: m for m in openai.Client(base_url=f"{gateway.url}/v1", api_key="x").models.list()}
    for name in SERVED:
        assert name in models and models[f"{name}-query"].root == name
        assert models[f"{name}-query"].model_extra["input_type"] == "query"
    assert models["e5-query"].root == E5


@pytest.mark.parametrize("name", [E5, QWEN])
def test_openai_query_alias_gets_the_query_prompt(gateway, clients, name):
    oai = openai.Client(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    query = oai.embeddings.create(model=f"{name}-query", input=TEXTS)
    doc = oai.embeddings.create(model=name, input=TEXTS)
    got_q = np.array([d.embedding for d in query.data], np.float32)
    got_d = np.array([d.embedding for d in doc.data], np.float32)
    np.testing.assert_allclose(got_q, clients[name].embed(TEXTS, input_type="query"), atol=1e-6)
    np.testing.assert_allclose(got_d, clients[name].embed(TEXTS, input_type="document"), atol=1e-6)
    assert np.abs(got_q - got_d).max() > 1e-3
    assert query.model == f"{name}-query"
    assert query.usage.model_extra["original_tokens"] == query.usage.total_tokens  # extensions parse


def test_langchain_query_alias(gateway, clients):
    langchain_openai = pytest.importorskip("langchain_openai")
    base_url = f"{gateway.url}/v1"
    kw = {"base_url": base_url, "api_key": "x", "check_embedding_ctx_length": False}
    queries = langchain_openai.OpenAIEmbeddings(model=f"{E5}-query", **kw)
    documents = langchain_openai.OpenAIEmbeddings(model=E5, **kw)
    q = np.array(queries.embed_query(TEXTS[0]), np.float32)
    d = np.array(documents.embed_documents(TEXTS[:2]), np.float32)
    np.testing.assert_allclose(q, clients[E5].embed(TEXTS[0], input_type="query"), atol=1e-5)
    np.testing.assert_allclose(d, clients[E5].embed(TEXTS[:2], input_type="document"), atol=1e-5)


def test_priority_changes_the_lane_not_the_vectors(gateway, clients):
    """``priority`` travels as the request's Triton priority, not an input: any lane gives the same vectors,
    through gRPC and the gateway, also on a repository exported without lanes (the default)."""
    from tembed_client.contract import PRIORITY_VALUES

    base = clients[E5].embed(TEXTS[:3])
    for lane in PRIORITY_VALUES:
        np.testing.assert_allclose(clients[E5].embed(TEXTS[:3], priority=lane), base, atol=1e-5)
        resp = post(gateway, "/v1/embeddings", {"model": E5, "input": TEXTS[:1], "priority": lane})
        assert resp.status_code == 200, resp.text
    with pytest.raises(EmbeddingError) as err:
        clients[E5].embed(TEXTS[:1], priority="urgent")
    assert err.value.param == "priority"
