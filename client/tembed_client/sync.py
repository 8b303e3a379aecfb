"""Blocking client."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from ._common import (
    Call,
    ClientBase,
    EmbeddingResult,
    ModelInfo,
    RerankCall,
    RerankResult,
    Text,
    Texts,
    TokenizeCall,
    TokenizeResult,
    loaded_models,
    parse_model_config,
    pick_model,
)
from .errors import EmbeddingError, triton_errors


class EmbeddingClient(ClientBase):
    """Embeds texts with a Triton text-embedding ensemble over gRPC.

    ``model=None`` picks the single ready ensemble on the server. ``timeout`` (seconds) applies
    to each RPC; ``headers`` and ``compression`` (``"gzip"``/``"deflate"``) to every request.
    Lists longer than the model's ``max_texts`` are sent in chunks, one after another.
    Every failure raises :class:`~tembed_client.EmbeddingError`.
    """

    _triton_class = grpcclient.InferenceServerClient

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_triton:
            self._triton.close()

    def server_info(self) -> dict[str, Any]:
        """The server's metadata: ``name``, ``version``, ``extensions``."""
        with triton_errors():
            return self._triton.get_server_metadata(as_json=True, **self._rpc_kw)

    def model_info(self) -> ModelInfo:
        """The model's parameters, read from its config on first use and cached."""
        if self._info is None:
            with triton_errors():
                if self._model is not None:
                    config = self._triton.get_model_config(self._model, as_json=True, **self._rpc_kw)
                    self._info = parse_model_config(config)
                else:
                    stats = self._triton.get_inference_statistics(as_json=True, **self._rpc_kw)
                    configs = {
                        name: self._triton.get_model_config(name, as_json=True, **self._rpc_kw)
                        for name in loaded_models(stats)
                    }
                    self._info = pick_model(configs)
        return self._info

    def encode(
        self,
        texts: Texts,
        *,
        instruction: Text | None = None,
        input_type: str | None = None,
        dimensions: int | None = None,
        truncate: str | None = None,
        embedding_type: str | None = None,
        long_text: str | None = None,
    ) -> EmbeddingResult:
        """Embeddings and token counts: [n, d] and [n] for a list, [d] and [] for one str.

        ``truncate``: what happens to a text over the model's max_length tokens, one of
        ``contract.TRUNCATE_VALUES`` (any case): ``"END"`` (the server's default) cuts its end,
        ``"START"`` its start (the prompt is kept), ``"NONE"`` refuses the request.

        ``embedding_type``: one of ``contract.EMBEDDING_TYPES``; ``"float"`` (the default) gives
        float32 vectors, ``"int8"``/``"uint8"`` one byte per dimension (ranges calibrated at export),
        ``"binary"``/``"ubinary"`` the sign bits packed 8 per byte, as int8/uint8 arrays
        (:class:`EmbeddingResult`), applied after ``dimensions``.

        ``long_text="chunk"`` embeds such a text whole, as the token-weighted mean of windows of
        max_length tokens (``contract.LONG_TEXT_VALUES``; default ``"truncate"``); lists are then
        also sent in pieces of at most the server's ``max_rows`` windows."""
        call = Call.prepare(
            self.model_info(),
            texts,
            instruction=instruction,
            input_type=input_type,
            dimensions=dimensions,
            truncate=truncate,
            embedding_type=embedding_type,
            long_text=long_text,
        )
        return call.finish([self._send(where, request) for where, request in call.requests()])

    def _send(self, where: str, request: dict[str, Any]) -> grpcclient.InferResult:
        started, attempt, kw = time.monotonic(), 0, self._infer_kw
        while True:
            try:
                with triton_errors(where):
                    return self._triton.infer(**request, **kw)
            except EmbeddingError as exc:
                # Retries stay within the call's timeout: a caller's deadline is not multiplied.
                timeout = self._rpc_kw["client_timeout"]
                pause = self.retry.again(attempt, started, timeout) if exc.retryable else None
                if pause is None:
                    raise
                if timeout is not None:  # the retry gets what is left of the call's timeout
                    kw = {**self._infer_kw, "client_timeout": timeout - (time.monotonic() + pause - started)}
                time.sleep(pause)
                attempt += 1

    def embed(
        self,
        texts: Texts,
        *,
        instruction: Text | None = None,
        input_type: str | None = None,
        dimensions: int | None = None,
        truncate: str | None = None,
        embedding_type: str | None = None,
        long_text: str | None = None,
    ) -> np.ndarray:
        """Float32 embeddings: [n, d] for a list of n texts, [d] for a single str (or the compact
        ``embedding_type``'s values, as :meth:`encode` says)."""
        return self.encode(
            texts,
            instruction=instruction,
            input_type=input_type,
            dimensions=dimensions,
            truncate=truncate,
            embedding_type=embedding_type,
            long_text=long_text,
        ).embeddings

    def tokenize(
        self,
        texts: Texts,
        *,
        input_type: str | None = None,
        instruction: Text | None = None,
        truncate: str | None = None,
    ) -> TokenizeResult:
        """The token ids the model would embed (prompt and special tokens included, after
        truncation), from the served tokenizer itself, with the counts before and after truncation."""
        call = TokenizeCall.prepare(
            self.model_info(), texts, instruction=instruction, input_type=input_type, truncate=truncate
        )
        return call.finish([self._send(where, request) for where, request in call.requests()])

    def score(self, query: Text, documents: Iterable[Text], *, instruction: Text | None = None) -> RerankResult:
        """Relevance of each document to ``query``, in the documents' order, with token counts.

        Lists longer than the model's ``max_texts`` are sent in chunks and merged."""
        call = RerankCall.prepare(self.model_info(), query, documents, instruction=instruction)
        return call.finish([self._send(where, request) for where, request in call.requests()])

    def rerank(
        self,
        query: Text,
        documents: Iterable[Text],
        *,
        top_n: int | None = None,
        instruction: Text | None = None,
    ) -> list[tuple[int, float]]:
        """``(index, score)`` of the documents, best first (the ``top_n`` best when given)."""
        return self.score(query, documents, instruction=instruction).ranking(top_n)
