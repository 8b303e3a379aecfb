"""bge-m3's sparse and multi-vector outputs over HTTP (models whose ensemble lists them, ``PARAM_OUTPUTS``):

- ``POST /embed_sparse`` (text-embeddings-inference's route and shape): ``{"inputs": str | [str], "model"?,
  "truncate"?, "return_tokens"?}`` -> ``[[{"index": token id, "value": weight}, ...], ...]``, one list per
  input; ``"return_tokens": true`` adds each id's ``"token"`` text (the served tokenizer's piece: the gateway
  needs ``--model-repository``);
- ``POST /embed_all`` (TEI's route and shape for per-token vectors): ``[[[float, ...], ...], ...]``, the
  ColBERT multi-vectors of each input ([tokens - 1, hidden], unit rows);
- ``POST /v1/embeddings/all``: all three at once, OpenAI-like: the body of ``/v1/embeddings`` plus
  ``"outputs": ["dense", "sparse", "colbert"]`` (or the option ``embedding_outputs``' text; default: every
  output the model has) ->
  ``{"object": "list", "model", "data": [{"object": "embedding", "index", "embedding": [...],
  "sparse": {"indices": [...], "values": [...]}, "multi_vector": [[...], ...]}], "usage"}`` (a key for each
  output asked for).

``POST /v1/embeddings`` keeps answering dense vectors: it refuses ``outputs`` other than dense and points
here. ``model`` may be left out of the TEI routes when exactly one served model has the output.
TEI's ``truncate: false`` is ``truncate NONE`` (refused over max_length), ``true`` (its default here) END.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tembed_client import EmbeddingResult
from tembed_client.contract import (
    MODEL_NOT_FOUND,
    OUTPUT_COLBERT,
    OUTPUT_DENSE,
    OUTPUT_KINDS,
    OUTPUT_SPARSE,
    OUTPUTS,
    PARAM_OUTPUTS,
    TASK_EMBED,
    TRUNCATE,
    TRUNCATE_END,
    TRUNCATE_NONE,
    UNSUPPORTED,
    output_kinds,
)
from tembed_client.m3 import WEIGHTS, reranks

from .admission import admitted, endpoint
from .errors import ApiError, bad_request
from .protocols import json_object, parse_input, parse_request

# The handlers take app.Gateway (not imported: app imports this module) and return its ReplicatedModel.
Gateway = ReplicatedModel = Any

SPARSE_ROUTE, MULTI_ROUTE, ALL_ROUTE = "/embed_sparse", "/embed_all", "/v1/embeddings/all"
BODY_OUTPUTS = "outputs"  # /v1/embeddings/all's field: a list of kinds (the option contract.OUTPUTS, or its text)


def model_outputs(info) -> tuple[str, ...]:
    return output_kinds(info.parameters.get(PARAM_OUTPUTS, OUTPUT_DENSE))


def parse_outputs(value: object, has: tuple[str, ...]) -> list[str]:
    """The body's ``outputs`` (a list of kinds or the option's comma-separated text); None: all the model has."""
    if value is None:
        return list(has)
    kinds = output_kinds(value) if isinstance(value, str) else value
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) and k in OUTPUT_KINDS for k in kinds):
        raise bad_request(
            f"{BODY_OUTPUTS} must be a non-empty list of {', '.join(OUTPUT_KINDS)}, got {value!r}", BODY_OUTPUTS
        )
    return [k for k in OUTPUT_KINDS if k in kinds]


def check_dense_only(options: dict[str, Any]) -> None:
    """/v1/embeddings (OpenAI) answers dense vectors: other outputs are this module's routes."""
    kinds = output_kinds(options.get(OUTPUTS) or OUTPUT_DENSE)
    if kinds != (OUTPUT_DENSE,):
        raise bad_request(
            f"/v1/embeddings answers dense vectors; {OUTPUTS} {', '.join(kinds)}: use {ALL_ROUTE},"
            f" {SPARSE_ROUTE} or {MULTI_ROUTE}",
            OUTPUTS,
        )


def parse_tei(body: object, max_inputs: int) -> tuple[str | None, list[str], dict[str, Any], bool]:
    """(model or None, texts, options, return_tokens) of a TEI body."""
    body = json_object(body)
    if "inputs" not in body:
        raise bad_request("inputs is required", "inputs")
    texts, ids = parse_input(body["inputs"], max_inputs)
    if texts is None:
        raise bad_request("inputs must be a string or a list of strings", "inputs")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise bad_request("model must be a non-empty string", "model")
    truncate = body.get(TRUNCATE, True)  # TEI's field: a bool, where the option takes END / START / NONE
    if not isinstance(truncate, bool):
        raise bad_request(f"{TRUNCATE} must be true or false, got {truncate!r}", TRUNCATE)
    flag = body.get("return_tokens", False)
    if not isinstance(flag, bool):
        raise bad_request(f"return_tokens must be true or false, got {flag!r}", "return_tokens")
    return model, texts, {TRUNCATE: TRUNCATE_END if truncate else TRUNCATE_NONE}, flag


async def resolve_with(gw: Gateway, model: str | None, kind: str, path: str) -> ReplicatedModel:
    """The served embedding model ``model`` names (or the only one that has output ``kind``)."""
    await gw.registry.refresh(60.0)
    if model is None:
        having = [c for c in gw.registry.clients.values() if kind in model_outputs(c.info)]
        if len(having) != 1:
            names = ", ".join(sorted(c.info.name for c in having)) or "none"
            raise bad_request(f"{path}: name the model; served models with {kind} outputs: {names}", "model")
        return having[0]
    client = await gw.resolve(model, TASK_EMBED, path)
    if kind not in model_outputs(client.info):
        raise ApiError(
            UNSUPPORTED,
            f"model {model!r} has no {kind} output (it has {', '.join(model_outputs(client.info))}): {path} needs one",
            param="model",
        )
    return client


