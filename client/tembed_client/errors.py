"""The one exception type of the client, and the conversion from tritonclient's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tritonclient.utils import InferenceServerException


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
        return cls(f"{message} ({note})" if note else message, status=exc.status())


@contextlib.contextmanager
def triton_errors(note: str = "") -> Iterator[None]:
    """Re-raise any tritonclient ``InferenceServerException`` as an :class:`EmbeddingError`,
    with ``note`` appended to its message when given."""
    try:
        yield
    except InferenceServerException as exc:
        raise EmbeddingError.from_triton(exc, note) from None
