"""The one exception type of the client, and the conversion from tritonclient's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tritonclient.utils import InferenceServerException

RETRYABLE = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")


class EmbeddingError(Exception):
    """A request failed, on the server or in a client-side check.

    ``status`` is the status as tritonclient reports it (``"StatusCode.INVALID_ARGUMENT"``), or
    None when the error was raised by this client. ``code`` is its short form
    (``"INVALID_ARGUMENT"``) and is always set. ``message`` is the text without the code.
    """

    def __init__(self, message: str, status: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or (status.rsplit(".", 1)[-1] if status else "UNKNOWN")

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @classmethod
    def from_triton(cls, exc: InferenceServerException, note: str = "") -> EmbeddingError:
        message = exc.message() or str(exc)
        status = exc.status()
        if "Stub process" in message and "is not healthy" in message:
            # A Python model's process died and is being reloaded (the server supervises it):
            # a transient condition, worth a retry, not an internal error of the request.
            status = "StatusCode.UNAVAILABLE"
        return cls(f"{message} ({note})" if note else message, status=status)

    @property
    def retryable(self) -> bool:
        """The server is briefly unable (queue full, restarting a model): the same request may succeed.

        Not a request that already waited out the server's queue timeout: sending it again would
        queue it behind the same backlog and multiply the load it was refused for."""
        return self.code in RETRYABLE and "timeout expired" not in self.message.lower()


@contextlib.contextmanager
def triton_errors(note: str = "") -> Iterator[None]:
    """Re-raise any tritonclient ``InferenceServerException`` as an :class:`EmbeddingError`,
    with ``note`` appended to its message when given."""
    try:
        yield
    except InferenceServerException as exc:
        raise EmbeddingError.from_triton(exc, note) from None
