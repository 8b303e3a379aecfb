"""Hugging Face Text Embeddings Inference's native API on the gateway's port: ``POST /embed``, ``/rerank``
(TEI's body, next to the Jina / vLLM one), ``/tokenize`` (TEI's body, next to ours), ``/decode``,
``GET /info``; parsing and rendering, pure as ``protocols`` is.

TEI serves one model and its bodies name none: a ``model`` field is taken (an extension), otherwise the
only served model of the route's task answers (several: a 400 that says to send ``model``).

- ``/embed`` ``{"inputs": str | [str] | ids, "normalize", "truncate", "truncation_direction", "prompt_name",
  "dimensions"}`` -> ``[[float]]``. ``truncate`` true cuts the end (``truncation_direction`` Right) or the start
  (Left); false refuses a text over the max length; absent is the server's default (END: ``/info`` says
  ``auto_truncate``). ``prompt_name`` is the input_type (``query``, ``document``, ``passage``).
  ``normalize: false`` is refused: the served vectors are the model's, normalised.
- ``/rerank`` ``{"query", "texts", "raw_scores", "return_text", "truncate"}`` -> ``[{"index", "score",
  "text"?}]`` best first; ``raw_scores: true`` is refused (the served score is the model's own).
- ``/tokenize`` ``{"inputs", "add_special_tokens", "prompt_name"}`` -> ``[[{"id", "text", "special",
  "start", "stop"}]]``: the ids the model embeds (the served tokenizer model answers), offsets null.
- ``/decode`` ``{"ids": [int] | [[int]], "skip_special_tokens"}`` -> ``[str]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tembed_client import RerankResult, TokenizeResult
from tembed_client.contract import (
    DIMENSIONS,
    ENCODE_NS,
    INPUT_TYPE,
    OPTIONS,
    TASK_EMBED,
    TOKENIZE_NS,
    TRUNCATE,
    TRUNCATE_END,
    TRUNCATE_NONE,
    TRUNCATE_START,
    UNSUPPORTED,
)

from .errors import ApiError, bad_request
from .protocols import EmbeddingRequest, RerankRequest, json_object, parse_documents, parse_input

DIRECTIONS = {"right": TRUNCATE_END, "left": TRUNCATE_START}


def model_of(body: dict[str, Any]) -> str:
    """The body's ``model`` (an extension of TEI's bodies), or "" for the only served one."""
    model = body.get("model", "")
    if not isinstance(model, str):
        raise bad_request("model must be a string (or left out: the only served model)", "model")
    return model


def flag(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"{key} must be true or false, got {value!r}", key)
    return value


def truncate_of(body: dict[str, Any]) -> str | None:
    """TEI's ``truncate`` (bool) and ``truncation_direction`` as the contract's truncate value."""
    cut = flag(body, TRUNCATE)
    direction = body.get("truncation_direction", "right")
    if not isinstance(direction, str) or direction.lower() not in DIRECTIONS:
        raise bad_request(f"truncation_direction must be Right or Left, got {direction!r}", "truncation_direction")
    if cut is None:
        return None
    return DIRECTIONS[direction.lower()] if cut else TRUNCATE_NONE


def prompt_options(body: dict[str, Any]) -> dict[str, Any]:
    name = body.get("prompt_name")
    if name is None:
        return {}
    error = OPTIONS[INPUT_TYPE].check(name)
    if error:
        raise bad_request(error.replace(INPUT_TYPE, "prompt_name", 1), "prompt_name")
    return {INPUT_TYPE: OPTIONS[INPUT_TYPE].normalize(name)}


def parse_embed(body: object, max_inputs: int) -> EmbeddingRequest:
    body = json_object(body)
    if "inputs" not in body:
        raise bad_request("inputs is required: a string or a list of strings", "inputs")
    try:
        texts, ids = parse_input(body["inputs"], max_inputs)
    except ApiError as exc:
        raise bad_request(exc.message.replace("input", "inputs", 1), "inputs") from None
    if flag(body, "normalize") is False:
        raise ApiError(
            UNSUPPORTED,
            "normalize false is not served: the vectors are the model's, normalised; send normalize true"
            " (haystack's TEI embedders: normalize=True)",
            param="normalize",
        )
    options = prompt_options(body)
    truncate = truncate_of(body)
    if truncate is not None:
        options[TRUNCATE] = truncate
    if body.get(DIMENSIONS) is not None:
        error = OPTIONS[DIMENSIONS].check(body[DIMENSIONS])
        if error:
            raise bad_request(error, DIMENSIONS)
        options[DIMENSIONS] = int(body[DIMENSIONS])
    return EmbeddingRequest(model_of(body), texts, ids, "float", options)


def is_tei_rerank(body: object) -> bool:
    """TEI's rerank body (``texts``) rather than Jina's / vLLM's (``documents``)."""
    return isinstance(body, dict) and "texts" in body and "documents" not in body


