"""Cutting a call's texts into requests the server takes: its max_texts, byte and window limits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def chunked(items: Sequence[Any], size: int, max_bytes: int | None = None) -> list[Sequence[Any]]:
    """``items`` cut into consecutive pieces of at most ``size`` items and ``max_bytes`` bytes."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    if max_bytes is None:
        return [items[i : i + size] for i in range(0, len(items), size)]
    out, start, total = [], 0, 0
    for i, item in enumerate(items):
        if i > start and (i - start == size or total + len(item) > max_bytes):
            out.append(items[start:i])
            start, total = i, 0
        total += len(item)
    if start < len(items):
        out.append(items[start:])
    return out


def chunked_rows(
    items: Sequence[bytes], size: int, max_bytes: int | None, rows: Sequence[int], max_rows: int
) -> list[Sequence[bytes]]:
    """:func:`chunked`, and at most ``max_rows`` of ``rows`` (one count per item) per piece."""
    out, start, total, used = [], 0, 0, 0
    for i, item in enumerate(items):
        full = i - start == size or (max_bytes is not None and total + len(item) > max_bytes)
        if i > start and (full or used + rows[i] > max_rows):
            out.append(items[start:i])
            start, total, used = i, 0, 0
        total += len(item)
        used += rows[i]
    if start < len(items):
        out.append(items[start:])
    return out


def chunk_windows(item: bytes, max_length: int, max_windows: int) -> int:
    """At least as many windows as the server cuts ``item`` into under long_text chunk, from its size
    alone: no token spans less than a byte, and a window holds at least max_length / 2 text tokens
    (the prompt, the special tokens and the overlap share the rest). Over max_windows the server
    refuses the text whatever the request, so no more are counted."""
    return min(max_windows, max(1, -(-len(item) // max(1, max_length // 2))))
