"""The one exception type of the client, and :func:`classify`: the one place where an error's meaning is
read from its text.

Errors raised by tembed's serving side carry their reason in a tag (``contract.tag_error``); errors of
Triton itself (a full queue, an unloaded model, a dead stub) and of gRPC (a refused connection) carry
only prose and a status, and :func:`classify` is where that prose is matched. Everything downstream
(retries, failover, the gateway's HTTP statuses) reads ``EmbeddingError.reason``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tritonclient.utils import InferenceServerException

from . import contract as c

# gRPC status -> reason, when neither a tag nor Triton's known prose says more.
_STATUS_REASONS = {
    "INVALID_ARGUMENT": c.INVALID_ARGUMENT,
    "OUT_OF_RANGE": c.INVALID_ARGUMENT,
    "FAILED_PRECONDITION": c.UNSUPPORTED,
    "UNIMPLEMENTED": c.UNSUPPORTED,
    "NOT_FOUND": c.MODEL_NOT_FOUND,
    "RESOURCE_EXHAUSTED": c.OVERLOADED,
    "UNAVAILABLE": c.REPLICA_GONE,
    "DEADLINE_EXCEEDED": c.DEADLINE_EXCEEDED,
    "CANCELLED": c.CANCELLED,
    "UNAUTHENTICATED": c.UNAUTHENTICATED,
    "PERMISSION_DENIED": c.UNAUTHENTICATED,
}


def short_code(status: str | None) -> str:
    """``"StatusCode.INVALID_ARGUMENT"`` -> ``"INVALID_ARGUMENT"``; ``"UNKNOWN"`` for none."""
    return status.rsplit(".", 1)[-1] if status else "UNKNOWN"


def classify(status: str | None, message: str) -> tuple[str, str | None, str]:
    """(reason, param, message) of an error tritonclient raised: the tag of tembed's serving side when
    the message has one (and the message without it), else what Triton's own messages and the gRPC
    status mean. The only function that reads an error's prose."""
    tagged = c.read_error_tag(message)
    if tagged is not None:
        return tagged
    code, msg = short_code(status), message.lower()
    if "stub process" in msg and "is not healthy" in msg:
        # A Python model's process died and Triton is reloading it: that replica cannot serve for now.
        return c.REPLICA_GONE, None, message
    if code == "UNAVAILABLE" and "maximum queue size" in msg:
        return c.OVERLOADED, None, message  # the model's bounded queue is full (--queue-tokens)
    if code == "UNAVAILABLE" and "timeout expired" in msg:
        # Waited out the model's queue timeout (--queue-timeout-s): sending it again would queue it
        # behind the same backlog.
        return c.DEADLINE_EXCEEDED, None, message
    if code == "NOT_FOUND" and "has no available versions" in msg:
        # The model was unloaded: how a draining replica (tembed_serving.supervisor) refuses new work.
        return c.DRAINING, None, message
    return _STATUS_REASONS.get(code, c.INTERNAL), None, message


class EmbeddingError(Exception):
    """A request failed, on the server or in a client-side check.

    ``reason`` says why, one of ``contract.REASONS`` (``"context_length_exceeded"``, ``"overloaded"``,
    …); ``param`` names the request's field it concerns, when one does. ``status`` is the status as
    tritonclient reports it (``"StatusCode.INVALID_ARGUMENT"``), or None when this client raised it;
    ``code`` is its short form (``"INVALID_ARGUMENT"``), always set. ``message`` is the text.
    """

    def __init__(
        self,
        message: str,
        reason: str | None = None,
        *,
        param: str | None = None,
        status: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        if reason is not None and reason not in c.REASON_CODES:
            raise ValueError(f"unknown error reason {reason!r}")
        self.message = message
        self.status = status
        self.code = code or (short_code(status) if status else c.REASON_CODES.get(reason or "", "UNKNOWN"))
        self.reason = reason or _STATUS_REASONS.get(self.code, c.INTERNAL)
        self.param = param

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"EmbeddingError({self.message!r}, {self.reason!r}, param={self.param!r}, code={self.code!r})"

    @classmethod
    def from_triton(cls, exc: InferenceServerException, note: str = "") -> EmbeddingError:
        status = exc.status()
        reason, param, message = classify(status, exc.message() or str(exc))
        if reason == c.REPLICA_GONE and short_code(status) != "UNAVAILABLE":
            status = "StatusCode.UNAVAILABLE"  # a dead stub is reported as INTERNAL; it is transient
        return cls(
            f"{message} ({note})" if note else message, reason, param=param, status=status, code=short_code(status)
        )

    @property
    def retryable(self) -> bool:
        """The server is briefly unable (busy, restarting a model): the same request may succeed later.

        Not a request that already waited out the server's queue timeout: sending it again would
        queue it behind the same backlog and multiply the load it was refused for."""
        return self.reason in c.RETRY_REASONS

    @property
    def failover(self) -> bool:
        """The replica that answered cannot serve now (gone, draining): another replica may at once."""
        return self.reason in c.FAILOVER_REASONS


def invalid(message: str, param: str | None = None) -> EmbeddingError:
    """A request the client refuses before sending: ``param`` names the field."""
    return EmbeddingError(message, c.INVALID_ARGUMENT, param=param)


@contextlib.contextmanager
def triton_errors(note: str = "") -> Iterator[None]:
    """Re-raise any tritonclient ``InferenceServerException`` as an :class:`EmbeddingError`,
    with ``note`` appended to its message when given."""
    try:
        yield
    except InferenceServerException as exc:
        raise EmbeddingError.from_triton(exc, note) from None
