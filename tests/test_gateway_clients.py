"""Other vendors' clients, unchanged, against the gateway over a real tritonserver (the rerank server:
three rerankers and multilingual-e5-small): NVIDIA NIM's langchain-nvidia-ai-endpoints
(``NVIDIAEmbeddings``, ``NVIDIARerank``) and its ``/v1/ranking`` body as genai-perf sends it. Every
vector and score is compared with the gRPC client's; every bad input gets a clear 4xx and the next
good request is served."""

from __future__ import annotations

import warnings

import httpx
import numpy as np
import pytest

from tembed_gateway import GatewaySettings, GatewayThread

from .conftest import BERT, DOCS, EMBEDDER, QUERY, QWEN, RERANKERS, TEXTS

pytestmark = pytest.mark.slow

MAX_INPUTS = 40


@pytest.fixture(scope="module")
def gateway(rerank_server):
    settings = GatewaySettings(
        rerank_server.grpc_url, model_repository=rerank_server.model_repository, max_inputs=MAX_INPUTS
    )
    with GatewayThread(settings) as gw:
        yield gw


@pytest.fixture(scope="module")
def grpc(rerank_server):
    from tembed_client import EmbeddingClient

    made = {name: EmbeddingClient(rerank_server.grpc_url, name) for name in (*RERANKERS, EMBEDDER)}
    yield made
    for c in made.values():
        c.close()


def post(gw: GatewayThread, path: str, body: dict | bytes) -> httpx.Response:
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(f"{gw.url}{path}", timeout=60, **kw)


