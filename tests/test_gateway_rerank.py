"""The gateway's rerank routes against a real tritonserver: Cohere v2 (``/v2/rerank``) with the real
``cohere`` package, the Jina / vLLM shape (``/v1/rerank``, ``/rerank``) over plain HTTP; every answer
compared with the gRPC client's ``score()`` on the same inputs, every error followed by a good request."""

from __future__ import annotations

import socket

import cohere
import httpx
import numpy as np
import pytest

from tembed_gateway import GatewaySettings, GatewayThread

from .conftest import BERT, DOCS, EMBEDDER, QUERY, QWEN, RERANKERS, TWIN

pytestmark = pytest.mark.slow

ALIAS = "Qwen/Qwen3-Reranker-0.6B"
MAX_INPUTS, MAX_BODY = 40, 64 << 10  # small, so the limits are cheap to reach
KEY = "sk-rerank-right"


@pytest.fixture(scope="module")
def gateway(rerank_server):
    settings = GatewaySettings(
        rerank_server.grpc_url, aliases={ALIAS: QWEN}, max_inputs=MAX_INPUTS, max_body_bytes=MAX_BODY
    )
    with GatewayThread(settings) as gw:
        yield gw


@pytest.fixture(scope="module")
def grpc(rerank_server):
    """The gRPC clients every gateway answer is compared with."""
    from tembed_client import EmbeddingClient

    made = {name: EmbeddingClient(rerank_server.grpc_url, name) for name in (*RERANKERS, EMBEDDER)}
    yield made
    for c in made.values():
        c.close()


def co(gw: GatewayThread, api_key: str = "x") -> cohere.ClientV2:
    # base_url is the server's root: the package appends "v2/rerank" itself.
    return cohere.ClientV2(base_url=gw.url, api_key=api_key, max_retries=0, timeout=60)


def post(gw: GatewayThread, body: bytes | dict, path: str = "/v1/rerank", headers: dict | None = None):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(f"{gw.url}{path}", headers=headers, timeout=60, **kw)


def good(gw: GatewayThread, path: str = "/v1/rerank", headers: dict | None = None) -> dict:
    resp = post(gw, {"model": BERT, "query": QUERY, "documents": DOCS[:2]}, path, headers)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["results"]) == 2
    return resp.json()


def assert_error(resp: httpx.Response, status: int, message: str = "", param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert message in err["message"] and "Traceback" not in err["message"], err
    if param is not None:
        assert err["param"] == param
    return err


def assert_ranked(results, expected, top_n: int | None = None) -> None:
    """``results`` (index, score pairs, best first) against a gRPC RerankResult."""
    ranking = expected.ranking(top_n)
    assert [i for i, _ in results] == [i for i, _ in ranking]
    got = np.array([s for _, s in results])
    assert np.abs(got - [s for _, s in ranking]).max() <= 1e-6
    assert all(a >= b for a, b in zip(got, got[1:]))


@pytest.mark.parametrize("name", RERANKERS)
def test_cohere_client_gets_the_grpc_ranking(gateway, grpc, name):
    expected = grpc[name].score(QUERY, DOCS)
    response = co(gateway).rerank(model=name, query=QUERY, documents=DOCS)
    assert_ranked([(r.index, r.relevance_score) for r in response.results], expected)
    assert response.id and response.meta.api_version.version == "2"
    assert response.meta.billed_units.search_units == 1
    assert response.meta.tokens.input_tokens == int(expected.token_counts.sum())

    top = co(gateway).rerank(model=name, query=QUERY, documents=DOCS, top_n=2, max_tokens_per_doc=64)
    assert_ranked([(r.index, r.relevance_score) for r in top.results], expected, 2)


def test_cohere_long_list_is_chunked_and_merged(gateway, grpc):
    docs = [f"{d} ({i})" for i in range(6) for d in DOCS]  # 36 documents: 3 Triton requests of <= 16
    expected = grpc[TWIN].score(QUERY, docs)
    response = co(gateway).rerank(model=TWIN, query=QUERY, documents=docs, top_n=None)
    assert len(response.results) == 36
    assert_ranked([(r.index, r.relevance_score) for r in response.results], expected)


def test_cohere_errors_are_its_exceptions(gateway):
    with pytest.raises(cohere.NotFoundError):
        co(gateway).rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)
    with pytest.raises(cohere.BadRequestError) as exc:
        co(gateway).rerank(model=QWEN, query="", documents=DOCS)
    assert "query is empty" in exc.value.body["error"]["message"]
    with pytest.raises(cohere.BadRequestError, match="is an embedding model"):
        co(gateway).rerank(model=EMBEDDER, query=QUERY, documents=DOCS)
    assert len(co(gateway).rerank(model=QWEN, query=QUERY, documents=DOCS).results) == len(DOCS)


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
def test_jina_shape(gateway, grpc, path):
    expected = grpc[QWEN].score(QUERY, DOCS)
    resp = post(gateway, {"model": QWEN, "query": QUERY, "documents": DOCS}, path)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"id", "model", "results", "usage"}
    assert body["id"].startswith("rerank-") and body["model"] == QWEN
    assert body["usage"] == {"total_tokens": int(expected.token_counts.sum())}
    assert_ranked([(r["index"], r["relevance_score"]) for r in body["results"]], expected)
    for r in body["results"]:  # return_documents defaults to true, as in Jina and vLLM
        assert set(r) == {"index", "relevance_score", "document"}
        assert r["document"] == {"text": DOCS[r["index"]]}


