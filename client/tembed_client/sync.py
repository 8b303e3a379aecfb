"""Blocking client."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from . import contract as c
from . import m3
from .base import ClientBase
from .calls import Call, RerankCall, Text, Texts, TokenizeCall
from .discovery import ModelInfo, loaded_models, parse_model_config, pick_model
from .errors import EmbeddingError, triton_errors
from .results import EmbeddingResult, RerankResult, TokenizeResult


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

    def encode(self, texts: Texts, **options: Any) -> EmbeddingResult:
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
        call = Call.prepare(self.model_info(), texts, **options)
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

    def embed(self, texts: Texts, **options: Any) -> np.ndarray | EmbeddingResult:
        """Float32 embeddings: [n, d] for a list of n texts, [d] for a single str (or the compact
        ``embedding_type``'s values, as :meth:`encode` says). With bge-m3's ``outputs`` beyond dense
        (``outputs=["dense", "sparse", "colbert"]``): the :class:`EmbeddingResult`, whose ``sparse``
        and ``multi_vectors`` hold them."""
        result = self.encode(texts, **options)
        return result if result.sparse is not None or result.multi_vectors is not None else result.embeddings

    def tokenize(self, texts: Texts, **options: Any) -> TokenizeResult:
        """The token ids the model would embed (prompt and special tokens included, after
        truncation), from the served tokenizer itself, with the counts before and after truncation.
        Options: those of :meth:`encode` that change the ids (``contract.TOKEN_OPTIONS``)."""
        call = TokenizeCall.prepare(self.model_info(), texts, **options)
        return call.finish([self._send(where, request) for where, request in call.requests()])

    def score(self, query: Text, documents: Iterable[Text], **options: Any) -> RerankResult:
        """Relevance of each document to ``query``, in the documents' order, with token counts.

        Lists longer than the model's ``max_texts`` are sent in chunks and merged."""
        info = self.model_info()
        if m3.reranks(info):  # bge-m3: its M3 score from one embedding call (weights=[dense, sparse, colbert])
            weights = m3.check_weights(options.pop(m3.WEIGHTS, None))
            texts = m3.rerank_texts(query, documents)
            return m3.rerank_result(self.encode(texts, outputs=c.OUTPUT_KINDS, **options), weights)
        call = RerankCall.prepare(info, query, documents, **options)
        return call.finish([self._send(where, request) for where, request in call.requests()])

    def rerank(
        self, query: Text, documents: Iterable[Text], *, top_n: int | None = None, **options: Any
    ) -> list[tuple[int, float]]:
        """``(index, score)`` of the documents, best first (the ``top_n`` best when given)."""
        return self.score(query, documents, **options).ranking(top_n)