def assert_error(resp: httpx.Response, status: int, message: str = "", param: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert message in err["message"] and "Traceback" not in err["message"], err
    if param is not None:
        assert err["param"] == param, err


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# --- NVIDIA NIM ---------------------------------------------------------------------------------------


def nvidia(cls, gw: GatewayThread, model: str, **kw):
    with warnings.catch_warnings():  # "model not found in the known models": ours are not NVIDIA's
        warnings.simplefilter("ignore")
        return cls(base_url=f"{gw.url}/v1", model=model, api_key="nvapi-EMPTY", **kw)


def test_nvidia_embeddings_queries_and_passages(gateway, grpc):
    from langchain_nvidia_ai_endpoints import NVIDIAEmbeddings

    emb = nvidia(NVIDIAEmbeddings, gateway, EMBEDDER)
    docs = emb.embed_documents(TEXTS)  # input_type "passage"
    assert cosines(docs, grpc[EMBEDDER].embed(TEXTS, input_type="document")).min() >= 0.9999
    query = emb.embed_query(TEXTS[0])  # input_type "query"
    assert cosines([query], grpc[EMBEDDER].embed(TEXTS[:1], input_type="query")).min() >= 0.9999
    assert cosines([query], [docs[0]]).max() < 0.9999  # the two prompts differ

    cut = nvidia(NVIDIAEmbeddings, gateway, EMBEDDER, truncate="END", dimensions=128)
    assert cosines(cut.embed_documents(TEXTS[:2]), grpc[EMBEDDER].embed(TEXTS[:2], dimensions=128)).min() >= 0.9999


def test_nim_passage_suffix_and_input_type(gateway, grpc):
    expected = grpc[EMBEDDER].embed(TEXTS[:2], input_type="document")
    for body in (
        {"model": f"{EMBEDDER}-passage", "input": TEXTS[:2]},
        {"model": EMBEDDER, "input": TEXTS[:2], "input_type": "passage"},
    ):
        resp = post(gateway, "/v1/embeddings", body)
        assert resp.status_code == 200, resp.text
        assert cosines([d["embedding"] for d in resp.json()["data"]], expected).min() >= 0.9999
    clash = {"model": f"{EMBEDDER}-passage", "input": TEXTS[:1], "input_type": "query"}
    assert_error(post(gateway, "/v1/embeddings", clash), 400, "embeds documents", "input_type")
    bad = {"model": EMBEDDER, "input": TEXTS[:1], "input_type": "passages"}
    assert_error(post(gateway, "/v1/embeddings", bad), 400, "passage = document", "input_type")


@pytest.mark.parametrize("name", [BERT, QWEN])
def test_nvidia_rerank_gets_the_grpc_scores(gateway, grpc, name):
    from langchain_core.documents import Document
    from langchain_nvidia_ai_endpoints import NVIDIARerank

    expected = grpc[name].score(QUERY, DOCS)
    ranker = nvidia(NVIDIARerank, gateway, name, top_n=len(DOCS), truncate="END")
    ranked = ranker.compress_documents([Document(page_content=d) for d in DOCS], QUERY)
    got = {DOCS.index(d.page_content): d.metadata["relevance_score"] for d in ranked}
    assert [DOCS.index(d.page_content) for d in ranked] == [i for i, _ in expected.ranking()]
    assert max(abs(got[i] - s) for i, s in expected.ranking()) <= 1e-5


def test_nim_ranking_body_as_genai_perf_sends_it(gateway, grpc):
    expected = grpc[BERT].score(QUERY, DOCS)
    body = {"model": BERT, "query": {"text": QUERY}, "passages": [{"text": d} for d in DOCS]}
    resp = post(gateway, "/v1/ranking", body)
    assert resp.status_code == 200, resp.text
    rankings = resp.json()["rankings"]
    assert [r["index"] for r in rankings] == [i for i, _ in expected.ranking()]
    assert max(abs(r["logit"] - s) for r, (_, s) in zip(rankings, expected.ranking())) <= 1e-5


def test_nim_truncate_none_refuses_what_end_cuts(gateway, grpc):
    long = " ".join(["vector search"] * 600)  # far over the rerankers' 512 tokens
    body = {"model": BERT, "query": {"text": QUERY}, "passages": [{"text": DOCS[0]}, {"text": long}]}
    assert_error(post(gateway, "/v1/ranking", body), 400, "passages[1]", "passages")  # NIM's default: NONE
    resp = post(gateway, "/v1/ranking", {**body, "truncate": "END"})
    assert resp.status_code == 200, resp.text
    expected = grpc[BERT].score(QUERY, [DOCS[0], long])
    assert max(abs(r["logit"] - float(expected.scores[r["index"]])) for r in resp.json()["rankings"]) <= 1e-5


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (b"{not json", "not valid JSON", None),
        ({"model": BERT, "passages": [{"text": "a"}]}, "query is required", "query"),
        ({"model": BERT, "query": {"txt": "q"}, "passages": [{"text": "a"}]}, '{"text": string}', "query"),
        ({"model": BERT, "query": {"text": "q"}}, "passages is required", "passages"),
        ({"model": BERT, "query": {"text": "q"}, "passages": []}, "passages is required", "passages"),
        ({"model": BERT, "query": {"text": "q"}, "passages": [{"text": 3}]}, "passages[0]", "passages[0]"),
        ({"model": BERT, "query": {"text": "q"}, "passages": ["a"] * 41}, "too many passages", "passages"),
        ({"model": BERT, "query": {"text": "q"}, "passages": ["a"], "truncate": "START"}, "NONE, END", "truncate"),
        ({"query": {"text": "q"}, "passages": ["a"]}, "model is required", "model"),
        ({"model": EMBEDDER, "query": {"text": "q"}, "passages": ["a"]}, "is an embedding model", "model"),
        ({"model": BERT, "query": {"text": ""}, "passages": ["a"]}, "query is empty", None),
    ],
)
def test_nim_ranking_bad_input(gateway, body, message, param):
    assert_error(post(gateway, "/v1/ranking", body), 400, message, param)
    good = post(gateway, "/v1/ranking", {"model": BERT, "query": {"text": QUERY}, "passages": DOCS[:2]})
    assert good.status_code == 200 and len(good.json()["rankings"]) == 2


