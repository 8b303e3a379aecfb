"""Cohere's embed API, ``POST /v1/embed`` and ``POST /v2/embed`` (``cohere.Client.embed``,
``cohere.ClientV2.embed``): parsing and rendering, pure as ``protocols`` is.

- ``input_type``: ``search_query`` -> query, ``search_document`` -> document; ``classification`` and
  ``clustering`` -> query (E5's and BGE's model cards: the query prompt for symmetric tasks and features);
  ``image`` is refused. v1 may leave it out (the model's default), v2 requires it, as Cohere does.
- ``embedding_types``: ``float``, ``int8``, ``uint8``, ``binary``, ``ubinary`` are the served compact vectors
  (``contract.EMBEDDING_TYPES``: the same names and meanings, packed bits as signed / unsigned bytes);
  ``base64`` is the float32 little-endian bytes of each vector. One server call per type asked.
- ``truncate`` NONE/START/END is the contract's option; ``output_dimension`` (v2) is ``dimensions``;
  ``max_tokens`` (v2) below the model's max length is refused (it would cut where we do not).
- the answer: v1 without ``embedding_types`` ``{"response_type": "embeddings_floats", id, embeddings: [[..]],
  texts, meta}``, otherwise ``{"response_type": "embeddings_by_type", id, embeddings: {type: [[..]]}, texts,
  meta}``; ``meta``: api_version, billed_units.input_tokens and tokens.input_tokens (the server's counts).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from tembed_client import EmbeddingResult
from tembed_client.contract import (
    DIMENSIONS,
    EMBEDDING_TYPE_DEFAULT,
    EMBEDDING_TYPES,
    INPUT_TYPE,
    INPUT_TYPES,
    OPTIONS,
    TRUNCATE,
    UNSUPPORTED,
)

from .errors import ApiError, bad_request
from .protocols import json_object, parse_input, required_model

QUERY, DOCUMENT = INPUT_TYPES
INPUT_TYPE_MAP = {"search_query": QUERY, "search_document": DOCUMENT, "classification": QUERY, "clustering": QUERY}
BASE64 = "base64"  # Cohere's: float32 bytes, base64
TYPES = (*EMBEDDING_TYPES, BASE64)


@dataclass(frozen=True)
class CohereEmbedRequest:
    version: int  # 1 or 2
    model: str
    texts: list[str]
    types: list[str] | None  # None: v1's plain floats
    options: dict[str, Any]  # the contract's options, checked (no embedding_type: one call per type)
    max_tokens: int | None


def parse_embed(body: object, version: int, max_inputs: int) -> CohereEmbedRequest:
    body = json_object(body)
    model = required_model(body)
    for field in ("images", "inputs"):
        if body.get(field):
            raise ApiError(UNSUPPORTED, f"{field} are not served: this gateway embeds texts only", param=field)
    if "texts" not in body:
        raise bad_request("texts is required: a list of strings", "texts")
    texts, ids = parse_input(body["texts"], max_inputs)
    if texts is None or not isinstance(body["texts"], list):
        raise bad_request("texts must be a list of strings", "texts")
    options: dict[str, Any] = {}
    kind = body.get(INPUT_TYPE)
    if kind is None and version == 2:
        raise bad_request(f"{INPUT_TYPE} is required: one of {', '.join(INPUT_TYPE_MAP)}", INPUT_TYPE)
    if kind is not None:
        if kind not in INPUT_TYPE_MAP:
            raise bad_request(f"{INPUT_TYPE} must be one of {', '.join(INPUT_TYPE_MAP)}, got {kind!r}", INPUT_TYPE)
        options[INPUT_TYPE] = INPUT_TYPE_MAP[kind]
    truncate = body.get(TRUNCATE)
    if truncate is not None:
        error = OPTIONS[TRUNCATE].check(truncate)
        if error:
            raise bad_request(error, TRUNCATE)
        options[TRUNCATE] = OPTIONS[TRUNCATE].normalize(truncate)
    dimension = body.get("output_dimension")
    if dimension is not None:
        error = OPTIONS[DIMENSIONS].check(dimension)
        if error:
            raise bad_request(error.replace(DIMENSIONS, "output_dimension", 1), "output_dimension")
        options[DIMENSIONS] = int(dimension)
    types = body.get("embedding_types")
    if types is not None:
        if not isinstance(types, list) or not types or any(t not in TYPES for t in types):
            raise bad_request(
                f"embedding_types must be a non-empty list of {', '.join(TYPES)}, got {types!r}", "embedding_types"
            )
        types = list(dict.fromkeys(types))
    elif version == 2:
        types = [EMBEDDING_TYPE_DEFAULT]
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise bad_request(f"max_tokens must be a positive integer, got {max_tokens!r}", "max_tokens")
    return CohereEmbedRequest(version, model, texts, types, options, max_tokens)


def check_max_tokens(req: CohereEmbedRequest, model_max_length: int) -> None:
    if req.max_tokens is not None and model_max_length and req.max_tokens < model_max_length:
        raise ApiError(
            UNSUPPORTED,
            f"max_tokens {req.max_tokens} below the model's max length ({model_max_length}) is not served:"
            f" texts are cut at {model_max_length} tokens as {TRUNCATE} says; leave max_tokens out",
            param="max_tokens",
        )


def call_type(kind: str) -> str:
    """The served embedding_type that gives Cohere's ``kind``."""
    return EMBEDDING_TYPE_DEFAULT if kind == BASE64 else kind


def vectors(result: EmbeddingResult, kind: str) -> list[Any]:
    emb = np.ascontiguousarray(result.embeddings)
    if kind == BASE64:
        raw = np.ascontiguousarray(emb, dtype="<f4")
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in raw]
    return list(emb.astype(np.float32) if kind == EMBEDDING_TYPE_DEFAULT else emb.astype(np.int64))


def render_embed(req: CohereEmbedRequest, results: dict[str, EmbeddingResult]) -> bytes:
    """``results``: Cohere type -> the served result of that type (one entry for v1's plain floats)."""
    first = next(iter(results.values()))
    tokens = int(first.token_counts.sum())
    meta = {
        "api_version": {"version": str(req.version)},
        "billed_units": {"input_tokens": tokens},
        "tokens": {"input_tokens": tokens},
    }
    body: dict[str, Any] = {"id": str(uuid.uuid4()), "texts": req.texts, "meta": meta}
    if req.types is None:
        body |= {"response_type": "embeddings_floats", "embeddings": vectors(first, EMBEDDING_TYPE_DEFAULT)}
    else:
        body |= {
            "response_type": "embeddings_by_type",
            "embeddings": {kind: vectors(results[kind], kind) for kind in req.types},
        }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
