"""The OpenAI-compatible gateway with the real ``openai`` package, against a real tritonserver."""

from __future__ import annotations

import base64
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from tembed_gateway import GatewaySettings, GatewayThread

from .conftest import SERVED, TEXTS

pytestmark = pytest.mark.slow

E5 = "multilingual-e5-small"
ALIAS = "intfloat/multilingual-e5-small"
MAX_INPUTS, MAX_BODY = 64, 64 << 10  # small, so the limits are cheap to reach
KEY = "sk-test-right"


@pytest.fixture(scope="module")
def gateway(server):
    settings = GatewaySettings(
        server.grpc_url,
        aliases={ALIAS: E5},
        model_repository=server.model_repository,
        max_inputs=MAX_INPUTS,
        max_body_bytes=MAX_BODY,
    )
    with GatewayThread(settings) as gw:
        yield gw


@pytest.fixture(scope="module")
def auth_gateway(server):
    with GatewayThread(GatewaySettings(server.grpc_url, api_keys=frozenset({KEY, "sk-other"}))) as gw:
        yield gw


@pytest.fixture(scope="module")
def down_gateway():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with GatewayThread(GatewaySettings(f"127.0.0.1:{closed}", timeout_s=5)) as gw:
        yield gw


@pytest.fixture(scope="module")
def grpc(clients):
    """The gRPC clients every gateway answer is compared with."""
    return clients


def oai(gw: GatewayThread, api_key: str = "EMPTY") -> openai.Client:
    return openai.Client(base_url=f"{gw.url}/v1", api_key=api_key, max_retries=0)


def post(gw: GatewayThread, body: bytes | dict, headers: dict | None = None) -> httpx.Response:
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(f"{gw.url}/v1/embeddings", headers=headers, timeout=30, **kw)


def assert_error(resp: httpx.Response, status: int, message: str = "", param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert message in err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize("model", [ALIAS, *SERVED])
def test_article_snippet_gives_the_grpc_vector(gateway, grpc, model):
    client = openai.Client(base_url=f"{gateway.url}/v1", api_key="EMPTY")
    response = client.embeddings.create(model=model, input="北京是中华人民共和国的首都。")

    served = E5 if model == ALIAS else model
    expected = grpc[served].encode("北京是中华人民共和国的首都。")
    got = np.array(response.data[0].embedding, dtype=np.float32)
    np.testing.assert_array_equal(got, expected.embeddings)  # openai asks for base64: bit-exact
    assert response.model == model and response.object == "list" and response.data[0].index == 0
    assert response.usage.prompt_tokens == response.usage.total_tokens == int(expected.token_counts)


def test_list_longer_than_max_texts_comes_back_in_order(gateway, grpc):
    texts = [f"{t} #{i}" for i, t in enumerate(TEXTS * 4)]  # 24 texts: 3 Triton requests of 8
    response = oai(gateway).embeddings.create(model=E5, input=texts, encoding_format="float")
    expected = grpc[E5].encode(texts)
    assert [d.index for d in response.data] == list(range(len(texts)))
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    # The gateway sends its 3 requests at once, and the encoder (max_batch_size: the profile's max_rows,
    # 64 here, for long_text chunk) may run them as one batch, which ONNX Runtime rounds differently.
    np.testing.assert_allclose(got, expected.embeddings, rtol=0, atol=1e-6)
    assert response.usage.total_tokens == int(expected.token_counts.sum())
    one = oai(gateway).embeddings.create(model=E5, input=texts[:8], encoding_format="float")
    got = np.array([d.embedding for d in one.data], dtype=np.float32)
    np.testing.assert_array_equal(got, grpc[E5].embed(texts[:8]))  # float32's shortest repr round-trips


def test_base64_is_little_endian_float32(gateway, grpc):
    resp = post(gateway, {"model": "qwen3-embedding-tiny", "input": TEXTS[:3], "encoding_format": "base64"})
    assert resp.status_code == 200, resp.text
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in resp.json()["data"]])
    np.testing.assert_array_equal(got, grpc["qwen3-embedding-tiny"].embed(TEXTS[:3]))