def test_nim_ranking_unknown_model_is_404(gateway):
    resp = post(gateway, "/v1/ranking", {"model": "nvidia/nv-rerankqa-mistral-4b-v3", "query": "q", "passages": ["a"]})
    assert_error(resp, 404, "does not exist", "model")


# --- Cohere embed -------------------------------------------------------------------------------------


def co2(gw: GatewayThread):
    import cohere

    return cohere.ClientV2(base_url=gw.url, api_key="x", max_retries=0, timeout=60)


def test_cohere_v2_embed_every_type(gateway, grpc):
    response = co2(gateway).embed(
        texts=TEXTS,
        model=EMBEDDER,
        input_type="search_document",
        embedding_types=["float", "int8", "uint8", "binary", "ubinary", "base64"],
    )
    e = response.embeddings
    expected = grpc[EMBEDDER].encode(TEXTS, input_type="document")
    assert cosines(e.float_, expected.embeddings).min() >= 0.9999
    floats = np.stack([np.frombuffer(__import__("base64").b64decode(b), "<f4") for b in e.base64])
    np.testing.assert_array_equal(floats, np.asarray(e.float_, dtype=np.float32))
    for kind in ("int8", "uint8", "binary", "ubinary"):
        want = grpc[EMBEDDER].encode(TEXTS, input_type="document", embedding_type=kind).embeddings
        np.testing.assert_array_equal(np.asarray(getattr(e, kind)), want.astype(np.int64), err_msg=kind)
    assert response.texts == TEXTS and response.meta.api_version.version == "2"
    assert response.meta.billed_units.input_tokens == int(expected.token_counts.sum())


def test_cohere_v2_query_and_output_dimension(gateway, grpc):
    response = co2(gateway).embed(texts=TEXTS[:2], model=EMBEDDER, input_type="search_query", output_dimension=128)
    want = grpc[EMBEDDER].embed(TEXTS[:2], input_type="query", dimensions=128)
    assert cosines(response.embeddings.float_, want).min() >= 0.9999


def test_cohere_v1_embed(gateway, grpc):
    import cohere

    v1 = cohere.Client(base_url=gateway.url, api_key="x", max_retries=0, timeout=60)
    plain = v1.embed(texts=TEXTS, model=EMBEDDER, input_type="search_query")
    assert plain.response_type == "embeddings_floats"
    assert cosines(plain.embeddings, grpc[EMBEDDER].embed(TEXTS, input_type="query")).min() >= 0.9999
    typed = v1.embed(texts=TEXTS[:2], model=EMBEDDER, embedding_types=["int8"])  # no input_type: the default
    want = grpc[EMBEDDER].encode(TEXTS[:2], embedding_type="int8").embeddings
    np.testing.assert_array_equal(np.asarray(typed.embeddings.int8), want.astype(np.int64))
    with pytest.raises(cohere.BadRequestError, match="context_length_exceeded|max length|tokens"):
        v1.embed(texts=[" ".join(["vector"] * 2000)], model=EMBEDDER, truncate="NONE")


