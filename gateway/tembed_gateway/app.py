"""The HTTP API: ``POST /v1/embeddings`` (OpenAI), ``POST /tokenize`` (the served model's token ids),
``POST /v1/rerank`` and ``/rerank`` (Jina / vLLM), ``POST /v2/rerank`` (Cohere v2), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus; no API key: for the private network); other vendors'
clients: ``POST /v1/ranking`` (NVIDIA NIM, ``nim``), ``/v1/embed`` and ``/v2/embed`` (Cohere, ``cohere_embed``),
TEI's ``/embed``, ``/decode``, ``GET /info`` and TEI's bodies on ``/rerank`` and ``/tokenize`` (``tei``).
Token-id input follows one rule (``token_ids``).

Every embedding model ``N`` is also served as ``N-query`` (``QUERY_SUFFIX``): the same model with
``input_type="query"``, for stock OpenAI clients (LangChain, LlamaIndex) that cannot send
``input_type`` and embed queries and documents with the same request shape.

Why Starlette + orjson and not FastAPI: FastAPI validates and serialises through pydantic, which
costs tens to hundreds of microseconds per request for a body of 2048 inputs or a response of
2048 x 1024 floats; the budget is <= 1 ms added over gRPC. Starlette gives routing and request
parsing for a few microseconds; orjson parses the body and writes numpy rows straight to JSON
(``OPT_SERIALIZE_NUMPY``), with no list of Python floats in between. Validation is a handful of
explicit checks (``protocols.py``), which also lets every error carry OpenAI's error shape
(``errors.py``). This module wires the routes: each handler parses, resolves the served model, calls
the client and renders.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tembed_client import EmbeddingError, RerankResult, __version__
from tembed_client.contract import (
    EMBEDDING_TYPE,
    EMBEDDING_TYPE_DEFAULT,
    INPUT_TYPE,
    INPUT_TYPES,
    LONG_TEXT,
    LONG_TEXT_CHUNK,
    MODEL_NOT_FOUND,
    PARAM_MAX_LENGTH,
    TASK_EMBED,
    TASK_RERANK,
    TOKEN_OPTIONS,
    TOO_LARGE,
    UNAUTHENTICATED,
    UNSUPPORTED,
)

from . import m3_routes, tei
from .admission import admitted, endpoint
from .cohere_embed import call_type, check_max_tokens, parse_embed, render_embed
from .errors import ApiError, bad_request, http_error, json_response
from .metrics import GatewayMetrics
from .nim import check_fits, is_nim_ranking, parse_ranking, render_ranking
from .protocols import (
    TASK_ROUTES,
    EmbeddingRequest,
    RerankRequest,
    parse_request,
    parse_rerank,
    render_embeddings,
    render_rerank,
    render_rerank_v2,
    render_tokenize,
)
from .registry import REFRESH_INTERVAL_S, ModelRegistry, ReplicatedModel
from .settings import GatewaySettings
from .token_ids import texts_for_ids

log = logging.getLogger("tembed_gateway")

# NAME + this suffix serves embedding model NAME with input_type "query".
QUERY_SUFFIX = "-query"
QUERY = INPUT_TYPES[0]
# NAME + a suffix: NAME with that input_type ("-passage": NVIDIA NIM's name for documents, not listed).
INPUT_TYPE_SUFFIXES = {QUERY_SUFFIX: QUERY, "-passage": INPUT_TYPES[1]}


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
            raise ApiError(UNAUTHENTICATED, message, headers={"WWW-Authenticate": "Bearer"})

    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        too_large = ApiError(TOO_LARGE, f"request body larger than {limit} bytes")
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
            raise ApiError(MODEL_NOT_FOUND, f"The model {model!r} does not exist (served: {served})", param="model")
        if client.info.task != task:
            what, route = TASK_ROUTES.get(client.info.task, (f"a {client.info.task!r} model", "another route"))
            raise ApiError(
                UNSUPPORTED, f"model {model!r} is {what}: {path} does not serve it; use {route}", param="model"
            )
        return client

    def served(self, request: Request, client: ReplicatedModel) -> ReplicatedModel:
        request.state.model = client.info.name  # the metrics' model label
        return client

    async def resolve_embedding(self, req: EmbeddingRequest, path: str) -> tuple[ReplicatedModel, dict[str, Any]]:
        """The embedding model ``req.model`` names and the options to send: ``N-query`` is ``N`` with
        input_type "query" (when no served model has that very name)."""
        name = req.model
        for suffix, kind in INPUT_TYPE_SUFFIXES.items():
            if not name.endswith(suffix) or await self.registry.resolve(name) is not None:
                continue
            base = name[: -len(suffix)]
            client = await self.registry.resolve(base)
            if client is not None and client.info.task == TASK_EMBED:
                if req.options.get(INPUT_TYPE) not in (None, kind):
                    msg = f"model {name!r} embeds {kind}s; send {INPUT_TYPE} {kind!r} or none, or use model {base!r}"
                    raise bad_request(msg, INPUT_TYPE)
                return client, {**req.options, INPUT_TYPE: kind}
        return await self.resolve(name, TASK_EMBED, path), req.options

    async def decode(self, client: ReplicatedModel, ids: list[list[int]], options: dict[str, Any]) -> list[str]:
        """Token ids back to the texts to send, by the one rule of ``token_ids``: ids must be this
        model's own (they survive decode -> re-encode), and ids that carry the prompt are embedded as given."""
        name = client.info.name
        tok = self.registry.tokenizer(name)
        if tok is None:
            raise bad_request(
                f"token-id input needs the tokenizer of {name!r}: start the gateway with"
                " --model-repository pointing at the served repository, or send text",
                "input",
            )
        # Off the event loop: 2048 long sequences take a while to decode and re-encode.
        return await asyncio.to_thread(texts_for_ids, tok, self.registry.profile(name), ids, options, name)

    @endpoint
    @admitted
    async def embeddings(self, request: Request) -> Response:
        started = time.perf_counter_ns()
        self.authorize(request)
        req = parse_request(await self.read_json(request), self.settings.max_inputs)
        client, options = await self.resolve_embedding(req, request.scope["path"])
        self.served(request, client)
        m3_routes.check_dense_only(options)  # bge-m3's other outputs: m3_routes
        tokenized = time.perf_counter_ns()
        texts = req.texts if req.texts is not None else await self.decode(client, req.token_ids or [], options)
        called = time.perf_counter_ns()
        result = await client.encode(texts, **options)
        inferred = time.perf_counter_ns()
        self.metrics.count_tokens(client.info.name, int(result.token_counts.sum()))
        body = render_embeddings(result, req.model, req.encoding_format)
        headers = tei.timing_headers(
            started, called - tokenized, inferred - called, time.perf_counter_ns(), result.server_ns
        )
        return Response(body, headers=headers, media_type="application/json")

    @endpoint
    @admitted
    async def tokenize(self, request: Request) -> Response:
        """The token ids a /v1/embeddings request with the same body would embed, per input: the
        served tokenizer model itself answers, so prompt, special tokens and truncation are exact."""
        self.authorize(request)
        body = await self.read_json(request)
        if tei.is_tei_tokenize(body):
            assert isinstance(body, dict)
            return await self.tei_tokenize(request, body)
        req = parse_request(body, self.settings.max_inputs)
        if req.options.get(LONG_TEXT) == LONG_TEXT_CHUNK:
            raise bad_request(f"{LONG_TEXT} {LONG_TEXT_CHUNK} applies to /v1/embeddings, not /tokenize", LONG_TEXT)
        client, options = await self.resolve_embedding(req, request.scope["path"])
        self.served(request, client)
        texts = req.texts if req.texts is not None else await self.decode(client, req.token_ids or [], options)
        # The options that change the ids; the others (dimensions, embedding_type) do not apply.
        result = await client.tokenize(texts, **{o.name: options.get(o.name) for o in TOKEN_OPTIONS})
        max_length = int(client.info.parameters.get(PARAM_MAX_LENGTH, 0))
        return Response(render_tokenize(result, req.model, max_length), media_type="application/json")

    async def _rerank(self, request: Request, return_documents: bool) -> tuple[RerankResult, RerankRequest]:
        self.authorize(request)
        body = await self.read_json(request)
        req = parse_rerank(body, self.settings.max_inputs, return_documents)
        result, _ = await self.score(request, req, body)
        return result, req

    async def score(
        self, request: Request, req: RerankRequest, body: object = None
    ) -> tuple[RerankResult, ReplicatedModel]:
        """Every rerank route's call, once parsed: the served reranker's scores of ``req`` (``body``: the
        request's JSON, for bge-m3's ``weights``)."""
        # A reranker, or bge-m3 (an embedding model with all three outputs) by its M3 score: m3_routes.
        client = self.served(request, await m3_routes.resolve_reranker(self, req.model, request.scope["path"]))
        options = {**req.options, **m3_routes.rerank_options(client.info, body)}
        # The client cuts the documents into the model's max per request and sends those concurrently.
        result = await client.score(req.query, req.documents, **options)
        self.metrics.count_tokens(client.info.name, int(result.token_counts.sum()))
        return result, client

    @endpoint
    @admitted
    async def ranking(self, request: Request) -> Response:
        """NVIDIA NIM ``/v1/ranking`` (``nim``): ``{"rankings": [{"index", "logit"}]}``."""
        self.authorize(request)
        body = await self.read_json(request)
        req, truncate = parse_ranking(body, self.settings.max_inputs)
        result, client = await self.score(request, req, body)
        check_fits(result, truncate, int(client.info.parameters.get(PARAM_MAX_LENGTH, 0)))
        return Response(render_ranking(result), media_type="application/json")

    @endpoint
    @admitted
    async def rerank(self, request: Request) -> Response:
        """Jina / vLLM ``/v1/rerank`` (and ``/rerank``); documents are returned unless asked not to. TEI's
        body (``texts``, no ``documents``) gets TEI's answer."""
        started = time.perf_counter_ns()
        self.authorize(request)
        body = await self.read_json(request)
        if tei.is_tei_rerank(body):
            assert isinstance(body, dict)
            treq, truncate = tei.parse_rerank(body, self.settings.max_inputs)
            treq = await self.with_default_model(treq, TASK_RERANK)
            called = time.perf_counter_ns()
            result, client = await self.score(request, treq, body)
            inferred = time.perf_counter_ns()
            if truncate is not None:
                check_fits(result, truncate, int(client.info.parameters.get(PARAM_MAX_LENGTH, 0)))
            headers = tei.timing_headers(started, 0, inferred - called, time.perf_counter_ns())
            return Response(tei.render_rerank(result, treq), headers=headers, media_type="application/json")
        if is_nim_ranking(body):  # genai-perf --endpoint v1/rerank sends NIM's body: NIM's answer
            nreq, truncate = parse_ranking(body, self.settings.max_inputs)
            result, client = await self.score(request, nreq, body)
            check_fits(result, truncate, int(client.info.parameters.get(PARAM_MAX_LENGTH, 0)))
            return Response(render_ranking(result), media_type="application/json")
        req = parse_rerank(body, self.settings.max_inputs, True)
        result, _ = await self.score(request, req, body)
        return Response(render_rerank(result, req), media_type="application/json")

    async def default_model(self, task: str, given: str) -> str:
        """``given``, or the only served model of ``task`` (TEI's bodies name no model)."""
        if given:
            return given
        await self.registry.refresh(REFRESH_INTERVAL_S)
        names = sorted(n for n, c in self.registry.clients.items() if c.info.task == task)
        if len(names) == 1:
            return names[0]
        what = TASK_ROUTES[task][0]
        served = ", ".join(names) or "none"
        raise bad_request(
            f'several models of this task are served ({served}): send "model" in the body'
            if names
            else f"no {what} is served",
            "model",
        )

    async def with_default_model(self, req, task: str):
        return dataclasses.replace(req, model=await self.default_model(task, req.model))

    @endpoint
    @admitted
    async def tei_embed(self, request: Request) -> Response:
        """TEI ``/embed``: ``[[float]]``, with TEI's timing headers."""
        started = time.perf_counter_ns()
        self.authorize(request)
        req = tei.parse_embed(await self.read_json(request), self.settings.max_inputs)
        req = await self.with_default_model(req, TASK_EMBED)
        client, options = await self.resolve_embedding(req, request.scope["path"])
        self.served(request, client)
        tokenized = time.perf_counter_ns()
        texts = req.texts if req.texts is not None else await self.decode(client, req.token_ids or [], options)
        called = time.perf_counter_ns()
        result = await client.encode(texts, **options)
        inferred = time.perf_counter_ns()
        self.metrics.count_tokens(client.info.name, int(result.token_counts.sum()))
        headers = tei.timing_headers(
            started, called - tokenized, inferred - called, time.perf_counter_ns(), result.server_ns
        )
        return Response(tei.render_embed(result.embeddings), headers=headers, media_type="application/json")

    async def tei_tokenize(self, request: Request, body: dict[str, Any]) -> Response:
        req, keep_special = tei.parse_tokenize(body, self.settings.max_inputs)
        req = await self.with_default_model(req, TASK_EMBED)
        client, options = await self.resolve_embedding(req, request.scope["path"])
        self.served(request, client)
        result = await client.tokenize(req.texts or [], **{o.name: options.get(o.name) for o in TOKEN_OPTIONS})
        tok = self.need_tokenizer(client.info.name)
        pieces = [[tok.id_to_token(int(t)) or "" for t in ids] for ids in result.ids]
        specials = {int(t) for t in tok.get_added_tokens_decoder() if tok.get_added_tokens_decoder()[t].special}
        return Response(tei.render_tokenize(result, pieces, specials, keep_special), media_type="application/json")

    @endpoint
    @admitted
    async def tei_decode(self, request: Request) -> Response:
        """TEI ``/decode``: ids back to text with the served tokenizer."""
        self.authorize(request)
        req = tei.parse_decode(await self.read_json(request))
        name = await self.default_model(TASK_EMBED, req.model)
        client = self.served(request, await self.resolve(name, TASK_EMBED, request.scope["path"]))
        tok = self.need_tokenizer(client.info.name)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        if any(t >= vocab for seq in req.ids for t in seq):
            raise bad_request(f"ids must lie in the vocabulary of {name!r} [0, {vocab})", "ids")
        texts = tok.decode_batch(req.ids, skip_special_tokens=req.skip_special_tokens)
        return json_response(texts)

    @endpoint
    async def tei_info(self, request: Request) -> Response:
        """TEI ``/info`` of the only served embedding model (or reranker; ``?model=`` picks one)."""
        self.authorize(request)
        await self.registry.refresh(REFRESH_INTERVAL_S)
        given = request.query_params.get("model", "")
        if not given:
            tasks = {c.info.task for c in self.registry.clients.values()}
            task = TASK_EMBED if TASK_EMBED in tasks else TASK_RERANK
            given = await self.default_model(task, "")
        client = await self.registry.resolve(given)
        if client is None:
            raise ApiError(MODEL_NOT_FOUND, f"The model {given!r} does not exist", param="model")
        max_length = int(client.info.parameters.get(PARAM_MAX_LENGTH, 0))
        s = self.settings
        return json_response(
            tei.info(client.info.name, client.info.task, max_length, s.max_inputs, s.max_in_flight, __version__)
        )

    def need_tokenizer(self, name: str):
        tok = self.registry.tokenizer(name)
        if tok is None:
            raise bad_request(
                f"this route needs the tokenizer of {name!r}: start the gateway with --model-repository", "model"
            )
        return tok

    @endpoint
    @admitted
    async def rerank_v2(self, request: Request) -> Response:
        """Cohere v2 ``/v2/rerank``: indices and scores only (documents on ``return_documents: true``)."""
        result, req = await self._rerank(request, return_documents=False)
        return Response(render_rerank_v2(result, req), media_type="application/json")

    @endpoint
    @admitted
    async def cohere_embed(self, request: Request) -> Response:
        """Cohere ``/v1/embed`` and ``/v2/embed`` (``cohere_embed``): one server call per vector type."""
        self.authorize(request)
        version = 2 if request.scope["path"].startswith("/v2/") else 1
        req = parse_embed(await self.read_json(request), version, self.settings.max_inputs)
        as_openai = EmbeddingRequest(req.model, req.texts, None, "float", req.options)
        client, options = await self.resolve_embedding(as_openai, request.scope["path"])
        self.served(request, client)
        check_max_tokens(req, int(client.info.parameters.get(PARAM_MAX_LENGTH, 0)))
        kinds = req.types or [EMBEDDING_TYPE_DEFAULT]
        calls = list(dict.fromkeys(call_type(k) for k in kinds))
        answers = await asyncio.gather(
            *(
                client.encode(req.texts, **options, **({EMBEDDING_TYPE: t} if t != EMBEDDING_TYPE_DEFAULT else {}))
                for t in calls
            )
        )
        by_call = dict(zip(calls, answers))
        self.metrics.count_tokens(client.info.name, int(answers[0].token_counts.sum()))
        results = {k: by_call[call_type(k)] for k in kinds}
        return Response(render_embed(req, results), media_type="application/json")

    @endpoint
    async def models(self, request: Request) -> Response:
        self.authorize(request)
        await self.registry.refresh(REFRESH_INTERVAL_S)
        served = self.registry.clients
        entries: list[tuple[str, str, dict[str, str]]] = [(name, name, {}) for name in sorted(served)]
        entries += [(a, name, {}) for a, name in sorted(self.settings.aliases.items()) if name in served]
        # Every embedding model (and alias of one) again with QUERY_SUFFIX: the query embedder.
        entries += [
            (i + QUERY_SUFFIX, root, {INPUT_TYPE: QUERY})
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


def create_app(settings: GatewaySettings) -> Starlette:
    gw = Gateway(settings)
    routes = [
        Route("/v1/embeddings", gw.embeddings, methods=["POST"]),
        Route("/tokenize", gw.tokenize, methods=["POST"]),
        Route("/v1/tokenize", gw.tokenize, methods=["POST"]),
        Route("/v1/rerank", gw.rerank, methods=["POST"]),
        Route("/rerank", gw.rerank, methods=["POST"]),  # vLLM serves both
        Route("/v2/rerank", gw.rerank_v2, methods=["POST"]),
        Route("/v1/ranking", gw.ranking, methods=["POST"]),  # NVIDIA NIM
        Route("/v1/embed", gw.cohere_embed, methods=["POST"]),  # Cohere v1
        Route("/v2/embed", gw.cohere_embed, methods=["POST"]),  # Cohere v2
        Route("/embed", gw.tei_embed, methods=["POST"]),  # TEI (and /rerank, /tokenize with TEI's bodies)
        Route(
            "/", gw.tei_embed, methods=["POST"]
        ),  # TEI's root route: an embedding model's /embed (haystack posts here)
        Route("/decode", gw.tei_decode, methods=["POST"]),
        Route("/info", gw.tei_info, methods=["GET"]),
        Route("/v1/models", gw.models, methods=["GET"]),
        Route("/health", gw.health, methods=["GET"]),
        Route("/health/ready", gw.health, methods=["GET"]),
        Route("/health/live", gw.live, methods=["GET"]),
        Route("/metrics", gw.metrics_endpoint, methods=["GET"]),
        *m3_routes.routes(gw),  # bge-m3: /embed_sparse, /embed_all, /v1/embeddings/all
    ]
    app = Starlette(routes=routes, lifespan=gw.lifespan, exception_handlers={HTTPException: http_error})
    app.state.gateway = gw
    return app
