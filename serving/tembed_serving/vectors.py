"""From the encoder's rows to the vectors a request gets back: windows pooled into one vector per
text (``long_text`` chunk), Matryoshka ``dimensions``, then the ``embedding_type`` encoding.

The whole logic of finishing a request's vectors (:func:`finish_request`), called per request by the
postprocess model (``triton/postprocess.py``, after a Triton-native encoder) and by the Python-backend
encoder itself (``triton/encoder.py``, no postprocess step); those only move tensors.
"""

from __future__ import annotations

import numpy as np

from .contract import (
    BIT_PACKED_TYPES,
    DIMENSIONS,
    EMBEDDING_DTYPES,
    EMBEDDING_TYPE,
    EMBEDDING_TYPE_DEFAULT,
    EMBEDDING_TYPES,
    OPTIONS,
    ROW_OPTION_COLUMNS,
    ROW_OPTIONS,
    ROW_WEIGHT_COLUMN,
    UNSUPPORTED,
)
from .errors import RequestError
from .matryoshka import truncate
from .profile import ModelProfile


def pool_rows(rows: np.ndarray, row_text: np.ndarray, row_weight: np.ndarray) -> np.ndarray:
    """One unit vector per text: the ``row_weight``-weighted mean of its rows, re-normalised.

    Rows of a text are consecutive and texts come in order (``contract.ROW_TEXT``); a text with one
    row keeps that row exactly."""
    row_text = np.asarray(row_text).reshape(-1)
    n = int(row_text[-1]) + 1 if row_text.size else 0
    if n == rows.shape[0]:
        return rows
    weights = np.asarray(row_weight, dtype=np.float64).reshape(-1, 1)
    sums = np.zeros((n, rows.shape[1]), dtype=np.float64)
    np.add.at(sums, row_text, rows.astype(np.float64) * weights)
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return sums.astype(np.float32)


def quantization_ranges(profile: ModelProfile, d: int) -> np.ndarray:
    """``[2, d]`` per-dimension (min, max) for int8/uint8 at output size ``d``, from the profile."""
    ranges = profile.int8_ranges.get(str(d))
    if ranges is None and not profile.int8_ranges:
        raise RequestError(
            f"embedding_type int8 and uint8 of model {profile.name!r} are not calibrated (exported before they"
            " existed, or without calibration): re-export it with `tembed export`; float, binary and ubinary work",
            UNSUPPORTED,
            EMBEDDING_TYPE,
        )
    if ranges is None:
        sizes = ", ".join(sorted(profile.int8_ranges, key=int))
        raise RequestError(
            f"embedding_type int8 and uint8 of model {profile.name!r} are calibrated for dimensions {sizes}, not {d}",
            UNSUPPORTED,
            EMBEDDING_TYPE,
        )
    # Converted once per profile and size, not per request: the arrays ride on the profile object,
    # keyed by the JSON list they came from (a profile whose ranges are measured again gets new ones).
    cache = profile.__dict__.setdefault("_int8_arrays", {})
    hit = cache.get(d)
    if hit is None or hit[0] is not ranges:
        hit = cache[d] = (ranges, np.asarray(ranges, dtype=np.float32))
    return hit[1]


def check_calibrated(profile: ModelProfile, embedding_type: str, d: int) -> None:
    """Refuse int8/uint8 at an output size the export did not calibrate, before anything is embedded."""
    if embedding_type != EMBEDDING_TYPE_DEFAULT and embedding_type not in BIT_PACKED_TYPES:
        quantization_ranges(profile, d)


def quantize(embedding: np.ndarray, embedding_type: str, profile: ModelProfile | None) -> np.ndarray:
    """``[n, d]`` unit vectors as ``embedding_type``'s bytes (uint8; ``contract.EMBEDDING_PACKED``).

    sentence-transformers' ``quantize_embeddings`` with the profile's ranges, bit for bit: level
    ``floor((x - min) / step)`` clipped to 0..255 with ``step = (max - min) / 255`` (1 where a
    dimension never varied), in float32; the sign bits of each row packed on their own (a last byte
    is padded with zeros when d is not a multiple of 8). Only int8/uint8 read ``profile``."""
    embedding = np.asarray(embedding, dtype=np.float32)
    if embedding_type == EMBEDDING_TYPE_DEFAULT or embedding_type not in EMBEDDING_TYPES:
        raise RequestError(
            f"embedding_type must be one of {', '.join(EMBEDDING_TYPES[1:])}, got {embedding_type!r}",
            param=EMBEDDING_TYPE,
        )
    signed = EMBEDDING_DTYPES[embedding_type] == "int8"  # int8 and binary: the unsigned values minus 128
    if embedding_type in BIT_PACKED_TYPES:
        bits = np.packbits(embedding > 0, axis=-1)
        return (bits.astype(np.int16) - 128).astype(np.int8).view(np.uint8) if signed else bits
    if profile is None:
        raise RequestError(
            "embedding_type int8 and uint8 need the model's calibrated ranges", UNSUPPORTED, EMBEDDING_TYPE
        )
    lo, hi = quantization_ranges(profile, embedding.shape[-1])
    steps = (hi - lo) / np.float32(255)
    steps = np.where(steps == 0, np.float32(1), steps)
    levels = np.clip(np.floor((embedding - lo) / steps), 0, 255)
    return (levels - 128).astype(np.int8).view(np.uint8) if signed else levels.astype(np.uint8)