@pytest.mark.parametrize(
    ("path", "body", "status", "message", "param"),
    [
        ("/v2/embed", {"model": EMBEDDER, "texts": ["a"]}, 400, "input_type is required", "input_type"),
        ("/v2/embed", {"model": EMBEDDER, "texts": ["a"], "input_type": "query"}, 400, "search_query", "input_type"),
        ("/v2/embed", {"model": EMBEDDER, "input_type": "search_query"}, 400, "texts is required", "texts"),
        ("/v1/embed", {"model": EMBEDDER, "texts": "a"}, 400, "list of strings", "texts"),
        ("/v1/embed", {"model": EMBEDDER, "texts": [1, 2]}, 400, "list of strings", "texts"),
        ("/v1/embed", {"model": EMBEDDER, "texts": ["a"], "embedding_types": ["int4"]}, 400, "int8", None),
        ("/v1/embed", {"model": EMBEDDER, "texts": ["a"], "truncate": "LEFT"}, 400, "END", "truncate"),
        ("/v1/embed", {"model": EMBEDDER, "texts": ["a"], "images": ["data:"]}, 400, "texts only", "images"),
        (
            "/v2/embed",
            {"model": EMBEDDER, "texts": ["a"], "input_type": "search_query", "max_tokens": 8},
            400,
            "max_tokens",
            "max_tokens",
        ),
        (
            "/v2/embed",
            {"model": EMBEDDER, "texts": ["a"], "input_type": "search_query", "output_dimension": 5000},
            400,
            "dimensions",
            "dimensions",  # the served range is the client's check, which names the option
        ),
        ("/v1/embed", {"model": BERT, "texts": ["a"]}, 400, "is a reranker", "model"),
        ("/v1/embed", {"model": "embed-v4.0", "texts": ["a"]}, 404, "does not exist", "model"),
    ],
)
def test_cohere_embed_bad_input(gateway, path, body, status, message, param):
    assert_error(post(gateway, path, body), status, message, param)
    good = post(gateway, "/v2/embed", {"model": EMBEDDER, "texts": ["a"], "input_type": "search_query"})
    assert good.status_code == 200 and len(good.json()["embeddings"]["float"]) == 1


# --- TEI ----------------------------------------------------------------------------------------------


def test_huggingface_hub_feature_extraction(gateway, grpc):
    from huggingface_hub import InferenceClient

    hf = InferenceClient(model=f"{gateway.url}/embed")
    one = hf.feature_extraction(TEXTS[0])
    assert cosines(one, grpc[EMBEDDER].embed(TEXTS[:1])).min() >= 0.9999
    query = hf.feature_extraction(TEXTS[1], prompt_name="query", truncate=True, truncation_direction="left")
    want = grpc[EMBEDDER].embed(TEXTS[1:2], input_type="query", truncate="START")
    assert cosines(query, want).min() >= 0.9999


def test_llama_index_text_embeddings_inference(gateway, grpc):
    """LlamaIndex's TEI client, unchanged (it posts ``{"inputs", "truncate"}`` to ``/embed``, no prompt_name):
    texts and queries both get the document prompt, as the route's default says; an e5 query wants
    ``query_instruction`` and the NAME-query model... which TEI's body cannot name, so the instruction rule
    is documented instead (README)."""
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    li = TextEmbeddingsInference(model_name=EMBEDDER, base_url=gateway.url, embed_batch_size=4)
    got = li.get_text_embedding_batch(TEXTS)
    assert cosines(got, grpc[EMBEDDER].embed(TEXTS)).min() >= 0.9999
    assert cosines([li.get_query_embedding(TEXTS[0])], grpc[EMBEDDER].embed(TEXTS[:1])).min() >= 0.9999


def test_haystack_tei_embedders(gateway, grpc):
    """haystack's TEI embedders (``api_type`` text_embeddings_inference): they post to the URL itself (TEI's
    ``POST /``). Their default ``normalize=False`` is refused (400 naming normalize); ``normalize=True``
    gets the served vectors."""
    from haystack import Document
    from haystack_integrations.common.huggingface_api.utils import HFEmbeddingAPIType
    from haystack_integrations.components.embedders.huggingface_api import (
        HuggingFaceAPIDocumentEmbedder,
        HuggingFaceAPITextEmbedder,
    )

    kw = {"api_type": HFEmbeddingAPIType.TEXT_EMBEDDINGS_INFERENCE, "api_params": {"url": gateway.url}}
    text = HuggingFaceAPITextEmbedder(**kw, normalize=True)
    got = text.run(text=TEXTS[0])["embedding"]
    assert cosines([got], grpc[EMBEDDER].embed(TEXTS[:1])).min() >= 0.9999
    docs = HuggingFaceAPIDocumentEmbedder(**kw, normalize=True, batch_size=4)
    out = docs.run(documents=[Document(content=t) for t in TEXTS])["documents"]
    assert cosines([d.embedding for d in out], grpc[EMBEDDER].embed(TEXTS)).min() >= 0.9999
    with pytest.raises(Exception, match="normalize"):
        HuggingFaceAPITextEmbedder(**kw).run(text=TEXTS[0])
    assert_error(post(gateway, "/", {"texts": TEXTS}), 400, "inputs is required", "inputs")
    assert_error(post(gateway, "/", {"inputs": TEXTS, "normalize": False}), 400, "normalize=True", "normalize")


