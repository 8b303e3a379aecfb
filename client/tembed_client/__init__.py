"""Thin gRPC client for the Triton text-embedding server.

Names are imported on first use, so ``tembed_client.contract`` (the wire contract the server's
runtime shares) costs a Triton stub no tritonclient import.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AsyncEmbeddingClient": "aio",
    "EmbeddingClient": "sync",
    "EmbeddingError": "errors",
    "EmbeddingResult": "results",
    "ModelInfo": "discovery",
    "RerankResult": "results",
    "RetryPolicy": "retry",
    "SparseEmbedding": "results",
    "TokenizeResult": "results",
    "classify": "errors",
    "discover_models": "discovery",
    "gather": "aio",
    "parse_model_config": "discovery",
    "loaded_models": "discovery",
    "ready_models": "discovery",
    "triton_errors": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
