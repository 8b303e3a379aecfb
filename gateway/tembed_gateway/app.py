"""The HTTP API: ``POST /v1/embeddings`` (OpenAI), ``POST /tokenize`` (the served model's token ids),
``POST /v1/rerank`` and ``/rerank`` (Jina / vLLM), ``POST /v2/rerank`` (Cohere v2), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus; no API key: for the private network).

Every embedding model ``N`` is also served as ``N-query`` (``QUERY_SUFFIX``): the same model with
``input_type="query"``, for stock OpenAI clients (LangChain, LlamaIndex) that cannot send
``input_type`` and embed queries and documents with the same request shape.

Why Starlette + orjson and not FastAPI: FastAPI validates and serialises through pydantic, which
costs tens to hundreds of microseconds per request for a body of 2048 inputs or a response of
2048 x 1024 floats; the budget is <= 1 ms added over gRPC. Starlette gives routing and request
parsing for a few microseconds; orjson parses the body and writes numpy rows straight to JSON
(``OPT_SERIALIZE_NUMPY``), with no list of Python floats in between. Validation is a handful of
explicit checks below, which also lets every error carry OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tembed_client import EmbeddingError, EmbeddingResult, RerankResult, TokenizeResult
from tembed_client.contract import (
    EMBEDDING_TYPE,
    EMBEDDING_TYPE_DEFAULT,
    EMBEDDING_TYPES,
    INPUT_TYPES,
    LONG_TEXT,
    LONG_TEXT_CHUNK,
    LONG_TEXT_VALUES,
    PARAM_MAX_LENGTH,
    TASK_EMBED,
    TASK_RERANK,
    option_error,
    truncate_error,
)

from .metrics import GatewayMetrics
from .registry import REFRESH_INTERVAL_S, ModelRegistry, ReplicatedModel
from .settings import GatewaySettings

log = logging.getLogger("tembed_gateway")

ENCODINGS = ("float", "base64")
# NAME + this suffix serves embedding model NAME with input_type "query".
QUERY_SUFFIX = "-query"
QUERY = INPUT_TYPES[0]

# gRPC status (as EmbeddingError.code) -> HTTP status, OpenAI error type, OpenAI error code.
TRITON_ERRORS = {
    "INVALID_ARGUMENT": (400, "invalid_request_error", None),
    "OUT_OF_RANGE": (400, "invalid_request_error", None),
    "NOT_FOUND": (404, "invalid_request_error", "model_not_found"),
    # The client refuses a model of the other task (an embedding model asked to rerank, or back).
    "FAILED_PRECONDITION": (400, "invalid_request_error", None),
    "RESOURCE_EXHAUSTED": (429, "server_error", "overloaded"),
    "UNAVAILABLE": (503, "server_error", "triton_unavailable"),
    "DEADLINE_EXCEEDED": (504, "server_error", "timeout"),
}


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return json_response(body, self.status, self.headers)

    @classmethod
    def from_triton(cls, exc: EmbeddingError, triton_url: str, retry_after_s: int = 1) -> ApiError:
        status, type_, code = TRITON_ERRORS.get(exc.code, (500, "server_error", "internal_error"))
        message = exc.message
        if exc.code == "INVALID_ARGUMENT" and "bytes; the limit is" in message:
            status, code = 413, "request_too_large"  # a text or a request over the model's byte limits
        if exc.code == "UNAVAILABLE" and ("queue" in message.lower() or "timeout expired" in message.lower()):
            # Triton's queue for the encoder is full ("Exceeds maximum queue size") or a request
            # waited past its queue timeout ("Request timeout expired"): overloaded, not down.
            status, type_, code = 429, "server_error", "overloaded"
        if status == 429:
            return cls(status, message, type=type_, code=code, headers={"Retry-After": str(retry_after_s)})
        if status == 503:
            message = f"Triton at {triton_url} is unavailable: {message}"
        # The client's own checks name their field first ("dimensions must be ...").
        param = next(
            (
                p
                for p in ("dimensions", "input_type", "instruction", "truncate", EMBEDDING_TYPE, LONG_TEXT)
                if message.startswith(p)
            ),
            None,
        )
        if exc.code == "INVALID_ARGUMENT" and f", {EMBEDDING_TYPE} " in message:
            param = EMBEDDING_TYPE  # the tokenizer's check inside the ensemble ("in ensemble 'N', embedding_type ...")
        if exc.code == "INVALID_ARGUMENT" and " tokens; the limit is " in message:
            param, code = "input", "context_length_exceeded"  # truncate NONE and a text over max_length
        if exc.code == "INVALID_ARGUMENT" and any(f" windows per {w} " in message for w in ("text", "request")):
            param, code = "input", "context_length_exceeded"  # long_text chunk: over max_windows or max_rows
        if exc.code == "FAILED_PRECONDITION":
            param = "model"
        return cls(status, message, type=type_, param=param, code=code)


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: list[str] | None  # exactly one of texts and token_ids is set
    token_ids: list[list[int]] | None
    dimensions: int | None
    encoding_format: str
    instruction: str | None
    input_type: str | None
    truncate: str | None = None  # one of contract.TRUNCATE_VALUES, upper-cased; None: the server's default
    embedding_type: str | None = None  # one of contract.EMBEDDING_TYPES; None: float
    long_text: str | None = None  # one of contract.LONG_TEXT_VALUES; None: the server's default


def optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{key} must be a string, not {type(value).__name__}", key)
    return value


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


def parse_request(body: object, max_inputs: int) -> EmbeddingRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required and must be a non-empty string", "model")
    if "input" not in body:
        raise bad_request("input is required", "input")
    texts, ids = parse_input(body["input"], max_inputs)
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise bad_request(f"dimensions must be a positive integer, got {dimensions!r}", "dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise bad_request(f"encoding_format must be 'float' or 'base64', got {encoding!r}", "encoding_format")
    input_type = optional_str(body, "input_type")
    if input_type is not None and input_type not in INPUT_TYPES:
        raise bad_request(f"input_type must be 'query' or 'document', got {input_type!r}", "input_type")
    truncate = body.get("truncate")
    if truncate is not None:
        error = truncate_error(truncate)
        if error:
            raise bad_request(error, "truncate")
        truncate = truncate.upper()
    embedding_type = body.get(EMBEDDING_TYPE)
    if embedding_type is not None:
        error = option_error(EMBEDDING_TYPE, embedding_type, EMBEDDING_TYPES)
        if error:
            raise bad_request(error, EMBEDDING_TYPE)
    long_text = body.get(LONG_TEXT)
    if long_text is not None:
        error = option_error(LONG_TEXT, long_text, LONG_TEXT_VALUES)
        if error:
            raise bad_request(error, LONG_TEXT)
    # `user` is accepted and ignored, like any other field OpenAI clients may add.
    instruction = optional_str(body, "instruction")
    return EmbeddingRequest(
        model, texts, ids, dimensions, encoding, instruction, input_type, truncate, embedding_type, long_text
    )


@dataclass(frozen=True)
class RerankRequest:
    model: str
    query: str
    documents: list[str]
    top_n: int | None  # None: every document
    return_documents: bool
    instruction: str | None


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
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required and must be a non-empty string", "model")
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
    return RerankRequest(model, query, documents, top_n, return_documents, optional_str(body, "instruction"))


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


def endpoint(handler: Callable[[Gateway, Request], Awaitable[Response]]) -> Callable[[Gateway, Request], Any]:
    """Every failure becomes an OpenAI-shaped error; a bug becomes a 500 without its traceback."""

    async def wrapped(self: Gateway, request: Request) -> Response:
        try:
            return await handler(self, request)
        except ApiError as exc:
            return exc.response()
        except EmbeddingError as exc:
            return ApiError.from_triton(exc, self.settings.triton_label, self.settings.retry_after_s).response()
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.scope["path"])
            return ApiError(500, "internal error in the gateway", type="server_error", code="internal_error").response()

    async def measured(self: Gateway, request: Request) -> Response:
        started = time.perf_counter()
        response = await wrapped(self, request)
        # The served model (set once resolved), never the name a caller sent: bounded label values.
        model = getattr(request.state, "model", "")
        self.metrics.observe(request.scope["path"], model, response.status_code, time.perf_counter() - started)
        return response

    return measured


DISCONNECT_POLL_S = 0.25


class DisconnectWatch:
    """Cancels ``task`` once the caller of ``request`` has disconnected: polled every DISCONNECT_POLL_S
    by a Task started only when the request outlives the first poll, so a request answered faster
    (nearly all) costs one timer, not a Task and a wait of its own."""

    def __init__(self, request: Request, task: asyncio.Task[Any]) -> None:
        self.request, self.task = request, task
        self.fired = False  # the caller left and ``task`` was cancelled for it
        self._poller: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(DISCONNECT_POLL_S, self._start)

    def _start(self) -> None:
        self._poller = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while True:
            # Only once the body is read: polling the connection before would consume it.
            if getattr(self.request.state, "body_read", False) and await self.request.is_disconnected():
                self.fired = True
                self.task.cancel()
                return
            await asyncio.sleep(DISCONNECT_POLL_S)

    def stop(self) -> None:
        self._timer.cancel()
        if self._poller is not None and not self._poller.done():
            self._poller.cancel()


def admitted(handler: Callable[[Gateway, Request], Awaitable[Response]]) -> Callable[[Gateway, Request], Any]:
    """Counts the request in flight while it runs; refused up front when the gateway is full.

    A caller that disconnects (gave up, timed out) has its work cancelled: the gRPC calls to Triton
    are cancelled with the task, so nothing more is queued for someone who is not listening."""

    async def wrapped(self: Gateway, request: Request) -> Response:
        self.admit()
        self.in_flight += 1
        task = asyncio.current_task()
        assert task is not None
        watch = DisconnectWatch(request, task)
        try:
            return await handler(self, request)
        except asyncio.CancelledError:
            if not watch.fired:
                raise  # cancelled from elsewhere (the server shutting down): not ours to swallow
            if hasattr(task, "uncancel"):  # Python 3.11+: this cancellation is handled, the task goes on
                task.uncancel()
            self.abandoned += 1
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        finally:
            watch.stop()
            self.in_flight -= 1

    return wrapped


class Gateway:
    """The endpoints, over one :class:`ModelRegistry` created when the server's loop starts."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._keys = [k.encode() for k in settings.api_keys]
        self._registry: ModelRegistry | None = None
        self.started = int(time.time())
        self.in_flight = 0
        self.abandoned = 0  # requests whose caller disconnected before the answer
        self.draining = False  # set on shutdown: readiness false, new work refused, in-flight finishes
        self._canary: tuple[float, dict[str, str]] | None = None
        self.metrics = GatewayMetrics(self)

    def admit(self) -> None:
        """Refuse new work at once when draining or full (429 + Retry-After: clients back off)."""
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        if self.draining:
            raise ApiError(503, "the gateway is shutting down", type="server_error", code="draining", headers=retry)
        if self.in_flight >= self.settings.max_in_flight:
            message = f"{self.in_flight} requests in flight, the limit is {self.settings.max_in_flight}; retry later"
            raise ApiError(429, message, type="server_error", code="overloaded", headers=retry)

    @property
    def registry(self) -> ModelRegistry:
        assert self._registry is not None, "the gateway's lifespan has not started"
        return self._registry

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self._registry = ModelRegistry(self.settings, on_retry=self.metrics.retries.inc)
        # Triton may come up after the gateway: an unreachable Triton is found again on first use.
        with contextlib.suppress(EmbeddingError):
            await self._registry.refresh()
        self._registry.start()
        try:
            yield
        finally:
            await self._registry.close()

    def authorize(self, request: Request) -> None:
        if not self._keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        # compare_digest against every key: the time taken says nothing about which key was close.
        if scheme.lower() != "bearer" or not any([hmac.compare_digest(given, k) for k in self._keys]):
            message = "Incorrect API key provided." if token else "Missing API key: send Authorization: Bearer KEY."
            raise ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        too_large = ApiError(413, f"request body larger than {limit} bytes", code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds chunked bodies, which declare no length
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        request.state.body_read = True
        return b"".join(chunks)

    async def read_json(self, request: Request) -> object:
        body = await self.read_body(request)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}") from None

    async def resolve(self, model: str, task: str, path: str) -> ReplicatedModel:
        """The served model ``model`` names; 404 if none, 400 if it does another task than ``path``'s."""
        client = await self.registry.resolve(model)
        if client is None:
            served = ", ".join(sorted(self.registry.clients)) or "none"
            raise ApiError(
                404, f"The model {model!r} does not exist (served: {served})", param="model", code="model_not_found"
            )
        if client.info.task != task:
            what, route = TASK_ROUTES.get(client.info.task, (f"a {client.info.task!r} model", "another route"))
            raise bad_request(f"model {model!r} is {what}: {path} does not serve it; use {route}", "model")
        return client

    def served(self, request: Request, client: ReplicatedModel) -> ReplicatedModel:
        request.state.model = client.info.name  # the metrics' model label
        return client

    async def resolve_embedding(self, req: EmbeddingRequest, path: str) -> tuple[ReplicatedModel, str | None]:
        """The embedding model ``req.model`` names and the input_type to send: ``N-query`` is ``N``
        with input_type "query" (when no served model has that very name)."""
        name = req.model
        if name.endswith(QUERY_SUFFIX) and await self.registry.resolve(name) is None:
            base = name[: -len(QUERY_SUFFIX)]
            client = await self.registry.resolve(base)
            if client is not None and client.info.task == TASK_EMBED:
                if req.input_type not in (None, QUERY):
                    msg = f"model {name!r} embeds queries; send input_type {QUERY!r} or none, or use model {base!r}"
                    raise bad_request(msg, "input_type")
                return client, QUERY
        return await self.resolve(name, TASK_EMBED, path), req.input_type

    async def decode(self, client: ReplicatedModel, ids: list[list[int]]) -> list[str]:
        """Token ids back to text with the served tokenizer; the server re-tokenizes the text (and adds
        the model's prompt and special tokens), so the ids must be ones this model's tokenizer made."""
        tok = self.registry.tokenizer(client.info.name)
        if tok is None:
            raise bad_request(
                f"token-id input needs the tokenizer of {client.info.name!r}: start the gateway with"
                " --model-repository pointing at the served repository, or send text",
                "input",
            )
        vocab = tok.get_vocab_size(with_added_tokens=True)
        for i, seq in enumerate(ids):
            bad = next((t for t in seq if not 0 <= t < vocab), None)
            if bad is not None:
                raise bad_request(
                    f"input[{i}] has token id {bad}, outside this model's vocabulary [0, {vocab})", "input"
                )
        # Off the event loop: 2048 long sequences take a while to decode.
        texts = await asyncio.to_thread(tok.decode_batch, ids, skip_special_tokens=True)
        for i, text in enumerate(texts):
            if not text.strip():
                raise bad_request(f"input[{i}] decodes to an empty text", "input")
        return texts

    @endpoint
    @admitted
    async def embeddings(self, request: Request) -> Response:
        self.authorize(request)
        req = parse_request(await self.read_json(request), self.settings.max_inputs)
        client, input_type = await self.resolve_embedding(req, request.scope["path"])
        self.served(request, client)
        texts = req.texts if req.texts is not None else await self.decode(client, req.token_ids or [])
        result = await client.encode(
            texts,
            instruction=req.instruction,
            input_type=input_type,
            dimensions=req.dimensions,
            truncate=req.truncate,
            embedding_type=req.embedding_type,
            long_text=req.long_text,
        )
        self.metrics.count_tokens(client.info.name, int(result.token_counts.sum()))
        return Response(render_embeddings(result, req.model, req.encoding_format), media_type="application/json")

    @endpoint
    @admitted
    async def tokenize(self, request: Request) -> Response:
        """The token ids a /v1/embeddings request with the same body would embed, per input: the
        served tokenizer model itself answers, so prompt, special tokens and truncation are exact."""
        self.authorize(request)
        req = parse_request(await self.read_json(request), self.settings.max_inputs)
        if req.long_text == LONG_TEXT_CHUNK:
            raise bad_request(f"{LONG_TEXT} {LONG_TEXT_CHUNK} applies to /v1/embeddings, not /tokenize", LONG_TEXT)
        client, input_type = await self.resolve_embedding(req, request.scope["path"])
        self.served(request, client)
        texts = req.texts if req.texts is not None else await self.decode(client, req.token_ids or [])
        result = await client.tokenize(texts, instruction=req.instruction, input_type=input_type, truncate=req.truncate)
        max_length = int(client.info.parameters.get(PARAM_MAX_LENGTH, 0))
        return Response(render_tokenize(result, req.model, max_length), media_type="application/json")

    async def _rerank(self, request: Request, return_documents: bool) -> tuple[RerankResult, RerankRequest]:
        self.authorize(request)
        req = parse_rerank(await self.read_json(request), self.settings.max_inputs, return_documents)
        client = self.served(request, await self.resolve(req.model, TASK_RERANK, request.scope["path"]))
        # The client cuts the documents into the model's max per request and sends those concurrently.
        result = await client.score(req.query, req.documents, instruction=req.instruction)
        self.metrics.count_tokens(client.info.name, int(result.token_counts.sum()))
        return result, req

    @endpoint
    @admitted
    async def rerank(self, request: Request) -> Response:
        """Jina / vLLM ``/v1/rerank`` (and ``/rerank``); documents are returned unless asked not to."""
        result, req = await self._rerank(request, return_documents=True)
        return Response(render_rerank(result, req), media_type="application/json")

    @endpoint
    @admitted
    async def rerank_v2(self, request: Request) -> Response:
        """Cohere v2 ``/v2/rerank``: indices and scores only (documents on ``return_documents: true``)."""
        result, req = await self._rerank(request, return_documents=False)
        return Response(render_rerank_v2(result, req), media_type="application/json")

    @endpoint
    async def models(self, request: Request) -> Response:
        self.authorize(request)
        await self.registry.refresh(REFRESH_INTERVAL_S)
        served = self.registry.clients
        entries: list[tuple[str, str, dict[str, str]]] = [(name, name, {}) for name in sorted(served)]
        entries += [(a, name, {}) for a, name in sorted(self.settings.aliases.items()) if name in served]
        # Every embedding model (and alias of one) again with QUERY_SUFFIX: the query embedder.
        entries += [
            (i + QUERY_SUFFIX, root, {"input_type": QUERY})
            for i, root, _ in list(entries)
            if served[root].info.task == TASK_EMBED and i + QUERY_SUFFIX not in served
        ]
        data = [
            {
                "id": i,
                "object": "model",
                "created": self.started,
                "owned_by": "tembed",
                "root": root,
                "task": served[root].info.task,  # "embed" or "rerank": which route serves it
                **extra,
            }
            for i, root, extra in entries
        ]
        return json_response({"object": "list", "data": data})

    async def health(self, _request: Request) -> Response:
        """Readiness: a real inference through every served ensemble (cached ``canary_ttl_s``)."""
        if self.draining:
            return json_response({"status": "draining"}, 503)
        if not await self.registry.ready():
            return json_response({"status": "unavailable", "triton": self.settings.triton_label}, 503)
        failed = await self.canary()
        if failed:
            return json_response({"status": "unavailable", "models": failed}, 503)
        return json_response({"status": "ok"})

    async def metrics_endpoint(self, _request: Request) -> Response:
        """Prometheus text format; no API key (keep it off the public route, like Triton's :8002)."""
        body, content_type = self.metrics.render()
        return Response(body, headers={"Content-Type": content_type})

    async def live(self, _request: Request) -> Response:
        """Liveness: the gateway's own loop answers (Triton's state is readiness, not liveness)."""
        return json_response({"status": "ok"})

    async def canary(self) -> dict[str, str]:
        """model -> error of the models whose canary inference failed (empty: all served)."""
        now = time.monotonic()
        if self._canary is not None and now - self._canary[0] < self.settings.canary_ttl_s:
            return self._canary[1]
        failed: dict[str, str] = {}
        with contextlib.suppress(EmbeddingError):
            await self.registry.refresh(REFRESH_INTERVAL_S)
        for name, client in list(self.registry.clients.items()):
            try:
                if client.info.task == TASK_RERANK:
                    await client.score("canary", ["canary"])
                else:
                    await client.embed(["canary"])
            except EmbeddingError as exc:
                failed[name] = f"{exc.code}: {exc.message}"
        self._canary = (time.monotonic(), failed)
        return failed


async def http_error(_request: Request, exc: Exception) -> Response:
    """Unknown paths and methods, in OpenAI's shape too."""
    assert isinstance(exc, HTTPException)
    return ApiError(exc.status_code, exc.detail, code=None, headers=exc.headers).response()


def create_app(settings: GatewaySettings) -> Starlette:
    gw = Gateway(settings)
    routes = [
        Route("/v1/embeddings", gw.embeddings, methods=["POST"]),
        Route("/tokenize", gw.tokenize, methods=["POST"]),
        Route("/v1/tokenize", gw.tokenize, methods=["POST"]),
        Route("/v1/rerank", gw.rerank, methods=["POST"]),
        Route("/rerank", gw.rerank, methods=["POST"]),  # vLLM serves both
        Route("/v2/rerank", gw.rerank_v2, methods=["POST"]),
        Route("/v1/models", gw.models, methods=["GET"]),
        Route("/health", gw.health, methods=["GET"]),
        Route("/health/ready", gw.health, methods=["GET"]),
        Route("/health/live", gw.live, methods=["GET"]),
        Route("/metrics", gw.metrics_endpoint, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=gw.lifespan, exception_handlers={HTTPException: http_error})
    app.state.gateway = gw
    return app