def test_tei_embed_and_timing_headers(gateway, grpc):
    resp = post(gateway, "/embed", {"inputs": TEXTS, "normalize": True})
    assert resp.status_code == 200, resp.text
    assert cosines(resp.json(), grpc[EMBEDDER].embed(TEXTS)).min() >= 0.9999
    times = {
        k: float(resp.headers[k])
        for k in ("x-compute-time", "x-tokenization-time", "x-queue-time", "x-inference-time", "x-total-time")
    }
    assert 0 < times["x-inference-time"] <= times["x-total-time"]
    assert times["x-compute-time"] >= times["x-inference-time"]
    # From the server's own clock: the tokenizer's and the encoder's work, each a part of the call.
    server = grpc[EMBEDDER].encode(TEXTS).server_ns
    assert set(server) == {"tokenize_ns", "encode_ns"} and min(server.values()) > 0, server
    assert times["x-tokenization-time"] > 0 and times["x-queue-time"] >= 0
    assert times["x-tokenization-time"] + times["x-inference-time"] <= times["x-total-time"] + 1e-3
    too_long = {"inputs": [" ".join(["vector"] * 2000)], "truncate": False}
    assert_error(post(gateway, "/embed", too_long), 400, "", None)


def test_tei_rerank_body_next_to_jina_body(gateway, grpc):
    expected = grpc[BERT].score(QUERY, DOCS)
    resp = post(gateway, "/rerank", {"model": BERT, "query": QUERY, "texts": DOCS, "return_text": True})
    assert resp.status_code == 200, resp.text
    items = resp.json()
    assert [r["index"] for r in items] == [i for i, _ in expected.ranking()]
    assert max(abs(r["score"] - s) for r, (_, s) in zip(items, expected.ranking())) <= 1e-5
    assert all(r["text"] == DOCS[r["index"]] for r in items) and "x-inference-time" in resp.headers
    jina = post(gateway, "/rerank", {"model": BERT, "query": QUERY, "documents": DOCS})
    assert jina.status_code == 200 and "results" in jina.json()
    # TEI's body names no model: with three rerankers served, the 400 says to send one.
    assert_error(post(gateway, "/rerank", {"query": QUERY, "texts": DOCS}), 400, 'send "model"', "model")


def test_tei_tokenize_decode_info(gateway, grpc):
    resp = post(gateway, "/tokenize", {"inputs": [TEXTS[0]], "prompt_name": "query"})
    assert resp.status_code == 200, resp.text
    ids = [t["id"] for t in resp.json()[0]]
    assert ids == grpc[EMBEDDER].tokenize([TEXTS[0]], input_type="query").ids[0].tolist()
    assert resp.json()[0][0]["special"] and not resp.json()[0][1]["special"]
    bare = post(gateway, "/tokenize", {"inputs": TEXTS[0], "add_special_tokens": False}).json()[0]
    assert not any(t["special"] for t in bare)
    decoded = post(gateway, "/decode", {"ids": ids})
    assert decoded.status_code == 200 and decoded.json()[0].startswith("query:")
    # and the ids go back through /embed unchanged (token_ids.py): the query vector, prompt not doubled
    again = post(gateway, "/embed", {"inputs": [ids], "prompt_name": "query"})
    assert again.status_code == 200, again.text
    assert cosines(again.json(), grpc[EMBEDDER].embed(TEXTS[:1], input_type="query")).min() >= 0.9999
    info = httpx.get(f"{gateway.url}/info", timeout=30).json()
    assert info["model_id"] == EMBEDDER and info["max_input_length"] > 0 and "embedding" in info["model_type"]
    rinfo = httpx.get(f"{gateway.url}/info", params={"model": BERT}, timeout=30).json()
    assert "reranker" in rinfo["model_type"]


