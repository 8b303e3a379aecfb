"""Asyncio client; mirrors :mod:`tembed_client.sync`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc.aio as grpcclient

from ._common import (
    Call,
    ClientBase,
    EmbeddingResult,
    ModelInfo,
    RerankCall,
    RerankResult,
    Text,
    Texts,
    loaded_models,
    parse_model_config,
    pick_model,
)
from .errors import EmbeddingError, triton_errors

T = TypeVar("T")


async def gather(aws: Iterable[Awaitable[T]]) -> list[T]:
    """``asyncio.gather`` that cancels the others as soon as one fails."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
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

    async def encode(
        self,
        texts: Texts,
        *,
        instruction: Text | None = None,
        input_type: str | None = None,
        dimensions: int | None = None,
    ) -> EmbeddingResult:
        """Embeddings and token counts: [n, d] and [n] for a list, [d] and [] for one str."""
        call = Call.prepare(
            await self.model_info(), texts, instruction=instruction, input_type=input_type, dimensions=dimensions
        )
        results = await gather(self._send(where, request) for where, request in call.requests())
        return call.finish(results)

    async def _send(self, where: str, request: dict[str, Any]) -> grpcclient.InferResult:
        for attempt in range(self.retry.attempts):
            try:
                with triton_errors(where):
                    return await self._triton.infer(**request, **self._infer_kw)
            except EmbeddingError as exc:
                if not exc.retryable or attempt + 1 == self.retry.attempts:
                    raise
                await asyncio.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")

    async def embed(
        self,
        texts: Texts,
        *,
        instruction: Text | None = None,
        input_type: str | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        """Float32 embeddings: [n, d] for a list of n texts, [d] for a single str."""
        result = await self.encode(texts, instruction=instruction, input_type=input_type, dimensions=dimensions)
        return result.embeddings

    async def score(self, query: Text, documents: Iterable[Text], *, instruction: Text | None = None) -> RerankResult:
        """Relevance of each document to ``query``, in the documents' order; chunks go concurrently."""
        call = RerankCall.prepare(await self.model_info(), query, documents, instruction=instruction)
        results = await gather(self._send(where, request) for where, request in call.requests())
        return call.finish(results)

    async def rerank(
        self,
        query: Text,
        documents: Iterable[Text],
        *,
        top_n: int | None = None,
        instruction: Text | None = None,
    ) -> list[tuple[int, float]]:
        """``(index, score)`` of the documents, best first (the ``top_n`` best when given)."""
        return (await self.score(query, documents, instruction=instruction)).ranking(top_n)
