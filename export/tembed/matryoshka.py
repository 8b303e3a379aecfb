"""Matryoshka truncation: keep the first ``d`` components of a unit vector, then re-normalise."""

from __future__ import annotations

import numpy as np

from .profile import ModelProfile
from .textproc import RequestError


def check_dimensions(profile: ModelProfile, value: np.ndarray | None) -> int:
    """The requested output size, or the full one; outside [min_dimension, dimension] is a request error."""
    if value is None:
        return profile.dimension
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise RequestError(f"dimensions takes exactly one value, got {flat.size}")
    d = int(flat[0])
    if not profile.min_dimension <= d <= profile.dimension:
        raise RequestError(
            f"dimensions must be between {profile.min_dimension} and {profile.dimension} for model"
            f" {profile.name!r}, got {d}"
        )
    return d


def truncate(embedding: np.ndarray, d: int) -> np.ndarray:
    if d >= embedding.shape[-1]:
        return np.ascontiguousarray(embedding, dtype=np.float32)
    head = embedding[..., :d].astype(np.float32, copy=True)
    head /= np.maximum(np.linalg.norm(head, axis=-1, keepdims=True), 1e-12)
    return head
