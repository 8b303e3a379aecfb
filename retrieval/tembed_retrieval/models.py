"""The served models a retrieval uses: an embedder and a reranker, over gRPC (``tembed_client``, the default) or
the HTTP gateway (``--gateway URL``: ``/v1/embeddings``, ``/v1/rerank``). Bulk embedding keeps a few requests in
flight so the server's batcher always has the next one, and sends them at the priority it is given
(``contract.PRIORITY``: ``build_index`` gives the bulk lane's, so a user's query does not queue behind them)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tembed_client import EmbeddingClient
from tembed_client import contract as c

DEFAULT_IN_FLIGHT = 2  # requests of max_texts texts each: one computed while the next waits in the batcher
BULK_TIMEOUT_S = 600.0  # a bulk request of max_texts long passages on a loaded CPU takes tens of seconds


class Embedder:
    """``embed(texts, input_type)`` -> [n, d] float32 unit rows, through one served embedding model."""

    def __init__(
        self, model: str, *, url: str = c.DEFAULT_URL, gateway: str | None = None, timeout: float = BULK_TIMEOUT_S
    ) -> None:
        self.model, self.gateway, self.timeout = model, gateway.rstrip("/") if gateway else None, timeout
        self._client = None if gateway else EmbeddingClient(url, model, timeout=timeout)
        info = self._client.model_info() if self._client else None
        self.max_texts = info.max_texts if info else 32
        self.dimension = info.dimension if info else None  # the gateway's: read from the first answer
        self.min_dimension = info.min_dimension if info else None

    def _one(self, texts: list[str], input_type: str, options: dict[str, Any]) -> np.ndarray:
        if self._client is not None:
            return np.asarray(self._client.encode(texts, input_type=input_type, **options).embeddings, np.float32)
        body = {"model": self.model, "input": texts, c.INPUT_TYPE: input_type, **options}
        data = _post(f"{self.gateway}/v1/embeddings", body, self.timeout)["data"]
        return np.asarray([d["embedding"] for d in sorted(data, key=lambda d: d["index"])], np.float32)

    def embed(
        self,
        texts: Sequence[str],
        input_type: str,
        *,
        dimensions: int | None = None,
        long_text: str | None = None,
        priority: str | None = None,
        in_flight: int = DEFAULT_IN_FLIGHT,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """``priority``: the requests' lane (``contract.PRIORITY_VALUES``; None: the server's default, a query's),
        sent as the gRPC option or the gateway's ``priority`` field."""
        options: dict[str, Any] = {}
        if dimensions is not None:
            options[c.DIMENSIONS] = dimensions
        if long_text is not None:
            options[c.LONG_TEXT] = long_text
        if priority is not None:
            options[c.PRIORITY] = priority
        chunks = [list(texts[i : i + self.max_texts]) for i in range(0, len(texts), self.max_texts)]
        if not chunks:
            return np.empty((0, dimensions or self.dimension or 0), np.float32)
        out: list[np.ndarray] = []
        with ThreadPoolExecutor(max(1, in_flight)) as pool:
            for chunk, vecs in zip(chunks, pool.map(lambda ch: self._one(ch, input_type, options), chunks)):
                out.append(vecs)
                if progress:
                    progress(len(chunk))
        return np.concatenate(out)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class Reranker:
    """``scores(query, documents)`` -> [n] relevance, through one served reranker."""

    def __init__(self, model: str, *, url: str = c.DEFAULT_URL, gateway: str | None = None) -> None:
        self.model, self.gateway = model, gateway.rstrip("/") if gateway else None
        self._client = None if gateway else EmbeddingClient(url, model)

    def scores(self, query: str, documents: Sequence[str]) -> np.ndarray:
        if self._client is not None:
            return np.asarray(self._client.score(query, list(documents)).scores, np.float32)
        body = {"model": self.model, "query": query, "documents": list(documents)}
        out = np.zeros(len(documents), np.float32)
        for r in _post(f"{self.gateway}/v1/rerank", body)["results"]:
            out[r["index"]] = r["relevance_score"]
        return out

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _post(url: str, body: dict[str, Any], timeout: float = BULK_TIMEOUT_S) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None
