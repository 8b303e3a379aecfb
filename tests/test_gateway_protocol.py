"""The gateway's HTTP protocol sends a response's head and body in one write, the same bytes in order."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tembed_gateway.protocol import COALESCE_MAX_BYTES, CoalescingHttpToolsProtocol, CoalescingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def run(steps) -> Recorder:
    async def main() -> Recorder:
        rec = Recorder()
        t = CoalescingTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
        for step in steps:
            if step is None:
                await asyncio.sleep(0)  # the loop's next step
            elif step == "close":
                t.close()
            else:
                t.write(step)
        await asyncio.sleep(0)
        return rec

    return asyncio.run(main())


def test_head_and_body_go_out_in_one_write():
    assert run([HEAD, b"hello"]).writes == [HEAD + b"hello"]


def test_head_alone_goes_out_on_the_next_loop_step():
    assert run([HEAD]).writes == [HEAD]
    assert run([HEAD, None, b"hello"]).writes == [HEAD, b"hello"]


def test_large_body_follows_its_head():
    body = b"x" * (COALESCE_MAX_BYTES + 1)
    assert run([HEAD, body]).writes == [HEAD, body]


def test_other_writes_pass_through_and_close_flushes():
    rec = run([b"chunk", HEAD, "close"])
    assert rec.writes == [b"chunk", HEAD] and rec.closed


def test_other_attributes_are_the_transports():
    async def main() -> str:
        t = CoalescingTransport(Recorder(), asyncio.get_running_loop())  # type: ignore[arg-type]
        return t.get_extra_info("peername")

    assert asyncio.run(main()) == "info:peername"


def test_responses_over_a_real_connection():
    """Plain, empty, HEAD and streamed responses on one kept-alive connection: bytes and framing intact."""
    from tembed_gateway.runner import GatewayThread

    async def chunks():
        for part in (b"a", b"b" * 70_000, b"c"):
            yield part
            await asyncio.sleep(0)

    app = Starlette(
        routes=[
            Route("/small", lambda r: PlainTextResponse("hello"), methods=["GET", "HEAD"]),
            Route("/empty", lambda r: Response(status_code=204)),
            Route("/large", lambda r: Response(b"y" * (COALESCE_MAX_BYTES * 3))),
            Route("/stream", lambda r: StreamingResponse(chunks())),
        ]
    )

    class Thread(GatewayThread):
        def __init__(self) -> None:
            from tembed_gateway import GatewaySettings

            super().__init__(GatewaySettings("127.0.0.1:1"))
            self.config.app = app
            self.config.lifespan = "off"

    with Thread() as gw, httpx.Client(base_url=gw.url) as http:
        assert gw.config.http is CoalescingHttpToolsProtocol
        for _ in range(3):
            assert http.get("/small").text == "hello"
            assert http.head("/small").content == b""
            assert http.get("/empty").status_code == 204
            assert http.get("/large").content == b"y" * (COALESCE_MAX_BYTES * 3)
            assert http.get("/stream").content == b"a" + b"b" * 70_000 + b"c"