@pytest.mark.parametrize("model", SERVED)
def test_dimensions(gateway, grpc, model):
    info = grpc[model].model_info()
    dims = max(info.min_dimension, info.dimension // 2)
    response = oai(gateway).embeddings.create(model=model, input=TEXTS[:2], dimensions=dims)
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert got.shape == (2, dims)
    np.testing.assert_array_equal(got, grpc[model].embed(TEXTS[:2], dimensions=dims))


def test_instruction_and_input_type_extensions(gateway, grpc):
    name, instruction = "qwen3-embedding-tiny", "Given a question, retrieve passages that answer it"
    response = oai(gateway).embeddings.create(
        model=name, input=TEXTS[:2], extra_body={"instruction": instruction, "input_type": "query"}, user="u-1"
    )
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_array_equal(got, grpc[name].embed(TEXTS[:2], instruction=instruction, input_type="query"))
    assert not np.array_equal(got, grpc[name].embed(TEXTS[:2]))

    query = oai(gateway).embeddings.create(model=E5, input=TEXTS[0], extra_body={"input_type": "query"})
    np.testing.assert_array_equal(query.data[0].embedding, grpc[E5].embed(TEXTS[0], input_type="query"))


def test_token_ids_are_decoded_with_the_served_tokenizer(gateway, grpc, server):
    tok = Tokenizer.from_file(str(server.model_repository / f"{E5}-tokenizer" / "1" / "tokenizer.json"))
    texts = TEXTS[:3]
    ids = [tok.encode(t).ids for t in texts]  # with special tokens, as tiktoken-style callers send
    client = oai(gateway)
    many = client.embeddings.create(model=E5, input=ids)
    one = client.embeddings.create(model=E5, input=ids[0])
    expected = grpc[E5].encode(texts)
    got = np.array([d.embedding for d in many.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected.embeddings, atol=1e-6)
    np.testing.assert_allclose(one.data[0].embedding, expected.embeddings[0], atol=1e-6)
    assert many.usage.total_tokens == int(expected.token_counts.sum())


def test_token_ids_without_the_repository_are_refused(auth_gateway):
    resp = post(auth_gateway, {"model": E5, "input": [[1, 2, 3]]}, {"Authorization": f"Bearer {KEY}"})
    assert_error(resp, 400, "--model-repository", "input")


def test_usage_is_the_servers_token_count(gateway, grpc):
    for name in SERVED:
        response = oai(gateway).embeddings.create(model=name, input=TEXTS)
        assert response.usage.prompt_tokens == int(grpc[name].encode(TEXTS).token_counts.sum())


def test_models_and_health(gateway):
    ids = {m.id: m for m in oai(gateway).models.list()}
    # Every embedding model and alias again as NAME-query: the same model with input_type "query".
    assert set(ids) == {*SERVED, ALIAS, *(f"{n}-query" for n in (*SERVED, ALIAS))}
    assert ids[ALIAS].object == "model" and ids[ALIAS].owned_by == "tembed"
    assert ids[f"{ALIAS}-query"].root == E5
    health = httpx.get(f"{gateway.url}/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (b'{"model": "x", "input": ', "not valid JSON", None),
        (b"[1, 2]", "must be a JSON object", None),
        ({"input": "a"}, "model is required", "model"),
        ({"model": E5}, "input is required", "input"),
        ({"model": E5, "input": []}, "must not be empty", "input"),
        ({"model": E5, "input": ["ok", ""]}, "input[1] is an empty string", "input"),
        ({"model": E5, "input": ["ok", 3]}, "not mixed", "input"),
        ({"model": E5, "input": [True, False]}, "not mixed", "input"),
        ({"model": E5, "input": {"text": "a"}}, "not dict", "input"),
        ({"model": E5, "input": ["x"] * (MAX_INPUTS + 1)}, f"at most {MAX_INPUTS} per request", "input"),
        ({"model": E5, "input": [[5, -1]]}, "outside this model's vocabulary", "input"),
        ({"model": E5, "input": "a", "dimensions": "16"}, "dimensions must be an integer", "dimensions"),
        ({"model": E5, "input": "a", "dimensions": 16}, "dimensions must be between 32 and 384", "dimensions"),
        ({"model": E5, "input": "a", "encoding_format": "int8"}, "encoding_format", "encoding_format"),
        ({"model": E5, "input": "a", "input_type": "passages"}, "input_type", "input_type"),
        ({"model": E5, "input": "a", "instruction": 7}, "instruction must be a string", "instruction"),
        # Checked by Triton, not the gateway: its INVALID_ARGUMENT and message come through.
        (
            {"model": "qwen3-embedding-tiny", "input": "a", "input_type": "document", "instruction": "x"},
            "documents never carry an instruction",
            None,
        ),
    ],
)
def test_bad_requests_are_400_in_openai_shape(gateway, body, message, param):
    err = assert_error(post(gateway, body), 400, message, param)
    assert err["type"] == "invalid_request_error"


def test_openai_client_raises_its_own_errors(gateway):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        oai(gateway).embeddings.create(model="text-embedding-3-small", input="a")
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        oai(gateway).embeddings.create(model=E5, input="a", dimensions=4096)


def test_unknown_model_and_path_are_404(gateway):
    err = assert_error(post(gateway, {"model": "nope", "input": "a"}), 404, "'nope' does not exist", "model")
    assert err["code"] == "model_not_found"
    err = assert_error(httpx.get(f"{gateway.url}/v1/nothing"), 404, "GET /v1/nothing is not served")
    assert "POST /v1/embeddings" in err["message"] and "POST /v1/ranking" in err["message"]
    assert_error(httpx.get(f"{gateway.url}/v1/embeddings"), 405, "GET /v1/embeddings is not served")


def test_body_over_the_limit_is_413(gateway, grpc):
    err = assert_error(post(gateway, {"model": E5, "input": "长" * MAX_BODY}), 413, "larger than")
    assert err["code"] == "request_too_large"
    # Without Content-Length (chunked), the limit holds too.
    chunks = iter([b'{"model": "multilingual-e5-small", "input": "', b"x" * MAX_BODY, b'"}'])
    assert_error(httpx.post(f"{gateway.url}/v1/embeddings", content=chunks), 413)


def test_api_keys(auth_gateway):
    url = f"{auth_gateway.url}/v1/embeddings"
    body = {"model": E5, "input": "a"}
    assert assert_error(httpx.post(url, json=body), 401)["code"] == "invalid_api_key"
    assert_error(httpx.post(url, json=body, headers={"Authorization": "Bearer sk-wrong"}), 401, "Incorrect API key")
    assert_error(httpx.get(f"{auth_gateway.url}/v1/models"), 401)
    with pytest.raises(openai.AuthenticationError):
        oai(auth_gateway, "sk-wrong").embeddings.create(model=E5, input="a")
    assert len(oai(auth_gateway, KEY).embeddings.create(model=E5, input="a").data[0].embedding) == 384
    assert httpx.get(f"{auth_gateway.url}/health").status_code == 200  # probes need no key


def test_triton_unreachable_is_503(down_gateway):
    err = assert_error(post(down_gateway, {"model": E5, "input": "a"}), 503, "unavailable")
    assert err["type"] == "server_error"
    assert_error(httpx.get(f"{down_gateway.url}/v1/models"), 503)
    assert httpx.get(f"{down_gateway.url}/health").status_code == 503
    with pytest.raises(openai.InternalServerError):
        oai(down_gateway).embeddings.create(model=E5, input="a")


def test_concurrent_clients_get_their_own_results(gateway, grpc):
    jobs = [(SERVED[i % len(SERVED)], [f"{TEXTS[i % len(TEXTS)]} ({i})"] * (1 + i % 11)) for i in range(24)]
    expected = [grpc[name].embed(texts) for name, texts in jobs]

    def run(job):
        name, texts = job
        response = oai(gateway).embeddings.create(model=name, input=texts)
        return np.array([d.embedding for d in response.data], dtype=np.float32)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(run, jobs))
    for g, e in zip(got, expected):
        # Concurrent requests may be merged into one encoder batch: same vectors up to float rounding
        # (distinct texts per job differ by far more than this).
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


