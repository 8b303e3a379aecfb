"""The HTTP APIs' request and response shapes: parsing bodies into checked requests, rendering
results into bodies. Pure functions over dicts and the client's results; no I/O, no Triton.

- OpenAI ``/v1/embeddings`` (and ``/tokenize``, vLLM's shape): :func:`parse_request`,
  :func:`render_embeddings`, :func:`render_tokenize`;
- Jina / vLLM ``/v1/rerank`` and Cohere v2 ``/v2/rerank``: :func:`parse_rerank`, :func:`render_rerank`,
  :func:`render_rerank_v2`.

Request options are the contract's (``contract.options_for``): a field of that name in the body is
checked against its declaration and passed on as it is.
"""

from __future__ import annotations

import base64
import math
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from tembed_client import EmbeddingResult, RerankResult, TokenizeResult
from tembed_client.contract import EMBEDDING_TYPE, EMBEDDING_TYPE_DEFAULT, TASK_EMBED, TASK_RERANK, options_for

from .errors import bad_request

ENCODINGS = ("float", "base64")


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: list[str] | None  # exactly one of texts and token_ids is set
    token_ids: list[list[int]] | None
    encoding_format: str
    options: dict[str, Any]  # contract.options_for(TASK_EMBED), checked; absent: the server's default


def parse_input(value: object, max_inputs: int) -> tuple[list[str] | None, list[list[int]] | None]:
    """OpenAI's four input forms: str, list of str, list of int (one text), list of lists of int."""
    shapes = "a string, a list of strings, a list of token ids or a list of lists of token ids"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise bad_request(f"input must be {shapes}, not {type(value).__name__}", "input")
    if not value:
        raise bad_request("input must not be empty", "input")
    texts: list[str] | None = None
    ids: list[list[int]] | None = None
    if all(isinstance(v, str) for v in value):
        texts = value
    elif all(type(v) is int for v in value):  # type() rather than isinstance(): True is not a token
        ids = [value]
    elif all(isinstance(v, list) and v and all(type(t) is int for t in v) for v in value):
        ids = value
    else:
        raise bad_request(f"input must be {shapes} (non-empty, not mixed)", "input")
    n = len(texts if texts is not None else ids)  # type: ignore[arg-type]
    if n > max_inputs:
        raise bad_request(f"too many inputs: {n}; at most {max_inputs} per request", "input")
    if texts is not None:
        for i, text in enumerate(texts):
            if not text:
                raise bad_request(f"input[{i}] is an empty string", "input")
    return texts, ids


def parse_options(body: dict[str, Any], task: str) -> dict[str, Any]:
    """The request options of ``task`` the body carries (``contract.options_for``), each checked against
    its declaration; the model's own limits (a dimensions' range) are the client's to check."""
    options: dict[str, Any] = {}
    for option in options_for(task):
        value = body.get(option.name)
        if value is None:
            continue
        error = option.check(value)
        if error:
            raise bad_request(error, option.name)
        options[option.name] = option.normalize(value)
    return options


def json_object(body: object) -> dict:
    """``body`` if it is a JSON object: every route's first check."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def required_model(body: dict) -> str:
    """The body's ``model``: required, a non-empty string."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required and must be a non-empty string", "model")
    return model


def parse_request(body: object, max_inputs: int) -> EmbeddingRequest:
    """The body of /v1/embeddings and /tokenize. Accepted and ignored: ``user`` and any other field
    OpenAI clients may add."""
    body = json_object(body)
    model = required_model(body)
    if "input" not in body:
        raise bad_request("input is required", "input")
    texts, ids = parse_input(body["input"], max_inputs)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise bad_request(f"encoding_format must be 'float' or 'base64', got {encoding!r}", "encoding_format")
    return EmbeddingRequest(model, texts, ids, encoding, parse_options(body, TASK_EMBED))


@dataclass(frozen=True)
class RerankRequest:
    model: str
    query: str
    documents: list[str]
    top_n: int | None  # None: every document
    return_documents: bool
    options: dict[str, Any]  # contract.options_for(TASK_RERANK), checked


# What each task's models are called in messages, and the route that serves them.
TASK_ROUTES = {TASK_EMBED: ("an embedding model", "/v1/embeddings"), TASK_RERANK: ("a reranker", "/v1/rerank")}

# Cohere bills one search unit per query and up to this many documents.
COHERE_DOCS_PER_SEARCH_UNIT = 100


def optional_int(body: dict[str, Any], key: str, minimum: int) -> int | None:
    value = body.get(key)
    if value is not None and (type(value) is not int or value < minimum):  # type(): True is not 1
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise bad_request(f"{key} must be {kind}, got {value!r}", key)
    return value


def parse_documents(value: object, max_inputs: int) -> list[str]:
    """Jina's and vLLM's forms: a list of strings or of ``{"text": str}`` objects (mixed is fine)."""
    if not isinstance(value, list):
        raise bad_request(f"documents must be a list of strings, not {type(value).__name__}", "documents")
    if not value:
        raise bad_request("documents must not be empty", "documents")
    if len(value) > max_inputs:
        raise bad_request(f"too many documents: {len(value)}; at most {max_inputs} per request", "documents")
    docs = []
    for i, doc in enumerate(value):
        if isinstance(doc, dict) and isinstance(doc.get("text"), str):
            doc = doc["text"]
        if not isinstance(doc, str):
            raise bad_request(f'documents[{i}] must be a string or an object {{"text": string}}', "documents")
        docs.append(doc)  # empty texts are Triton's to refuse, with its message
    return docs