def parse_rerank(body: dict[str, Any], max_inputs: int) -> tuple[RerankRequest, str | None]:
    """The request and its truncate value (None: the server's END; NONE: refuse what does not fit)."""
    query = body.get("query")
    if not isinstance(query, str):
        got = "missing" if query is None else f"a {type(query).__name__}"
        raise bad_request(f"query is required and must be a string, got {got}", "query")
    try:
        texts = parse_documents(body["texts"], max_inputs)
    except ApiError as exc:
        raise bad_request(exc.message.replace("documents", "texts"), "texts") from None
    if flag(body, "raw_scores"):
        raise ApiError(UNSUPPORTED, "raw_scores true is not served: the score is the model's own", param="raw_scores")
    return_text = bool(flag(body, "return_text"))
    return RerankRequest(model_of(body), query, texts, None, return_text, {}), truncate_of(body)


def render_embed(vectors) -> bytes:
    return orjson.dumps(list(vectors), option=orjson.OPT_SERIALIZE_NUMPY)


def render_rerank(result: RerankResult, req: RerankRequest) -> bytes:
    items = []
    for index, score in result.ranking():
        item: dict[str, Any] = {"index": index, "score": score}
        if req.return_documents:
            item["text"] = req.documents[index]
        items.append(item)
    return orjson.dumps(items)


def is_tei_tokenize(body: object) -> bool:
    return isinstance(body, dict) and "inputs" in body and "input" not in body


def parse_tokenize(body: dict[str, Any], max_inputs: int) -> tuple[EmbeddingRequest, bool]:
    req = parse_embed({k: v for k, v in body.items() if k != "add_special_tokens"}, max_inputs)
    if req.texts is None:
        raise bad_request("inputs must be a string or a list of strings", "inputs")
    special = flag(body, "add_special_tokens")
    return req, special is not False


def render_tokenize(result: TokenizeResult, pieces: list[list[str]], specials: set[int], keep_special: bool) -> bytes:
    out = []
    for ids, texts in zip(result.ids, pieces):
        row = [
            {"id": int(t), "text": s, "special": int(t) in specials, "start": None, "stop": None}
            for t, s in zip(ids, texts)
            if keep_special or int(t) not in specials
        ]
        out.append(row)
    return orjson.dumps(out)


@dataclass(frozen=True)
class DecodeRequest:
    ids: list[list[int]]
    single: bool  # a flat list was sent
    skip_special_tokens: bool
    model: str


def parse_decode(body: object) -> DecodeRequest:
    body = json_object(body)
    ids = body.get("ids")
    single = isinstance(ids, list) and bool(ids) and all(type(t) is int for t in ids)
    seqs = [ids] if single else ids
    if (
        not isinstance(seqs, list)
        or not seqs
        or not all(isinstance(s, list) and all(type(t) is int and t >= 0 for t in s) for s in seqs)
    ):
        raise bad_request("ids is required: a list of token ids or a list of such lists", "ids")
    skip = flag(body, "skip_special_tokens")
    return DecodeRequest(seqs, single, skip is not False, model_of(body))


def info(name: str, task: str, max_length: int, max_inputs: int, in_flight: int, version: str) -> dict[str, Any]:
    """TEI's ``/info`` for one served model (the fields TEI's clients read)."""
    model_type = {"embedding": {"pooling": "served"}} if task == TASK_EMBED else {"reranker": {"id2label": {}}}
    return {
        "model_id": name,
        "model_sha": None,
        "model_dtype": "float32",
        "model_type": model_type,
        "max_concurrent_requests": in_flight,
        "max_input_length": max_length,
        "max_batch_tokens": max_length * max_inputs,
        "max_batch_requests": None,
        "max_client_batch_size": max_inputs,
        "auto_truncate": True,
        "tokenization_workers": 1,
        "version": version,
    }


def timing_headers(
    started_ns: int, tokenize_ns: int, call_ns: int, done_ns: int, server_ns: dict[str, int] | None = None
) -> dict[str, str]:
    """TEI's timing headers, in milliseconds, from the server's own clock where its ensemble answers it
    (``server_ns``: ``contract.SERVER_TIMES``). ``x-tokenization-time``: the gateway's token-id work plus the
    tokenizer model's; ``x-inference-time``: the encoder's run of the batch the request was in (without
    ``encode_ns``, a native backend's, the whole Triton call ``call_ns``); ``x-queue-time``: the rest
    (Triton's queues and hops, admission, parsing, rendering); ``x-compute-time`` = tokenization + inference."""
    ms = 1e-6
    server_ns = server_ns or {}
    tokenize_ns += server_ns.get(TOKENIZE_NS, 0)
    inference_ns = server_ns.get(ENCODE_NS, call_ns - server_ns.get(TOKENIZE_NS, 0))
    queue = max(done_ns - started_ns - tokenize_ns - inference_ns, 0)
    return {
        "x-compute-time": f"{(tokenize_ns + inference_ns) * ms:.3f}",
        "x-tokenization-time": f"{tokenize_ns * ms:.3f}",
        "x-queue-time": f"{queue * ms:.3f}",
        "x-inference-time": f"{inference_ns * ms:.3f}",
        "x-total-time": f"{(done_ns - started_ns) * ms:.3f}",
    }
