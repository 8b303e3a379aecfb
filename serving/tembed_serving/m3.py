"""bge-m3's sparse and multi-vector outputs, finished per request from the encoder's per-token outputs.

The graph (``runners.torch_model.M3Model``) gives, for every row and position, the lexical weight
``relu(sparse_linear(h))`` and the unit ColBERT vector ``normalize(colbert_linear(h))``. What a request gets
back is FlagEmbedding's ``BGEM3FlagModel.encode`` (1.4.2, ``_process_token_weights`` and
``_process_colbert_vecs``):

- sparse: per text, the (token id, weight) pairs of its real tokens, the special ids (the profile's
  ``special_token_ids``: CLS, EOS, PAD, UNK) and weights <= 0 left out, the maximum weight per id, ids in
  order of their first occurrence. A text's windows (long_text chunk) are one sequence for this: the
  maximum runs over all of them;
- colbert: per text, the vectors of its real tokens but the first (the CLS), in order.

The request's choice travels as a bit mask (bit i: ``OUTPUT_KINDS[i]``); outputs not asked for come back
with no rows, so nobody pays for ColBERT vectors they did not ask for (the encoder skips the graph output
too when no request of a batch wants it).
"""

from __future__ import annotations

import numpy as np

from .contract import (
    GRAPH_OUTPUTS,
    INVALID_ARGUMENT,
    LONG_TEXT,
    LONG_TEXT_CHUNK,
    MULTI_VECTOR_COUNT,
    MULTI_VECTORS,
    OUTPUT_COLBERT,
    OUTPUT_DENSE,
    OUTPUT_KINDS,
    OUTPUT_SPARSE,
    OUTPUTS,
    OUTPUTS_DEFAULT,
    ROW_OUTPUTS,
    SPARSE_COUNT,
    SPARSE_IDS,
    SPARSE_WEIGHTS,
    UNSUPPORTED,
    output_kinds,
)
from .errors import RequestError
from .profile import ModelProfile

ALL_BITS = (1 << len(OUTPUT_KINDS)) - 1


def to_bits(kinds: tuple[str, ...] | list[str]) -> int:
    return sum(1 << OUTPUT_KINDS.index(k) for k in kinds)


def from_bits(bits: int) -> tuple[str, ...]:
    return tuple(k for i, k in enumerate(OUTPUT_KINDS) if bits >> i & 1)


def check_outputs(value: str | None, profile: ModelProfile, long_text: str | None) -> int:
    """The request's OUTPUTS (already checked against the schema) as bits, refused where the model
    has not got one of them or where long_text chunk asks for multi-vectors."""
    kinds = output_kinds(value or OUTPUTS_DEFAULT)
    missing = [k for k in kinds if k not in profile.outputs]
    if missing:
        raise RequestError(
            f"{OUTPUTS} {', '.join(missing)}: model {profile.name!r} has only {', '.join(profile.outputs)}",
            UNSUPPORTED,
            OUTPUTS,
        )
    if OUTPUT_COLBERT in kinds and long_text == LONG_TEXT_CHUNK:
        raise RequestError(
            f"{OUTPUTS} {OUTPUT_COLBERT} is not served under {LONG_TEXT} {LONG_TEXT_CHUNK}: a window's vectors"
            " attend only inside it and overlapping windows repeat tokens; embed the windows as texts of their own,"
            " or ask for dense and sparse only",
            INVALID_ARGUMENT,
            LONG_TEXT,
        )
    return to_bits(kinds)


def row_outputs(rows: int, bits: int) -> np.ndarray:
    return np.full((rows, 1), bits, dtype=np.int32)


