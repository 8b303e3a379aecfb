"""The one exception of the serving side: a request the model cannot serve, with its reason.

Every check a Triton model makes on a request raises :class:`RequestError` with one of
``contract.REASONS`` and the request field it concerns; the model answers that request alone with the
tagged message (``triton._util.error_response``), so clients and the gateway read the reason, not the
prose, and its batch neighbours are unaffected.
"""

from __future__ import annotations

from .contract import INVALID_ARGUMENT, REASON_CODES, tag_error


class RequestError(ValueError):
    """A request the model cannot serve; its tagged message goes back to the caller alone."""

    def __init__(self, message: str, reason: str = INVALID_ARGUMENT, param: str | None = None) -> None:
        super().__init__(message)
        if reason not in REASON_CODES:
            raise ValueError(f"unknown error reason {reason!r}")
        self.message, self.reason, self.param = message, reason, param

    def tagged(self) -> str:
        """The message with its reason and param, as it travels (``contract.tag_error``)."""
        return tag_error(self.message, self.reason, self.param)