def sparse_items(result: EmbeddingResult, tokens=None) -> list[list[dict[str, Any]]]:
    out = []
    for sp in result.sparse or []:
        items: list[dict[str, Any]] = [{"index": int(i), "value": float(w)} for i, w in zip(sp.ids, sp.weights)]
        if tokens is not None:
            for item in items:
                item["token"] = tokens.id_to_token(item["index"])
        out.append(items)
    return out


async def embed_sparse(gw: Gateway, request: Request) -> Response:
    gw.authorize(request)
    model, texts, options, return_tokens = parse_tei(await gw.read_json(request), gw.settings.max_inputs)
    client = gw.served(request, await resolve_with(gw, model, OUTPUT_SPARSE, SPARSE_ROUTE))
    tok = gw.registry.tokenizer(client.info.name) if return_tokens else None
    if return_tokens and tok is None:
        raise bad_request(
            f"return_tokens needs the tokenizer of {client.info.name!r}: start the gateway with --model-repository",
            "return_tokens",
        )
    result = await client.encode(texts, outputs=[OUTPUT_SPARSE], **options)
    gw.metrics.count_tokens(client.info.name, int(result.token_counts.sum()))
    return Response(orjson.dumps(sparse_items(result, tok)), media_type="application/json")


async def embed_all(gw: Gateway, request: Request) -> Response:
    gw.authorize(request)
    model, texts, options, _ = parse_tei(await gw.read_json(request), gw.settings.max_inputs)
    client = gw.served(request, await resolve_with(gw, model, OUTPUT_COLBERT, MULTI_ROUTE))
    result = await client.encode(texts, outputs=[OUTPUT_COLBERT], **options)
    gw.metrics.count_tokens(client.info.name, int(result.token_counts.sum()))
    return Response(
        orjson.dumps(result.multi_vectors, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )


def render_all(result: EmbeddingResult, model: str, kinds: list[str]) -> bytes:
    data = []
    for i in range(len(result.token_counts)):
        item: dict[str, Any] = {"object": "embedding", "index": i}
        if OUTPUT_DENSE in kinds:
            item["embedding"] = result.embeddings[i]
        if OUTPUT_SPARSE in kinds and result.sparse is not None:
            sp = result.sparse[i]
            item["sparse"] = {"indices": sp.ids, "values": sp.weights}
        if OUTPUT_COLBERT in kinds and result.multi_vectors is not None:
            item["multi_vector"] = result.multi_vectors[i]
        data.append(item)
    tokens = int(result.token_counts.sum())
    body = {"object": "list", "model": model, "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


async def embeddings_all(gw: Gateway, request: Request) -> Response:
    gw.authorize(request)
    body = await gw.read_json(request)
    req = parse_request(body, gw.settings.max_inputs)
    client, options = await gw.resolve_embedding(req, request.scope["path"])
    gw.served(request, client)
    asked = body.get(BODY_OUTPUTS, options.get(OUTPUTS)) if isinstance(body, dict) else None
    kinds = parse_outputs(asked, model_outputs(client.info))
    texts = req.texts if req.texts is not None else await gw.decode(client, req.token_ids or [])
    result = await client.encode(texts, **{**options, OUTPUTS: ",".join(kinds)})
    gw.metrics.count_tokens(client.info.name, int(result.token_counts.sum()))
    return Response(render_all(result, req.model, kinds), media_type="application/json")


async def resolve_reranker(gw: Gateway, model: str, path: str) -> ReplicatedModel:
    """A reranker, or an embedding model with all three outputs (bge-m3: its M3 score)."""
    client = await gw.registry.resolve(model)
    if client is not None and reranks(client.info):
        return client
    if client is None:
        served = ", ".join(sorted(gw.registry.clients)) or "none"
        raise ApiError(MODEL_NOT_FOUND, f"The model {model!r} does not exist (served: {served})", param="model")
    from tembed_client.contract import TASK_RERANK

    return await gw.resolve(model, TASK_RERANK, path)


def rerank_options(info, body: object) -> dict[str, Any]:
    """bge-m3's ``weights`` ([dense, sparse, colbert], FlagEmbedding's default [1, 1, 1]) from a rerank body."""
    weights = body.get(WEIGHTS) if isinstance(body, dict) else None
    if weights is None:
        return {}
    if not reranks(info):
        raise bad_request(f"{WEIGHTS} applies to a bge-m3 model's M3 score; {info.name!r} is a reranker", WEIGHTS)
    return {WEIGHTS: weights}


def routes(gw: Gateway) -> list[Route]:
    def handler(fn):
        wrapped = endpoint(admitted(fn))  # the gateway's error shape, metrics and admission, as app.py's

        async def run(request: Request) -> Response:
            return await wrapped(gw, request)

        run.__name__ = fn.__name__
        return run

    return [
        Route(SPARSE_ROUTE, handler(embed_sparse), methods=["POST"]),
        Route(MULTI_ROUTE, handler(embed_all), methods=["POST"]),
        Route(ALL_ROUTE, handler(embeddings_all), methods=["POST"]),
    ]
