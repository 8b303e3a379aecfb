"""How a runner cuts one padded batch into the calls it makes: rows grouped by length, padding trimmed.

Requests arrive padded to a length bucket (so Triton's dynamic batcher can merge them), and a request
mixing a query with a long paragraph is padded to the paragraph's bucket. Cutting each length group
to its own longest row spends the compute on tokens, not padding; the mask makes the result
independent of how much padding a row had. Measured: ONNX Runtime on CPU 1.9-2.3x tokens/s
(docs/BENCHMARKS.md); PyTorch on an H200, a mixed batch of 16 texts of 32-2048 tokens ran at 7 % MFU
padded to the longest (docs/GPU.md).
"""

from __future__ import annotations

import numpy as np


def length_group(n: int) -> int:
    # Power-of-two classes from 16: few calls per batch, little padding within each.
    return max(16, 1 << (int(n) - 1).bit_length())


def plan(
    mask: np.ndarray, *, left: bool, trim: bool = True, max_batch_tokens: int = 0, group_width: bool = False
) -> list[tuple[np.ndarray, slice]]:
    """(rows, columns) of each call: rows of one length group, columns cut to that group's longest
    row on the padding side (``group_width``: to the group's width, so calls come in a few shapes, for a
    runtime that compiles per shape), at most ``max_batch_tokens`` rows x columns per call (0: no cap)."""
    width = mask.shape[1]
    lengths = mask.sum(axis=1)
    if trim:
        order = np.argsort(lengths, kind="stable")
        groups = np.array([length_group(n) for n in lengths[order]])
        parts = np.split(order, np.flatnonzero(np.diff(groups)) + 1)
    else:
        parts = [np.arange(mask.shape[0])]
    calls = []
    for part in parts:
        w = max(1, int(lengths[part].max())) if trim else width
        if trim and group_width:
            w = min(width, length_group(w))
        cols = slice(width - w, width) if left else slice(0, w)
        step = max(1, max_batch_tokens // w) if max_batch_tokens else len(part)
        calls.extend((part[start : start + step], cols) for start in range(0, len(part), step))
    return calls
