"""Asyncio client; mirrors :mod:`tembed_client.sync`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc.aio as grpcclient

from . import contract as c
from . import m3
from .base import ClientBase
from .calls import Call, RerankCall, Text, Texts, TokenizeCall
from .discovery import ModelInfo, loaded_models, parse_model_config, pick_model
from .errors import EmbeddingError, triton_errors
from .results import EmbeddingResult, RerankResult, TokenizeResult

T = TypeVar("T")


async def gather(aws: Iterable[Awaitable[T]]) -> list[T]:
    """``asyncio.gather`` that cancels the others as soon as one fails. One awaitable is awaited in
    the caller's task: no Task to create and schedule for the common single-chunk call."""
    pending = list(aws)
    if len(pending) == 1:
        return [await pending[0]]
    tasks = [asyncio.ensure_future(aw) for aw in pending]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


class AsyncEmbeddingClient(ClientBase):
    """Asyncio version of :class:`~tembed_client.EmbeddingClient`.

    Same arguments and methods, as coroutines; chunks of a long list are sent concurrently.
    """

    _triton_class = grpcclient.InferenceServerClient

    async def __aenter__(self) -> AsyncEmbeddingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_triton:
            await self._triton.close()

    async def server_info(self) -> dict[str, Any]:
        """The server's metadata: ``name``, ``version``, ``extensions``."""
        with triton_errors():
            return await self._triton.get_server_metadata(as_json=True, **self._rpc_kw)

    async def model_info(self) -> ModelInfo:
        """The model's parameters, read from its config on first use and cached."""
        if self._info is None:
            with triton_errors():
                if self._model is not None:
                    config = await self._triton.get_model_config(self._model, as_json=True, **self._rpc_kw)
                    self._info = parse_model_config(config)
                else:
                    stats = await self._triton.get_inference_statistics(as_json=True, **self._rpc_kw)
                    names = loaded_models(stats)
                    configs = await gather(
                        self._triton.get_model_config(name, as_json=True, **self._rpc_kw) for name in names
                    )
                    self._info = pick_model(dict(zip(names, configs)))
        return self._info

    async def encode(self, texts: Texts, **options: Any) -> EmbeddingResult:
        """Embeddings and token counts: [n, d] and [n] for a list, [d] and [] for one str.

        Options by keyword, as ``contract.OPTIONS`` declares them for the embed task (None: not given;
        an unknown name is a TypeError): ``instruction``, ``input_type``, ``dimensions`` (Matryoshka),
        and these three:

        ``truncate``: what happens to a text over the model's max_length tokens, one of
        ``contract.TRUNCATE_VALUES`` (any case): ``END`` (the server's default) cuts its end,
        ``START`` its start (the prompt is kept), ``NONE`` refuses the request.

        ``embedding_type``: one of ``contract.EMBEDDING_TYPES``; ``"float"`` (the default) gives
        float32 vectors, ``"int8"``/``"uint8"`` one byte per dimension (ranges calibrated at export),
        ``"binary"``/``"ubinary"`` the sign bits packed 8 per byte, as int8/uint8 arrays
        (:class:`EmbeddingResult`), applied after ``dimensions``.

        ``long_text="chunk"`` embeds such a text whole, as the token-weighted mean of windows of
        max_length tokens (``contract.LONG_TEXT_VALUES``; ``truncate`` by default); lists are then
        also sent in pieces of at most the server's ``max_rows`` windows.

        ``outputs`` (bge-m3, a model whose ensemble lists them: ``contract.OUTPUT_KINDS``): which of
        ``["dense", "sparse", "colbert"]`` to return (default dense only); the result's ``sparse`` holds
        a :class:`SparseEmbedding` per text, ``multi_vectors`` a ``[tokens - 1, hidden]`` array per text,
        and ``embeddings`` has no columns when dense is not asked for. ``dimensions`` and
        ``embedding_type`` apply to dense only; under ``long_text="chunk"`` sparse is the windows'
        maximum and colbert is refused."""
        call = Call.prepare(await self.model_info(), texts, **options)
        results = await gather(self._send(where, request) for where, request in call.requests())
        return call.finish(results)

    async def _send(self, where: str, request: dict[str, Any]) -> grpcclient.InferResult:
        started, attempt, kw = time.monotonic(), 0, self._infer_kw
        while True:
            try:
                with triton_errors(where):
                    return await self._triton.infer(**request, **kw)
            except EmbeddingError as exc:
                # Retries stay within the call's timeout: a caller's deadline is not multiplied.
                timeout = self._rpc_kw["client_timeout"]
                pause = self.retry.again(attempt, started, timeout) if exc.retryable else None
                if pause is None:
                    raise
                if timeout is not None:  # the retry gets what is left of the call's timeout
                    kw = {**self._infer_kw, "client_timeout": timeout - (time.monotonic() + pause - started)}
                await asyncio.sleep(pause)
                attempt += 1

    async def embed(self, texts: Texts, **options: Any) -> np.ndarray | EmbeddingResult:
        """Float32 embeddings: [n, d] for a list of n texts, [d] for a single str (or the compact
        ``embedding_type``'s values, as :meth:`encode` says). With bge-m3's ``outputs`` beyond dense:
        the :class:`EmbeddingResult` (``sparse``, ``multi_vectors``), as the blocking client."""
        result = await self.encode(texts, **options)
        return result if result.sparse is not None or result.multi_vectors is not None else result.embeddings

    async def tokenize(self, texts: Texts, **options: Any) -> TokenizeResult:
        """The token ids the model would embed (prompt and special tokens included, after
        truncation), from the served tokenizer itself, with the counts before and after truncation.
        Options: those of :meth:`encode` that change the ids (``contract.TOKEN_OPTIONS``)."""
        call = TokenizeCall.prepare(await self.model_info(), texts, **options)
        results = await gather(self._send(where, request) for where, request in call.requests())
        return call.finish(results)

    async def score(self, query: Text, documents: Iterable[Text], **options: Any) -> RerankResult:
        """Relevance of each document to ``query``, in the documents' order; chunks go concurrently."""
        info = await self.model_info()
        if m3.reranks(info):  # bge-m3: its M3 score from one embedding call (weights=[dense, sparse, colbert])
            weights = m3.check_weights(options.pop(m3.WEIGHTS, None))
            texts = m3.rerank_texts(query, documents)
            return m3.rerank_result(await self.encode(texts, outputs=c.OUTPUT_KINDS, **options), weights)
        call = RerankCall.prepare(info, query, documents, **options)
        results = await gather(self._send(where, request) for where, request in call.requests())
        return call.finish(results)

    async def rerank(
        self, query: Text, documents: Iterable[Text], *, top_n: int | None = None, **options: Any
    ) -> list[tuple[int, float]]:
        """``(index, score)`` of the documents, best first (the ``top_n`` best when given)."""
        return (await self.score(query, documents, **options)).ranking(top_n)
