"""Admission and the handlers' common wrapping: every failure answered in OpenAI's shape and counted,
new work refused at once when the gateway is full or draining, and a caller's disconnect cancelling
its work (the gRPC calls to Triton with it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tembed_client import EmbeddingError
from tembed_client.contract import DRAINING, INTERNAL, OVERLOADED

from .errors import ApiError

log = logging.getLogger("tembed_gateway")

# The gateway (app.Gateway) is passed in, not imported: app imports this module.
Gateway = Any


def admit(gw: Gateway) -> None:
    """Refuse new work at once when draining or full (429 / 503 + Retry-After: clients back off)."""
    if gw.draining:
        raise ApiError(DRAINING, "the gateway is shutting down")
    if gw.in_flight >= gw.settings.max_in_flight:
        raise ApiError(
            OVERLOADED, f"{gw.in_flight} requests in flight, the limit is {gw.settings.max_in_flight}; retry later"
        )


def endpoint(handler: Callable[[Gateway, Request], Awaitable[Response]]) -> Callable[[Gateway, Request], Any]:
    """Every failure becomes an OpenAI-shaped error; a bug becomes a 500 without its traceback."""

    async def wrapped(self: Gateway, request: Request) -> Response:
        try:
            return await handler(self, request)
        except ApiError as exc:
            error = exc
        except EmbeddingError as exc:
            error = ApiError.from_client(exc, self.settings.triton_label)
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.scope["path"])
            error = ApiError(INTERNAL, "internal error in the gateway")
        self.metrics.count_error(error.reason)
        return error.response(self.settings.retry_after_s)

    async def measured(self: Gateway, request: Request) -> Response:
        started = time.perf_counter()
        response = await wrapped(self, request)
        # The served model (set once resolved), never the name a caller sent: bounded label values.
        model = getattr(request.state, "model", "")
        self.metrics.observe(request.scope["path"], model, response.status_code, time.perf_counter() - started)
        return response

    return measured


DISCONNECT_POLL_S = 0.25


class DisconnectWatch:
    """Cancels ``task`` once the caller of ``request`` has disconnected: polled every DISCONNECT_POLL_S
    by a Task started only when the request outlives the first poll, so a request answered faster
    (nearly all) costs one timer, not a Task and a wait of its own."""

    def __init__(self, request: Request, task: asyncio.Task[Any]) -> None:
        self.request, self.task = request, task
        self.fired = False  # the caller left and ``task`` was cancelled for it
        self._poller: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(DISCONNECT_POLL_S, self._start)

    def _start(self) -> None:
        self._poller = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while True:
            # Only once the body is read: polling the connection before would consume it.
            if getattr(self.request.state, "body_read", False) and await self.request.is_disconnected():
                self.fired = True
                self.task.cancel()
                return
            await asyncio.sleep(DISCONNECT_POLL_S)

    def stop(self) -> None:
        self._timer.cancel()
        if self._poller is not None and not self._poller.done():
            self._poller.cancel()


def admitted(handler: Callable[[Gateway, Request], Awaitable[Response]]) -> Callable[[Gateway, Request], Any]:
    """Counts the request in flight while it runs; refused up front when the gateway is full.

    A caller that disconnects (gave up, timed out) has its work cancelled: the gRPC calls to Triton
    are cancelled with the task, so nothing more is queued for someone who is not listening."""

    async def wrapped(self: Gateway, request: Request) -> Response:
        admit(self)
        self.in_flight += 1
        task = asyncio.current_task()
        assert task is not None
        watch = DisconnectWatch(request, task)
        try:
            return await handler(self, request)
        except asyncio.CancelledError:
            if not watch.fired:
                raise  # cancelled from elsewhere (the server shutting down): not ours to swallow
            if hasattr(task, "uncancel"):  # Python 3.11+: this cancellation is handled, the task goes on
                task.uncancel()
            self.abandoned += 1
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        finally:
            watch.stop()
            self.in_flight -= 1

    return wrapped
