"""Summary statistics and interleaved rounds: the one place the bench computes a percentile."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """Milliseconds: count, mean, P50, P90, P99, max of ``seconds`` (empty: count 0 only)."""
    if not len(seconds):
        return {"n": 0}
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    out = {"n": len(a), "mean": float(a.mean()), "max": float(a.max())}
    out |= {f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 99)}
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``[n, d]`` arrays."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def drive(call: Callable[[object], float | None], requests: Sequence, concurrency: int = 1) -> tuple[list, float]:
    """Send ``requests`` through ``call`` with ``concurrency`` in flight: each request's seconds (a float
    returned by ``call`` is the target's own timing, e.g. a worker without its pipe) and the wall time."""
    lat: list[float] = []
    lock = threading.Lock()

    def one(req: object) -> None:
        t = time.perf_counter()
        took = call(req)
        with lock:
            lat.append(took if isinstance(took, float) else time.perf_counter() - t)

    t0 = time.perf_counter()
    if concurrency <= 1:
        for r in requests:
            one(r)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, requests))
    return lat, time.perf_counter() - t0


def rounds(variants: dict[str, Callable[[int], object]], n: int) -> None:
    """``n`` rounds; each runs every variant once (``f(round)``), the order rotated from round to round
    (A B C, B C A, ...), so load from elsewhere on a shared machine hits every variant alike."""
    names = list(variants)
    for r in range(n):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            variants[name](r)


def ratio(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, float]:
    """ours / theirs round by round (both sides of a round ran seconds apart): median, min, max."""
    per = [a / b for a, b in zip(ours, theirs) if b]
    if not per:
        return {}
    return {"median": float(np.median(per)), "min": min(per), "max": max(per), "rounds": len(per)}
