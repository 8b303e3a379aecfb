from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import triton_python_backend_utils as pb_utils

from ..contract import EXECUTING_METRIC, INTERNAL, REASON_CODES
from ..errors import RequestError

# The TritonError code each reason's gRPC status travels as (the Python backend has no
# FAILED_PRECONDITION or RESOURCE_EXHAUSTED: a request's own fault is INVALID_ARG, and the tag
# carries the reason either way).
_TRITON_CODES = {
    "INTERNAL": "INTERNAL",
    "CANCELLED": "CANCELLED",
    "UNAVAILABLE": "UNAVAILABLE",
    "NOT_FOUND": "NOT_FOUND",
}


def version_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def parameters(args: dict) -> dict[str, str]:
    cfg = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}


def error_response(exc: RequestError) -> pb_utils.InferenceResponse:
    """One request's error: its tagged message, with its reason's code."""
    name = _TRITON_CODES.get(REASON_CODES[exc.reason], "INVALID_ARG")
    # Bound at call time: pb_utils is filled in after import, and older stubs lack CANCELLED.
    code = getattr(pb_utils.TritonError, name, pb_utils.TritonError.UNAVAILABLE)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(exc.tagged(), code))


def internal(message: str) -> pb_utils.InferenceResponse:
    return error_response(RequestError(message, INTERNAL))


def input_arrays(request) -> dict[str, object]:
    """Every input the request carries, by name, as numpy: one pass over ``request.inputs()`` (each
    ``pb_utils.get_input_tensor_by_name`` builds that list again)."""
    return {t.name(): t.as_numpy() for t in request.inputs()}


def tensor_names(args: dict, kind: str) -> set[str]:
    """The names of the config's ``kind`` ("input" or "output") tensors."""
    return {t["name"] for t in json.loads(args["model_config"]).get(kind, [])}


class Executing:
    """How many requests this stub is executing, as Triton's custom gauge ``EXECUTING_METRIC{model, pid}``.

    Triton counts requests queued for a model (``nv_inference_pending_request_count``) but not those a
    backend is running; with this gauge the supervisor counts exactly what is in flight, whoever called
    (an ensemble, a direct tokenizer call). A stub that dies leaves its series behind: its pid label lets
    the supervisor ignore it. A stub without custom metrics (older Triton) counts nothing."""

    def __init__(self, args: dict) -> None:
        self._family = self._gauge = None
        with contextlib.suppress(Exception):
            self._family = pb_utils.MetricFamily(
                name=EXECUTING_METRIC,
                description="Requests a tembed Python stub is executing",
                kind=pb_utils.MetricFamily.GAUGE,
            )
            self._gauge = self._family.Metric(labels={"model": args["model_name"], "pid": str(os.getpid())})

    @contextlib.contextmanager
    def __call__(self, n: int) -> Iterator[None]:
        if self._gauge is None:
            yield
            return
        self._gauge.increment(n)
        try:
            yield
        finally:
            self._gauge.increment(-n)
