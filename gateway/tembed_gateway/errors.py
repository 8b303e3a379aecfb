"""Every error the gateway answers, in OpenAI's shape, and the one table from an error's reason
(``contract.REASONS``) to its HTTP status and OpenAI error type and code.

Nothing here reads an error's text: the reason comes with the error (``EmbeddingError.reason``, from
the serving side's tag or the client's :func:`tembed_client.errors.classify`), and so does the request
field it concerns (``param``), named as the ensemble's tensors are and mapped to the HTTP field here.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from tembed_client import EmbeddingError
from tembed_client import contract as c

# reason -> (HTTP status, OpenAI error type, OpenAI error code). Cohere and Jina clients read the
# status and the message; OpenAI clients also the type and code.
ERRORS: dict[str, tuple[int, str, str | None]] = {
    c.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    c.CONTEXT_LENGTH_EXCEEDED: (400, "invalid_request_error", "context_length_exceeded"),
    c.TOO_LARGE: (413, "invalid_request_error", "request_too_large"),
    c.UNSUPPORTED: (400, "invalid_request_error", None),
    c.MODEL_NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    c.UNAUTHENTICATED: (401, "invalid_request_error", "invalid_api_key"),
    c.OVERLOADED: (429, "server_error", "overloaded"),
    c.DRAINING: (503, "server_error", "draining"),
    c.REPLICA_GONE: (503, "server_error", "triton_unavailable"),
    c.DEADLINE_EXCEEDED: (504, "server_error", "timeout"),
    c.CANCELLED: (499, "server_error", "cancelled"),  # nginx's "client closed request": nobody reads it
    c.INTERNAL: (500, "server_error", "internal_error"),
}
# Answers a client should retry later: they carry Retry-After.
RETRY_AFTER = (c.OVERLOADED, c.DRAINING)
# The ensemble's tensor a param names -> the request field of the HTTP APIs (the rest are the same).
FIELDS = {c.TEXT: "input"}
# Which field a reason concerns when the error names none (a text over max_length is the input's).
DEFAULT_FIELDS = {c.CONTEXT_LENGTH_EXCEEDED: "input", c.UNSUPPORTED: "model", c.MODEL_NOT_FOUND: "model"}


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {message, type, param, code}}``; status, type
    and code follow from ``reason`` (``ERRORS``)."""

    def __init__(
        self, reason: str, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message
        self.status, self.type, self.code = ERRORS[reason]
        self.param = FIELDS.get(param, param) if param else DEFAULT_FIELDS.get(reason)
        self.headers = headers

    def response(self, retry_after_s: int = 1) -> Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = dict(self.headers or {})
        if self.reason in RETRY_AFTER:
            headers.setdefault("Retry-After", str(retry_after_s))
        return json_response(body, self.status, headers or None)

    @classmethod
    def from_client(cls, exc: EmbeddingError, triton_url: str) -> ApiError:
        """The answer to a failed client call: its reason and param, as the client classified them."""
        message = exc.message
        if exc.reason == c.REPLICA_GONE:
            message = f"Triton at {triton_url} is unavailable: {message}"
        return cls(exc.reason, message, param=exc.param)


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(c.INVALID_ARGUMENT, message, param=param)


async def http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods (Starlette's own errors), in OpenAI's shape too."""
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if exc.status_code in (404, 405):  # say what was asked and what is served
        routes = [
            f"{'/'.join(sorted(set(r.methods or ()) - {'HEAD'}))} {r.path}"
            for r in request.app.routes
            if getattr(r, "methods", None)
        ]
        asked = f"{request.method} {request.url.path}"
        message = f"{exc.detail}: {asked} is not served here; the routes are: {', '.join(routes)}"
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return json_response(body, exc.status_code, dict(exc.headers) if exc.headers else None)