def tokenize(gw: GatewayThread, body: dict) -> list[list[int]]:
    resp = httpx.post(f"{gw.url}/tokenize", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    return [d["tokens"] for d in resp.json()["data"]]


@pytest.mark.parametrize("input_type", [None, "query"])
def test_tokenize_ids_are_embedded_as_given(gateway, grpc, input_type):
    """/tokenize's ids (prompt and special tokens included) sent back: nothing is added a second time."""
    extra = {"input_type": input_type} if input_type else {}
    ids = tokenize(gateway, {"model": E5, "input": TEXTS[:3], **extra})
    assert tokenize(gateway, {"model": E5, "input": ids, **extra}) == ids  # the same ids, not 2 more
    response = oai(gateway).embeddings.create(model=E5, input=ids, extra_body=extra)
    expected = grpc[E5].encode(TEXTS[:3], input_type=input_type)
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected.embeddings, atol=1e-6)
    assert response.usage.total_tokens == int(expected.token_counts.sum()) == sum(map(len, ids))


def byte_level_tiktoken():
    """A real tiktoken Encoding of another vocabulary (bytes 0-255 as ids; cl100k itself is downloaded on
    first use, and tests run offline): every id is inside e5's vocabulary, as cl100k's are."""
    import tiktoken

    ranks = {bytes([b]): b for b in range(256)}
    return tiktoken.Encoding("bytes", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={})


