"""uvicorn's httptools protocol, with each response's head and body sent in one write.

uvicorn writes a response's status line and headers on ``http.response.start`` and its body on
``http.response.body``: two ``send`` calls on a TCP_NODELAY socket, so two packets and two wake-ups
of the caller for one small JSON answer. Starlette sends both messages back to back, so the head is
held until the body's write and goes out with it; if no write follows within the loop's step (a
streamed response, a 100 Continue), it goes out alone then. The bytes on the wire are the same."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# A body up to this size is copied behind its head (one send); a larger one follows in its own write.
COALESCE_MAX_BYTES = 64 << 10
_HEAD_START, _HEAD_END = b"HTTP/1.1 ", b"\r\n\r\n"


class CoalescingTransport:
    """The connection's transport, holding a response head until the next write or the loop's next step."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def __getattr__(self, name: str) -> Any:  # everything but write and close is the transport's
        return getattr(self._transport, name)

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if len(data) <= COALESCE_MAX_BYTES:
                self._transport.write(head + data)
                return
            self._transport.write(head)
        elif data.startswith(_HEAD_START) and data.endswith(_HEAD_END):
            self._head = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        if not self._transport.is_closing():
            self.flush()
        self._transport.close()


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
