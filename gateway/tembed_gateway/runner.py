"""Run the gateway: in the foreground (the CLI) or in a background thread (tests, ``tembed serve``)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn

from .app import create_app
from .settings import GatewaySettings


def uvicorn_config(settings: GatewaySettings, host: str, port: int, log_level: str, access_log: bool) -> uvicorn.Config:
    # loop="asyncio": grpc.aio supports only the standard loop. http="auto" picks httptools when
    # installed (the `gateway` extra pins it): it parses HTTP/1.1 several times faster than h11.
    return uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        loop="asyncio",
        http="auto",
        lifespan="on",
        log_level=log_level,
        access_log=access_log,
        timeout_keep_alive=75,  # longer than clients' pool idle time, so kept-alive connections are not reset
    )


def serve(settings: GatewaySettings, **kw: object) -> None:
    """Serve on ``settings.host:settings.port`` in the foreground until SIGINT/SIGTERM."""
    uvicorn.Server(uvicorn_config(settings, settings.host, settings.port, **kw)).run()  # type: ignore[arg-type]


class GatewayThread:
    """The gateway on ``host:port`` (0: a free port) in a daemon thread; a context manager."""

    def __init__(
        self,
        settings: GatewaySettings,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        access_log: bool = False,
    ) -> None:
        # Bind here, so port 0 resolves before the thread starts and a busy port fails in the caller.
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        self.config = uvicorn_config(settings, host, self.port, log_level, access_log)
        self.server = uvicorn.Server(self.config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, name="tembed-gateway", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the gateway did not start on {self.url}")
            time.sleep(0.02)
        return self

    @property
    def gateway(self):  # -> app.Gateway
        return self.config.app.state.gateway

    def drain(self, grace_s: float = 30.0) -> int:
        """Stop taking work (readiness 503, new requests 503) and wait up to ``grace_s`` for the
        requests in flight; returns how many were still running when the wait ended."""
        gw = self.gateway
        gw.draining = True
        deadline = time.monotonic() + grace_s
        while gw.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        return gw.in_flight

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