def test_langchain_default_tiktoken_ids_are_refused_not_embedded(gateway, grpc, monkeypatch):
    """langchain-openai's default (check_embedding_ctx_length=True) sends tiktoken ids: a 400 naming
    the flag, never a 200 with vectors of another text; with the flag off it embeds the text."""
    from langchain_openai import OpenAIEmbeddings
    from langchain_openai.embeddings import base

    monkeypatch.setattr(base.tiktoken, "encoding_for_model", lambda _name: byte_level_tiktoken())
    kw = dict(base_url=f"{gateway.url}/v1", api_key="EMPTY", max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        OpenAIEmbeddings(model=E5, **kw).embed_documents(TEXTS[:2])
    message = exc.value.body["message"]
    assert "check_embedding_ctx_length=False" in message and "not a sequence of token ids" in message
    got = np.array(OpenAIEmbeddings(model=E5, check_embedding_ctx_length=False, **kw).embed_documents(TEXTS[:2]))
    expected = grpc[E5].embed(TEXTS[:2])
    assert (np.sum(got * expected, axis=1) >= 0.9999).all()


def test_ids_of_another_tokenizer_are_refused(gateway, server):
    """Ids in the vocabulary that do not survive decode -> re-encode (no special tokens, another
    tokenizer's pieces) get a 400; the gateway keeps serving."""
    enc = byte_level_tiktoken().encode_ordinary("Hello world")
    assert_error(post(gateway, {"model": E5, "input": [enc]}), 400, "check_embedding_ctx_length=False", "input")
    tok = Tokenizer.from_file(str(server.model_repository / f"{E5}-tokenizer" / "1" / "tokenizer.json"))
    bare = tok.encode("Hello world", add_special_tokens=False).ids  # the text's ids, no <s> </s>
    assert_error(post(gateway, {"model": E5, "input": bare}), 400, "from position 0", "input")
    assert post(gateway, {"model": E5, "input": tok.encode("Hello world").ids}).status_code == 200
