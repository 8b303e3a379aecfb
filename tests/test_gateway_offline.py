"""The gateway's pure parts, without Triton: parsing each API's bodies, rendering results, and the one
table from an error's reason to its HTTP answer, fed with errors as the serving side and Triton send them."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest
from tritonclient.utils import InferenceServerException

from tembed_client import EmbeddingError, EmbeddingResult, RerankResult, TokenizeResult
from tembed_client import contract as c
from tembed_gateway.errors import ERRORS, ApiError, bad_request
from tembed_gateway.protocols import (
    parse_options,
    parse_request,
    parse_rerank,
    render_embeddings,
    render_rerank,
    render_rerank_v2,
    render_tokenize,
)


def answer(exc: EmbeddingError) -> tuple[int, dict, dict]:
    response = ApiError.from_client(exc, "triton:8001").response(retry_after_s=3)
    return response.status_code, orjson.loads(response.body)["error"], dict(response.headers)


def from_server(message: str, reason: str, param: str | None, status: str = "StatusCode.INVALID_ARGUMENT"):
    """An error as a Triton model of ours sends it through the ensemble."""
    tagged = f"in ensemble 'e5', {c.tag_error(message, reason, param)}"
    return EmbeddingError.from_triton(InferenceServerException(tagged, status=status))


# --- errors: reason -> HTTP ---------------------------------------------------------------------------


def test_every_reason_has_an_answer():
    assert set(ERRORS) == set(c.REASONS)
    for reason in c.REASONS:
        status, type_, _ = ERRORS[reason]
        assert 400 <= status < 600 and type_ in ("invalid_request_error", "server_error")


@pytest.mark.parametrize(
    ("reason", "param", "status", "code", "field"),
    [
        (c.CONTEXT_LENGTH_EXCEEDED, c.TEXT, 400, "context_length_exceeded", "input"),
        (c.TOO_LARGE, c.TEXT, 413, "request_too_large", "input"),
        (c.TOO_LARGE, c.DOCUMENTS, 413, "request_too_large", "documents"),
        (c.INVALID_ARGUMENT, c.EMBEDDING_TYPE, 400, None, "embedding_type"),
        (c.INVALID_ARGUMENT, c.INSTRUCTION, 400, None, "instruction"),
        (c.UNSUPPORTED, c.INSTRUCTION, 400, None, "instruction"),
        (c.INVALID_ARGUMENT, None, 400, None, None),
    ],
)
def test_a_serving_side_error_keeps_its_reason_and_field(reason, param, status, code, field):
    exc = from_server("text[0] is 600 tokens; the limit is 512", reason, param)
    assert (exc.reason, exc.param) == (reason, param)
    assert "[tembed" not in exc.message and exc.message.startswith("in ensemble 'e5', text[0]")
    got, err, _ = answer(exc)
    assert (got, err["code"], err["param"]) == (status, code, field)
    assert err["message"] == exc.message


@pytest.mark.parametrize(
    ("status", "message", "http", "code", "retry_after"),
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", 503, "triton_unavailable", None),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", 429, "overloaded", "3"),
        ("StatusCode.RESOURCE_EXHAUSTED", "anything", 429, "overloaded", "3"),
        ("StatusCode.UNAVAILABLE", "Request timeout expired", 504, "timeout", None),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'e5' has no available versions", 503, "draining", "3"),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'x' is not found", 404, "model_not_found", None),
        ("StatusCode.INTERNAL", "Stub process 'e5-encoder_0_0' is not healthy.", 503, "triton_unavailable", None),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", 504, "timeout", None),
        ("StatusCode.INTERNAL", "something broke", 500, "internal_error", None),
    ],
)
def test_tritons_own_errors_are_classified_once(status, message, http, code, retry_after):
    got, err, headers = answer(EmbeddingError.from_triton(InferenceServerException(message, status=status)))
    assert (got, err["code"], headers.get("retry-after")) == (http, code, retry_after)
    if http == 503 and code == "triton_unavailable":
        assert err["message"].startswith("Triton at triton:8001 is unavailable")


def test_gateway_errors_take_the_same_table():
    assert ApiError(c.UNAUTHENTICATED, "no key").response().status_code == 401
    err = bad_request("dimensions must be an integer, not str", c.DIMENSIONS)
    assert (err.status, err.param, err.type) == (400, "dimensions", "invalid_request_error")
    assert ApiError(c.MODEL_NOT_FOUND, "no such model").param == "model"
    draining = ApiError(c.DRAINING, "shutting down").response(retry_after_s=2)
    assert draining.status_code == 503 and draining.headers["retry-after"] == "2"


# --- protocols: parsing --------------------------------------------------------------------------------


def test_parse_request_takes_every_declared_option():
    body = {
        "model": "e5",
        "input": ["a", "b"],
        "dimensions": 128,
        "truncate": "start",
        "input_type": "query",
        "embedding_type": "int8",
        "long_text": "chunk",
        "instruction": "Find it",
        "embedding_outputs": "dense,sparse",
        "priority": "low",
        "user": "ignored",
    }
    req = parse_request(body, max_inputs=8)
    assert req.texts == ["a", "b"] and req.token_ids is None and req.encoding_format == "float"
    assert req.options == {
        "instruction": "Find it",
        "input_type": "query",
        "dimensions": 128,
        "truncate": "START",  # any case, sent upper-cased
        "long_text": "chunk",
        "embedding_type": "int8",
        "embedding_outputs": "dense,sparse",
        "priority": "low",
    }
    assert set(req.options) == {o.name for o in c.options_for(c.TASK_EMBED)}


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ({"input": "a"}, "model is required", "model"),
        ({"model": "m"}, "input is required", "input"),
        ({"model": "m", "input": [[1, 2], "x"]}, "not mixed", "input"),
        ({"model": "m", "input": ["x"] * 9}, "at most 8 per request", "input"),
        ({"model": "m", "input": "a", "dimensions": True}, "dimensions must be an integer", "dimensions"),
        ({"model": "m", "input": "a", "dimensions": 0}, "dimensions must be a positive integer", "dimensions"),
        ({"model": "m", "input": "a", "truncate": "middle"}, "truncate must be one of END, START, NONE", "truncate"),
        ({"model": "m", "input": "a", "long_text": "CHUNK"}, "long_text must be one of truncate, chunk", "long_text"),
        ({"model": "m", "input": "a", "embedding_type": "fp16"}, "embedding_type must be one of", "embedding_type"),
        # "passage" is NIM's name for document (contract.INPUT_TYPE_ALIASES); anything else is refused.
        ({"model": "m", "input": "a", "input_type": "search"}, "input_type must be one of query", "input_type"),
        ({"model": "m", "input": "a", "instruction": 7}, "instruction must be a string", "instruction"),
        ({"model": "m", "input": "a", "encoding_format": "int8"}, "encoding_format", "encoding_format"),
    ],
)
def test_parse_request_refuses(body, message, param):
    with pytest.raises(ApiError) as exc:
        parse_request(body, max_inputs=8)
    assert exc.value.status == 400 and message in exc.value.message and exc.value.param == param


def test_parse_rerank_forms():
    req = parse_rerank(
        {"model": "r", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 0, "instruction": "x"},
        max_inputs=4,
        return_documents=True,
    )
    assert (req.documents, req.top_n, req.return_documents, req.options) == (
        ["a", "b"],
        None,
        True,
        {"instruction": "x"},
    )
    with pytest.raises(ApiError, match="documents must not be empty"):
        parse_rerank({"model": "r", "query": "q", "documents": []}, 4, True)
    with pytest.raises(ApiError, match="return_documents must be true or false"):
        parse_rerank({"model": "r", "query": "q", "documents": ["a"], "return_documents": "yes"}, 4, True)
    # Only the rerank task's options: an embedding option is not read.
    assert parse_options({"dimensions": 3, "instruction": "i"}, c.TASK_RERANK) == {"instruction": "i"}


# --- protocols: rendering ------------------------------------------------------------------------------


def test_render_embeddings_float_and_base64():
    emb = np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    result = EmbeddingResult(emb, np.array([3, 4], np.int32), "e5", np.array([3, 9], np.int32))
    body = orjson.loads(render_embeddings(result, "alias", "float"))
    assert body["model"] == "alias" and body["usage"] == {"prompt_tokens": 7, "total_tokens": 7, "original_tokens": 12}
    assert [d["truncated"] for d in body["data"]] == [False, True]
    assert np.allclose([d["embedding"] for d in body["data"]], emb)
    b64 = orjson.loads(render_embeddings(result, "alias", "base64"))["data"][1]["embedding"]
    assert np.array_equal(np.frombuffer(base64.b64decode(b64), "<f4"), emb[1])


def test_render_compact_embeddings():
    packed = np.array([[-128, 127]], dtype=np.int8)
    result = EmbeddingResult(packed, np.array([2], np.int32), "e5", None, "binary")
    body = orjson.loads(render_embeddings(result, "e5", "float"))
    assert body["embedding_type"] == "binary" and body["data"][0]["embedding"] == [-128, 127]
    assert "truncated" not in body["data"][0] and "original_tokens" not in body["usage"]
    raw = orjson.loads(render_embeddings(result, "e5", "base64"))["data"][0]["embedding"]
    assert np.array_equal(np.frombuffer(base64.b64decode(raw), np.int8), packed[0])


def test_render_rerank_and_tokenize():
    req = parse_rerank({"model": "r", "query": "q", "documents": ["a", "b", "c"], "top_n": 2}, 8, True)
    result = RerankResult(np.array([0.1, 0.9, 0.5], np.float32), np.array([4, 5, 6], np.int32), "r")
    jina = orjson.loads(render_rerank(result, req))
    assert [(r["index"], r["document"]["text"]) for r in jina["results"]] == [(1, "b"), (2, "c")]
    assert jina["usage"] == {"total_tokens": 15}
    cohere = orjson.loads(
        render_rerank_v2(result, parse_rerank({"model": "r", "query": "q", "documents": ["a"] * 3}, 8, False))
    )
    assert [r["index"] for r in cohere["results"]] == [1, 2, 0] and "document" not in cohere["results"][0]
    assert cohere["meta"]["billed_units"] == {"search_units": 1}
    tok = TokenizeResult([np.array([1, 2, 3]), np.array([4])], np.array([3, 1]), np.array([5, 1]), "e5")
    body = orjson.loads(render_tokenize(tok, "e5", 512))
    assert [d["tokens"] for d in body["data"]] == [[1, 2, 3], [4]] and body["max_model_len"] == 512
    assert [d["truncated"] for d in body["data"]] == [True, False]


def test_nim_passage_is_document():
    assert parse_request({"model": "m", "input": "a", "input_type": "passage"}, 8).options == {"input_type": "document"}