def parse_rerank(body: object, max_inputs: int, return_documents: bool) -> RerankRequest:
    """The body of /v1/rerank and /v2/rerank. ``return_documents`` is the route's default.

    Accepted and ignored: ``max_tokens_per_doc`` (Cohere; every pair is already cut to the model's
    max_length, keeping the prompt's end), ``truncate_prompt_tokens`` (vLLM), ``relevant_spans`` and
    ``priority`` (Cohere), ``user`` and any other field."""
    body = json_object(body)
    model = required_model(body)
    query = body.get("query")
    if not isinstance(query, str):  # "" is Triton's to refuse, with its message
        got = "missing" if query is None else f"a {type(query).__name__}"
        raise bad_request(f"query is required and must be a string, got {got}", "query")
    if "documents" not in body:
        raise bad_request("documents is required", "documents")
    documents = parse_documents(body["documents"], max_inputs)
    # vLLM's default top_n is 0, meaning every document: a client sending its defaults sends 0.
    top_n = optional_int(body, "top_n", 0) or None
    optional_int(body, "max_tokens_per_doc", 1)
    flag = body.get("return_documents")
    if flag is not None and not isinstance(flag, bool):
        raise bad_request(f"return_documents must be true or false, got {flag!r}", "return_documents")
    return_documents = return_documents if flag is None else flag
    return RerankRequest(model, query, documents, top_n, return_documents, parse_options(body, TASK_RERANK))


def ranked_results(result: RerankResult, req: RerankRequest) -> list[dict[str, Any]]:
    results = []
    for index, score in result.ranking(req.top_n):
        item: dict[str, Any] = {"index": index, "relevance_score": score}
        if req.return_documents:
            item["document"] = {"text": req.documents[index]}
        results.append(item)
    return results


def render_rerank(result: RerankResult, req: RerankRequest) -> bytes:
    """Jina / vLLM: ``{id, model, results: [{index, relevance_score, document?}], usage}``."""
    body = {
        "id": f"rerank-{uuid.uuid4().hex}",
        "model": req.model,
        "results": ranked_results(result, req),
        "usage": {"total_tokens": int(result.token_counts.sum())},
    }
    return orjson.dumps(body)


def render_rerank_v2(result: RerankResult, req: RerankRequest) -> bytes:
    """Cohere v2: ``{id, results: [{index, relevance_score}], meta}``; no model, no usage."""
    tokens = int(result.token_counts.sum())
    meta = {
        "api_version": {"version": "2"},
        "billed_units": {"search_units": math.ceil(len(req.documents) / COHERE_DOCS_PER_SEARCH_UNIT)},
        "tokens": {"input_tokens": tokens, "output_tokens": 0},
    }
    return orjson.dumps({"id": str(uuid.uuid4()), "results": ranked_results(result, req), "meta": meta})


def render_embeddings(result: EmbeddingResult, model: str, encoding: str) -> bytes:
    emb = result.embeddings
    compact = result.embedding_type != EMBEDDING_TYPE_DEFAULT
    if compact:
        # int8/uint8 values, or the packed sign bits of binary/ubinary (one byte each): JSON integers,
        # or base64 of the very bytes (the client's array in memory, one byte per value).
        raw = np.ascontiguousarray(emb)
        vectors: Any = (
            [base64.b64encode(row.tobytes()).decode("ascii") for row in raw] if encoding == "base64" else list(raw)
        )
    elif encoding == "base64":
        # OpenAI's base64 is the little-endian float32 bytes of each vector.
        raw = np.ascontiguousarray(emb, dtype="<f4")
        vectors = [base64.b64encode(row.tobytes()).decode("ascii") for row in raw]
    else:
        vectors = list(np.ascontiguousarray(emb, dtype=np.float32))  # rows go to orjson as numpy
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    tokens = int(result.token_counts.sum())
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    if result.original_token_counts is not None:
        # Extensions (OpenAI clients keep unknown fields): tokens before truncation, and which inputs
        # were cut to the model's max_length (contract.TOKEN_COUNT_ORIGINAL says what the count means).
        usage["original_tokens"] = int(result.original_token_counts.sum())
        for item, cut in zip(data, (result.original_token_counts > result.token_counts).tolist()):
            item["truncated"] = cut
    body = {"object": "list", "data": data, "model": model, "usage": usage}
    if compact:
        body[EMBEDDING_TYPE] = result.embedding_type  # extension: what the values are
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def render_tokenize(result: TokenizeResult, model: str, max_length: int) -> bytes:
    """``{object, model, data: [{index, tokens, token_count, original_token_count, truncated}],
    max_model_len, usage}``: the ids the model embeds (prompt and special tokens included)."""
    data = [
        {"index": i, "tokens": ids, "token_count": n, "original_token_count": o, "truncated": o > n}
        for i, (ids, n, o) in enumerate(
            zip(result.ids, result.token_counts.tolist(), result.original_token_counts.tolist())
        )
    ]
    tokens = int(result.token_counts.sum())
    body = {
        "object": "list",
        "model": model,
        "data": data,
        "max_model_len": max_length,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
