"""Retrieval on Qdrant's engine: ``tembed index`` (corpus -> served embedder -> Qdrant Edge or a Qdrant server)
and ``tembed search`` (dense or hybrid dense + BM25, optional rerank), and the same as a library."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """``tembed index`` and ``tembed search`` (entry point ``tembed.commands``)."""
    from .cli import register as _register

    _register(subparsers)
