"""Retrieval on Qdrant's engine: ``tembed index`` (corpus -> served embedder -> Qdrant Edge or a Qdrant server)
and ``tembed search`` (dense or hybrid dense + BM25, optional rerank), and the same as a library."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """``tembed index`` and ``tembed search`` (entry point ``tembed.commands``)."""
    from .cli import register as _register

    _register(subparsers)


_API = {
    "Retriever": "retrieve",
    "SearchOptions": "retrieve",
    "build_index": "retrieve",
    "Embedder": "models",
    "Reranker": "models",
    "IndexSpec": "store",
    "open_store": "store",
    "read_corpus": "corpus",
}


def __getattr__(name: str):
    """The library API, imported on first use (``tembed --help`` stays light)."""
    if name not in _API:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