def finish(
    rows: np.ndarray,
    row_text: np.ndarray,
    row_weight: np.ndarray,
    dimensions: int,
    embedding_type: str,
    profile: ModelProfile,
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 ``[n, d]``, packed uint8 ``[n, k]``): one of them holds the vectors, the other has no
    columns, as ``embedding_type`` says."""
    vectors = truncate(pool_rows(rows, row_text, row_weight), dimensions)
    if embedding_type == EMBEDDING_TYPE_DEFAULT:
        return vectors, np.zeros((vectors.shape[0], 0), dtype=np.uint8)
    return np.zeros((vectors.shape[0], 0), dtype=np.float32), quantize(vectors, embedding_type, profile)


def finish_request(
    rows: np.ndarray,
    row_text: np.ndarray,
    row_weight: np.ndarray,
    dimensions: int,
    type_index: int,
    profile: ModelProfile,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`finish` on one request as a model receives it (the embedding type as its index in
    ``EMBEDDING_TYPES``), both checked: a bad value is this request's :class:`RequestError`."""
    error = OPTIONS[DIMENSIONS].check(dimensions, profile.min_dimension, profile.dimension, profile.name)
    if error:
        raise RequestError(error, param=DIMENSIONS)
    if not 0 <= type_index < len(EMBEDDING_TYPES):
        raise RequestError(
            f"embedding type index {type_index} outside [0, {len(EMBEDDING_TYPES)})", param=EMBEDDING_TYPE
        )
    return finish(rows, row_text, row_weight, dimensions, EMBEDDING_TYPES[type_index], profile)


def per_row(
    row_text: np.ndarray, row_weight: np.ndarray, dimensions: int, type_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """A request's finishing options as tensors whose first dimension is its rows, for a batched
    encoder (``contract.ROW_OPTIONS`` ``[rows, 3]`` int32, ``contract.ROW_WEIGHT_COLUMN`` ``[rows, 1]``)."""
    row_text = np.asarray(row_text, dtype=np.int32).reshape(-1)
    options = np.empty((row_text.size, ROW_OPTION_COLUMNS), dtype=np.int32)
    options[:, 0] = row_text
    options[:, 1] = dimensions
    options[:, 2] = type_index
    return options, np.asarray(row_weight, dtype=np.float32).reshape(-1, 1)


def from_rows(options: np.ndarray, weights: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """:func:`per_row` undone and checked (anyone who reaches Triton's ports can call the encoder):
    (row_text, row_weight, dimensions, type_index) for :func:`finish_request`."""
    options, weights = np.asarray(options), np.asarray(weights)
    if options.shape != (rows, ROW_OPTION_COLUMNS) or weights.shape != (rows, 1):
        raise RequestError(
            f"row options {list(options.shape)} and weights {list(weights.shape)} must be"
            f" [{rows}, {ROW_OPTION_COLUMNS}] and [{rows}, 1], one per row of input_ids",
            param=ROW_OPTIONS,
        )
    if not np.issubdtype(options.dtype, np.integer):
        raise RequestError(f"row options must be integers, got {options.dtype}", param=ROW_OPTIONS)
    row_text = options[:, 0]
    if rows and row_text[0] != 0:
        raise RequestError("row texts must start at 0 and go up by at most 1 per row", param=ROW_OPTIONS)
    if rows > 1:  # few whole-array passes: this runs on every request on the serving path
        steps = np.diff(row_text)
        if steps.min() < 0 or steps.max() > 1:
            raise RequestError("row texts must start at 0 and go up by at most 1 per row", param=ROW_OPTIONS)
        if (options[:, 1:] != options[:1, 1:]).any():
            raise RequestError(
                "dimensions and embedding type must be the same on every row of a request", param=ROW_OPTIONS
            )
    w = weights.reshape(-1).astype(np.float32, copy=False)
    if rows and not (w.min() >= 0 and np.isfinite(w.max())):  # NaN fails both
        raise RequestError("row weights must be finite and not negative", param=ROW_WEIGHT_COLUMN)
    head = options[0] if rows else np.zeros(ROW_OPTION_COLUMNS, dtype=np.int64)
    return row_text, w, int(head[1]), int(head[2])
