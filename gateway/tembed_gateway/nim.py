"""NVIDIA NIM's ranking API, ``POST /v1/ranking`` (what langchain-nvidia-ai-endpoints' ``NVIDIARerank``
and genai-perf's ``--endpoint-type rankings`` send): parsing and rendering, pure as ``protocols`` is.

Body: ``{"model", "query": {"text"}, "passages": [{"text"}], "truncate": "NONE" | "END"}``; answer:
``{"rankings": [{"index", "logit"}]}``, best first. ``logit`` carries the model's score, the very value
``/v1/rerank`` answers as ``relevance_score``. NIM's embeddings are OpenAI's ``/v1/embeddings`` with
``input_type`` ``passage`` (``contract.INPUT_TYPE_ALIASES``) and ``truncate``, served there already.

``truncate`` as NIM documents it: ``END`` cuts each (query, passage) pair to the model's max length (what
every rerank route does), ``NONE`` (NIM's default) refuses a pair that does not fit.
"""

from __future__ import annotations

from typing import Any

import orjson

from tembed_client import RerankResult
from tembed_client.contract import CONTEXT_LENGTH_EXCEEDED, TRUNCATE, TRUNCATE_END, TRUNCATE_NONE

from .errors import ApiError, bad_request
from .protocols import RerankRequest, json_object, required_model

RANKING_TRUNCATE = (TRUNCATE_NONE, TRUNCATE_END)
RANKING_TRUNCATE_DEFAULT = TRUNCATE_NONE  # NIM's


def text_of(value: object, field: str) -> str:
    """NIM's ``{"text": str}`` (a bare string is taken too, as genai-perf's custom inputs may send)."""
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]
    if isinstance(value, str):
        return value
    raise bad_request(f'{field} must be an object {{"text": string}}, got {type(value).__name__}', field)


def is_nim_ranking(body: object) -> bool:
    """NIM's ranking body (``passages``) rather than Jina's / vLLM's (``documents``) or TEI's (``texts``)."""
    return isinstance(body, dict) and "passages" in body and "documents" not in body


def parse_ranking(body: object, max_inputs: int) -> tuple[RerankRequest, str]:
    """The request and its ``truncate`` (upper-cased). Accepted and ignored: any other field."""
    body = json_object(body)
    model = required_model(body)
    if "query" not in body:
        raise bad_request('query is required: {"text": string}', "query")
    query = text_of(body["query"], "query")
    passages = body.get("passages")
    if not isinstance(passages, list) or not passages:
        got = "missing" if passages is None else f"{type(passages).__name__} {passages!r}"[:80]
        raise bad_request(f'passages is required: a non-empty list of {{"text": string}}, got {got}', "passages")
    if len(passages) > max_inputs:
        raise bad_request(f"too many passages: {len(passages)}; at most {max_inputs} per request", "passages")
    documents = [text_of(p, f"passages[{i}]") for i, p in enumerate(passages)]
    truncate = body.get(TRUNCATE, RANKING_TRUNCATE_DEFAULT)
    if not isinstance(truncate, str) or truncate.upper() not in RANKING_TRUNCATE:
        raise bad_request(f"{TRUNCATE} must be one of {', '.join(RANKING_TRUNCATE)}, got {truncate!r}", TRUNCATE)
    return RerankRequest(model, query, documents, None, False, {}), truncate.upper()


def check_fits(result: RerankResult, truncate: str, max_length: int) -> None:
    """``truncate`` NONE: a pair whose scored tokens reached the model's max length was cut; refuse it."""
    if truncate != TRUNCATE_NONE or max_length <= 0:
        return
    full = [i for i, n in enumerate(result.token_counts.tolist()) if n >= max_length]
    if full:
        raise ApiError(
            CONTEXT_LENGTH_EXCEEDED,
            f"passages[{full[0]}] with the query reaches the model's max length of {max_length} tokens"
            f" ({len(full)} passage(s) do); truncate NONE refuses it: send truncate END to cut it",
            param="passages",
        )


def render_ranking(result: RerankResult) -> bytes:
    rankings: list[dict[str, Any]] = [{"index": i, "logit": s} for i, s in result.ranking()]
    return orjson.dumps({"rankings": rankings})