@pytest.mark.parametrize(
    ("path", "body", "status", "message", "param"),
    [
        ("/embed", {}, 400, "inputs is required", "inputs"),
        ("/embed", {"inputs": []}, 400, "must not be empty", "inputs"),
        ("/embed", {"inputs": [1.5]}, 400, "inputs must be", "inputs"),
        ("/embed", {"inputs": "a", "normalize": False}, 400, "normalize false", "normalize"),
        ("/embed", {"inputs": "a", "truncate": "yes"}, 400, "true or false", "truncate"),
        ("/embed", {"inputs": "a", "truncation_direction": "up"}, 400, "Right or Left", "truncation_direction"),
        ("/embed", {"inputs": "a", "prompt_name": "web"}, 400, "prompt_name must be", "prompt_name"),
        ("/embed", {"inputs": [[5, 6, 7]]}, 400, "check_embedding_ctx_length=False", "input"),
        ("/embed", {"inputs": "a", "model": BERT}, 400, "is a reranker", "model"),
        ("/rerank", {"model": BERT, "query": QUERY, "texts": []}, 400, "must not be empty", "texts"),
        ("/rerank", {"model": BERT, "query": QUERY, "texts": DOCS, "raw_scores": True}, 400, "raw_scores", None),
        ("/rerank", {"model": BERT, "query": 3, "texts": DOCS}, 400, "query is required", "query"),
        ("/decode", {"ids": "1 2"}, 400, "ids is required", "ids"),
        ("/decode", {"ids": [10**9]}, 400, "vocabulary", "ids"),
        ("/tokenize", {"inputs": [[1, 2]]}, 400, "list of strings", "inputs"),
    ],
)
def test_tei_bad_input(gateway, path, body, status, message, param):
    assert_error(post(gateway, path, body), status, message, param)
    good = post(gateway, "/embed", {"inputs": "a"})
    assert good.status_code == 200 and len(good.json()) == 1


# --- several models served ----------------------------------------------------------------------------


def test_demo_picks_an_embedding_model_and_ambiguity_names_the_argument(rerank_server, capsys):
    from tembed_client import EmbeddingClient, EmbeddingError
    from tembed_gateway.launch import demo_model, show_embedding
    from tembed_serving.supervisor import ServerError

    url = rerank_server.grpc_url
    assert demo_model(url, None) == EMBEDDER  # three rerankers and one embedder served
    assert demo_model(url, EMBEDDER) == EMBEDDER
    with pytest.raises(ServerError, match="--demo-model 'bert-cross-encoder-tiny' is not a served embedding"):
        demo_model(url, BERT)
    show_embedding(url, TEXTS[0], demo_model(url, None))
    assert f"model {EMBEDDER}:" in capsys.readouterr().out
    with EmbeddingClient(url) as client, pytest.raises(EmbeddingError) as exc:
        client.embed(TEXTS[:1])
    assert "model=NAME (Python)" in str(exc.value) and "--model NAME" in str(exc.value)


def test_nim_body_on_v1_rerank_and_timing_headers_on_v1_embeddings(gateway, grpc):
    """genai-perf ``--endpoint v1/rerank`` sends NIM's body there: NIM's answer; OpenAI's route carries
    TEI's timing headers too."""
    expected = grpc[BERT].score(QUERY, DOCS)
    body = {"model": BERT, "query": {"text": QUERY}, "passages": [{"text": d} for d in DOCS], "truncate": "END"}
    resp = post(gateway, "/v1/rerank", body)
    assert resp.status_code == 200, resp.text
    rankings = resp.json()["rankings"]
    assert max(abs(r["logit"] - float(expected.scores[r["index"]])) for r in rankings) <= 1e-5
    emb = post(gateway, "/v1/embeddings", {"model": EMBEDDER, "input": TEXTS[:2]})
    assert emb.status_code == 200 and float(emb.headers["x-inference-time"]) > 0