def read_row_outputs(given: np.ndarray | None, rows: int) -> int:
    """:func:`row_outputs` undone and checked (anyone who reaches Triton's ports can call the encoder);
    without it (a direct call) dense only."""
    if given is None:
        return to_bits([OUTPUT_DENSE])
    given = np.asarray(given)
    if given.shape != (rows, 1) or not np.issubdtype(given.dtype, np.integer):
        raise RequestError(f"{ROW_OUTPUTS} must be [{rows}, 1] integers, got {list(given.shape)}", param=ROW_OUTPUTS)
    if rows and ((given != given[0, 0]).any() or not 1 <= int(given[0, 0]) <= ALL_BITS):
        raise RequestError(f"{ROW_OUTPUTS} must be one value in [1, {ALL_BITS}] on every row", param=ROW_OUTPUTS)
    return int(given[0, 0]) if rows else to_bits([OUTPUT_DENSE])


def graph_names(bits: int) -> list[str]:
    """The graph outputs a request needs: always the embedding (the first; cheap), and its token outputs."""
    return [GRAPH_OUTPUTS[k] for k in OUTPUT_KINDS if k == OUTPUT_DENSE or bits >> OUTPUT_KINDS.index(k) & 1]


def sparse_pairs(ids: np.ndarray, weights: np.ndarray, special: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One sequence's (ids, weights) of its real tokens -> (unique ids in first-occurrence order, max weights)."""
    keep = (weights > 0) & ~np.isin(ids, special)
    ids, weights = ids[keep], weights[keep]
    if not ids.size:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    best = np.zeros(unique.size, dtype=np.float32)
    np.maximum.at(best, inverse, weights.astype(np.float32))
    order = np.argsort(first, kind="stable")
    return unique[order].astype(np.int32), best[order]


def finish_request(
    ids: np.ndarray,
    mask: np.ndarray,
    got: dict[str, np.ndarray],
    row_text: np.ndarray,
    bits: int,
    profile: ModelProfile,
) -> dict[str, np.ndarray]:
    """One request's sparse and multi-vector tensors (``contract.M3_TENSORS``) from its rows'
    ``ids``/``mask`` [rows, s] and the graph's per-token outputs; empty where not asked for."""
    row_text = np.asarray(row_text).reshape(-1)
    n = int(row_text[-1]) + 1 if row_text.size else 0
    real = np.asarray(mask) != 0
    special = np.asarray(profile.special_token_ids, dtype=np.int64)
    sparse_ids, sparse_weights = [np.zeros(0, np.int32)], [np.zeros(0, np.float32)]
    sparse_count = np.zeros((n, 1), dtype=np.int32)
    if bits >> OUTPUT_KINDS.index(OUTPUT_SPARSE) & 1:
        weights = got[GRAPH_OUTPUTS[OUTPUT_SPARSE]]
        for t in range(n):
            rows = np.flatnonzero(row_text == t)
            tid = np.concatenate([ids[r][real[r]] for r in rows]).astype(np.int64)
            tw = np.concatenate([weights[r][real[r]] for r in rows])
            pid, pw = sparse_pairs(tid, tw, special)
            sparse_ids.append(pid)
            sparse_weights.append(pw)
            sparse_count[t, 0] = pid.size
    hidden = profile.dimension
    vectors_out, vector_count = [np.zeros((0, hidden), np.float32)], np.zeros((n, 1), dtype=np.int32)
    if bits >> OUTPUT_KINDS.index(OUTPUT_COLBERT) & 1:
        vectors = got[GRAPH_OUTPUTS[OUTPUT_COLBERT]]
        for r in range(row_text.size):  # colbert is refused under chunk: one row per text
            v = vectors[r][real[r]][1:]  # the CLS's vector is not one of them
            vectors_out.append(v.astype(np.float32, copy=False))
            vector_count[int(row_text[r]), 0] += v.shape[0]
    return {
        SPARSE_IDS: np.concatenate(sparse_ids).reshape(-1, 1),
        SPARSE_WEIGHTS: np.concatenate(sparse_weights).reshape(-1, 1),
        SPARSE_COUNT: sparse_count,
        MULTI_VECTORS: np.concatenate(vectors_out),
        MULTI_VECTOR_COUNT: vector_count,
    }