def test_jina_object_documents_top_n_and_return_documents(gateway, grpc):
    expected = grpc[BERT].score(QUERY, DOCS)
    objects = [{"text": d} for d in DOCS]
    resp = post(gateway, {"model": BERT, "query": QUERY, "documents": objects, "top_n": 3})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert_ranked([(r["index"], r["relevance_score"]) for r in results], expected, 3)
    assert [r["document"]["text"] for r in results] == [DOCS[r["index"]] for r in results]

    mixed = [DOCS[0], {"text": DOCS[1]}, *DOCS[2:]]
    bare = post(gateway, {"model": BERT, "query": QUERY, "documents": mixed, "return_documents": False})
    assert bare.status_code == 200, bare.text
    assert all(set(r) == {"index", "relevance_score"} for r in bare.json()["results"])
    assert_ranked([(r["index"], r["relevance_score"]) for r in bare.json()["results"]], expected)

    # top_n beyond the list is the whole list; 0 is vLLM's default and means "all" too.
    for top_n in (100, 0, None):
        resp = post(gateway, {"model": BERT, "query": QUERY, "documents": DOCS, "top_n": top_n})
        assert len(resp.json()["results"]) == len(DOCS), top_n


def test_instruction_reaches_the_qwen_prompt(gateway, grpc):
    task = "Given a question, find the passage that defines the term"
    expected = grpc[QWEN].score(QUERY, DOCS, instruction=task)
    body = {"model": ALIAS, "query": QUERY, "documents": DOCS, "instruction": task}
    resp = post(gateway, body)
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["model"] == ALIAS
    assert_ranked([(r["index"], r["relevance_score"]) for r in got["results"]], expected)
    plain = grpc[QWEN].score(QUERY, DOCS).scores
    scores = {r["index"]: r["relevance_score"] for r in got["results"]}
    assert np.abs(np.array([scores[i] for i in range(len(DOCS))]) - plain).max() > 1e-4


