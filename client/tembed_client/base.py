"""Construction and per-call options shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import replicas
from .contract import DEFAULT_URL
from .discovery import ModelInfo
from .errors import invalid
from .retry import RetryPolicy

COMPRESSIONS = (None, "gzip", "deflate")


class ClientBase:
    """Construction and per-call options shared by both clients."""

    _triton_class: Any  # tritonclient.grpc[.aio].InferenceServerClient

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        model: str | None = None,
        *,
        timeout: float | None = 60.0,
        headers: Mapping[str, str] | None = None,
        compression: str | None = None,
        verbose: bool = False,
        triton: Any = None,
        info: ModelInfo | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """``triton``: an open ``tritonclient`` InferenceServerClient to share (its owner closes it;
        ``close()`` then leaves it open). ``info``: the model's config, when the caller has read it.
        ``retry``: how requests refused as UNAVAILABLE / RESOURCE_EXHAUSTED are retried.
        ``url``: one address, or several replicas serving the same models (``"a:8001,b:8001"``, a list,
        or ``"dns:///NAME:8001"``): each call goes to the least busy one and fails over once to another
        if its replica is gone (:mod:`tembed_client.replicas`)."""
        if compression not in COMPRESSIONS:
            raise invalid(f"compression must be gzip, deflate or None, not {compression!r}")
        self.url = url if isinstance(url, str) else ",".join(url)
        self._model = model if info is None else info.name
        self._info: ModelInfo | None = info
        # Passed to every RPC; inference calls also get the compression.
        self._rpc_kw: dict[str, Any] = {"headers": dict(headers) if headers else None, "client_timeout": timeout}
        self._infer_kw: dict[str, Any] = {**self._rpc_kw, "compression_algorithm": compression}
        self.retry = retry or RetryPolicy()
        self._owns_triton = triton is None
        self._triton = replicas.connect(url, self._triton_class, verbose) if triton is None else triton

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, model={self._model!r})"
