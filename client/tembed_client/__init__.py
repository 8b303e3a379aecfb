"""Thin gRPC client for the Triton text-embedding server."""

from ._common import EmbeddingResult, ModelInfo
from .aio import AsyncEmbeddingClient
from .errors import EmbeddingError
from .sync import EmbeddingClient

__version__ = "0.1.0"

__all__ = ["AsyncEmbeddingClient", "EmbeddingClient", "EmbeddingError", "EmbeddingResult", "ModelInfo"]
