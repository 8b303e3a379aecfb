"""Matryoshka truncation: keep the first ``d`` components of a unit vector, then re-normalise."""

from __future__ import annotations

import numpy as np

from .contract import DIMENSIONS, OPTIONS
from .errors import RequestError
from .profile import ModelProfile


def check_dimensions(profile: ModelProfile, value: np.ndarray | int | None) -> int:
    """The requested output size, or the full one; outside [min_dimension, dimension] is a request error."""
    if value is None:
        return profile.dimension
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise RequestError(f"dimensions takes exactly one value, got {flat.size}", param=DIMENSIONS)
    d = int(flat[0])
    error = OPTIONS[DIMENSIONS].check(d, profile.min_dimension, profile.dimension, profile.name)
    if error:
        raise RequestError(error, param=DIMENSIONS)
    return d


def truncate(embedding: np.ndarray, d: int) -> np.ndarray:
    if d >= embedding.shape[-1]:
        return np.ascontiguousarray(embedding, dtype=np.float32)
    head = embedding[..., :d].astype(np.float32, copy=True)
    head /= np.maximum(np.linalg.norm(head, axis=-1, keepdims=True), 1e-12)
    return head
