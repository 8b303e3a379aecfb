"""Retrieval-quality evaluation of served embedding models through the gRPC client."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``eval`` to a CLI's subcommands (``tembed eval``); imports the heavy parts lazily."""
    from .cli import register as _register

    return _register(subparsers)