def test_v2_can_return_documents_and_v1_long_lists(gateway, grpc):
    body = {"model": QWEN, "query": QUERY, "documents": DOCS, "return_documents": True, "top_n": 1}
    resp = post(gateway, body, "/v2/rerank")
    assert resp.status_code == 200, resp.text
    (first,) = resp.json()["results"]
    assert first["document"] == {"text": DOCS[first["index"]]}

    docs = [f"{d} ({i})" for i in range(6) for d in DOCS]  # 36 documents, max 16 per Triton request
    resp = post(gateway, {"model": BERT, "query": QUERY, "documents": docs, "return_documents": False})
    expected = grpc[BERT].score(QUERY, docs)
    assert_ranked([(r["index"], r["relevance_score"]) for r in resp.json()["results"]], expected)
    assert resp.json()["usage"]["total_tokens"] == int(expected.token_counts.sum())


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (b'{"model": "x", "query": ', "not valid JSON", None),
        (b"[1, 2]", "must be a JSON object", None),
        ({"query": "q", "documents": ["d"]}, "model is required", "model"),
        ({"model": QWEN, "documents": ["d"]}, "query is required", "query"),
        ({"model": QWEN, "query": ["q"], "documents": ["d"]}, "query is required and must be a string", "query"),
        ({"model": QWEN, "query": "q"}, "documents is required", "documents"),
        ({"model": QWEN, "query": "q", "documents": "d"}, "documents must be a list", "documents"),
        ({"model": QWEN, "query": "q", "documents": []}, "must not be empty", "documents"),
        ({"model": QWEN, "query": "q", "documents": ["d", 3]}, "documents[1] must be a string", "documents"),
        ({"model": QWEN, "query": "q", "documents": [{"txt": "d"}]}, "documents[0] must be", "documents"),
        ({"model": QWEN, "query": "q", "documents": ["d"] * (MAX_INPUTS + 1)}, f"at most {MAX_INPUTS}", "documents"),
        ({"model": QWEN, "query": "q", "documents": ["d"], "top_n": -1}, "top_n must be", "top_n"),
        ({"model": QWEN, "query": "q", "documents": ["d"], "top_n": "3"}, "top_n must be", "top_n"),
        ({"model": QWEN, "query": "q", "documents": ["d"], "top_n": True}, "top_n must be", "top_n"),
        ({"model": QWEN, "query": "q", "documents": ["d"], "return_documents": "no"}, "true or false", None),
        ({"model": QWEN, "query": "q", "documents": ["d"], "max_tokens_per_doc": 0}, "positive integer", None),
        ({"model": QWEN, "query": "q", "documents": ["d"], "instruction": 7}, "instruction must be a string", None),
        # Checked by Triton, not the gateway: its INVALID_ARGUMENT and message come through.
        ({"model": QWEN, "query": "", "documents": ["d"]}, "query is empty", None),
        ({"model": QWEN, "query": "q", "documents": ["ok", ""]}, "documents[1] is empty", None),
        ({"model": TWIN, "query": "q", "documents": [{"text": "  "}]}, "documents[0] is empty", None),
        ({"model": BERT, "query": "q", "documents": ["d"], "instruction": "find"}, "takes no instruction", None),
        ({"model": QWEN, "query": "q", "documents": ["d"], "instruction": "  "}, "instruction is empty", None),
        # The wrong task, both ways.
        ({"model": EMBEDDER, "query": "q", "documents": ["d"]}, "is an embedding model", "model"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_bad_requests_are_400_and_the_next_succeeds(gateway, body, message, param, path):
    err = assert_error(post(gateway, body, path), 400, message, param)
    assert err["type"] == "invalid_request_error"
    good(gateway, path)


def test_reranker_on_embeddings_is_400(gateway):
    resp = httpx.post(f"{gateway.url}/v1/embeddings", json={"model": QWEN, "input": "a"}, timeout=60)
    assert_error(resp, 400, "is a reranker", "model")
    resp = httpx.post(f"{gateway.url}/v1/embeddings", json={"model": EMBEDDER, "input": "a"}, timeout=60)
    assert resp.status_code == 200 and len(resp.json()["data"][0]["embedding"]) == 384


def test_unknown_model_is_404_and_big_body_413(gateway):
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        resp = post(gateway, {"model": "nope", "query": "q", "documents": ["d"]}, path)
        assert assert_error(resp, 404, "'nope' does not exist", "model")["code"] == "model_not_found"
        good(gateway, path)
    err = assert_error(post(gateway, {"model": QWEN, "query": "q", "documents": ["长" * MAX_BODY]}), 413)
    assert err["code"] == "request_too_large"
    assert_error(httpx.get(f"{gateway.url}/v1/rerank"), 405)
    good(gateway)


def test_models_lists_both_tasks(gateway):
    resp = httpx.get(f"{gateway.url}/v1/models")
    assert resp.status_code == 200, resp.text
    tasks = {m["id"]: m["task"] for m in resp.json()["data"]}
    # Embedding models only are also listed as NAME-query (input_type "query").
    expected = {QWEN: "rerank", TWIN: "rerank", BERT: "rerank", EMBEDDER: "embed", ALIAS: "rerank"}
    assert tasks == {**expected, f"{EMBEDDER}-query": "embed"}
    entry = next(m for m in resp.json()["data"] if m["id"] == ALIAS)
    assert entry["root"] == QWEN and entry["object"] == "model" and entry["owned_by"] == "tembed"


def test_api_keys(rerank_server):
    settings = GatewaySettings(rerank_server.grpc_url, api_keys=frozenset({KEY}))
    with GatewayThread(settings) as gw:
        body = {"model": BERT, "query": QUERY, "documents": DOCS[:2]}
        for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
            assert assert_error(post(gw, body, path), 401)["code"] == "invalid_api_key"
            wrong = post(gw, body, path, {"Authorization": "Bearer sk-wrong"})
            assert_error(wrong, 401, "Incorrect API key")
            good(gw, path, {"Authorization": f"Bearer {KEY}"})
        with pytest.raises(cohere.UnauthorizedError):
            co(gw, "sk-wrong").rerank(model=BERT, query=QUERY, documents=DOCS)
        assert len(co(gw, KEY).rerank(model=BERT, query=QUERY, documents=DOCS, top_n=1).results) == 1


def test_triton_unreachable_is_503():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with GatewayThread(GatewaySettings(f"127.0.0.1:{closed}", timeout_s=5)) as gw:
        body = {"model": QWEN, "query": "q", "documents": ["d"]}
        for path in ("/v1/rerank", "/v2/rerank"):
            assert assert_error(post(gw, body, path), 503, "unavailable")["type"] == "server_error"
        with pytest.raises(cohere.ServiceUnavailableError):
            co(gw).rerank(model=QWEN, query="q", documents=["d"])
