"""One client over several Triton replicas serving the same models.

``EmbeddingClient("10.0.0.11:8001,10.0.0.12:8001")`` (or a list, or ``"dns:///tembed-triton-headless:8001"``,
a name resolving to several addresses, resolved again every ``RESOLVE_INTERVAL_S``) gets one channel per
replica behind the same face as tritonclient's ``InferenceServerClient``, so the clients' request logic,
chunking and :class:`~tembed_client.RetryPolicy` are the same over one replica or ten:

- each call goes to the replica with the fewest of this client's calls in flight (the least recently
  chosen among equals: round robin when idle), among those not marked down;
- a call that fails there because the replica is gone (:func:`replica_failed`) is sent once more, at
  once, to another replica, within what is left of the call's timeout (every call is idempotent); the
  failed replica is marked down, and its readiness is asked in the background every
  ``PROBE_INTERVAL_S`` (only while it is down, and only when calls come) until it answers again;
- with every replica down, calls still go to them (readiness may be stale; a dead one refuses at once),
  so the error comes fast and names each replica; the RetryPolicy then retries the whole call.

One plain address (``"localhost:8001"``) is exactly today's client: one tritonclient with its own channel
defaults, no health calls, none of this module on the path. The bookkeeping (:class:`ReplicaSet`) does no
I/O; :class:`ReplicatedTriton` and :class:`AsyncReplicatedTriton` are its thin sync and asyncio shells.
The gateway's registry (tembed_gateway) uses the same failure test, ordering and channel arguments."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, Union

from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions
from tritonclient.utils import InferenceServerException

from .errors import EmbeddingError

# How often a replica marked down has its readiness asked (while calls come).
PROBE_INTERVAL_S = 1.0
# How long a readiness probe may take: a replica that cannot answer this fast stays down.
PROBE_TIMEOUT_S = 2.0
# How often a ``dns:///`` name is resolved again (pods come and go behind a headless Service).
RESOLVE_INTERVAL_S = 10.0
DNS_PREFIX = "dns:"

Targets = Union[str, Sequence[str]]


def channel_args() -> list[tuple[str, int | str]]:
    """tritonclient's own channel defaults, plus round-robin and a short reconnect backoff.

    Round-robin: a channel to a name that resolves to several Triton pods spreads its calls over all
    of them instead of gRPC's default of sending everything to the first address. The backoff: a
    channel to a Triton that was down reconnects within a second of its return, not after gRPC's
    default (up to 120 s), so a restarted replica gets traffic again at once."""
    ka = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", ka.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def replica_failed(exc: EmbeddingError) -> bool:
    """The replica (or the connection to it) is gone or going, rather than busy or refusing this request:
    its reason is one of ``contract.FAILOVER_REASONS`` (:func:`tembed_client.errors.classify` says which)."""
    return exc.failover


class Ranked(Protocol):
    up: bool
    in_flight: int
    last_pick: int


R = TypeVar("R", bound=Ranked)


def least_busy(replicas: Iterable[R]) -> R | None:
    """The replica to send to: among those up (or all of them, when none is), the one with the fewest
    calls in flight; the least recently chosen among equals."""
    candidates = list(replicas)
    up = [r for r in candidates if r.up] or candidates
    return min(up, key=lambda r: (r.in_flight, r.last_pick), default=None)


@dataclass(frozen=True)
class DnsName:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{DNS_PREFIX}///{self.host}:{self.port}"


def parse_targets(url: Targets) -> tuple[list[str], list[DnsName]]:
    """Addresses and DNS names in ``url``: one address, a comma-separated list, a list of them, or
    ``dns:///NAME:PORT`` entries (also ``dns:NAME:PORT``), in any mix."""
    items = url.split(",") if isinstance(url, str) else list(url)
    addresses: list[str] = []
    names: list[DnsName] = []
    for item in items:
        if not isinstance(item, str):
            raise EmbeddingError(f"an address must be a str, not {type(item).__name__}", code="INVALID_ARGUMENT")
        item = item.strip()
        if not item:
            continue
        if not item.startswith(DNS_PREFIX):
            addresses.append(item)
            continue
        rest = item[len(DNS_PREFIX) :]
        if rest.startswith("//"):
            authority, _, rest = rest[2:].partition("/")
            if authority:
                msg = f"{item!r}: a DNS server in the target is not supported; use dns:///NAME:PORT"
                raise EmbeddingError(msg, code="INVALID_ARGUMENT")
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise EmbeddingError(f"{item!r}: expected dns:///NAME:PORT", code="INVALID_ARGUMENT")
        names.append(DnsName(host.strip("[]"), int(port)))
    if not addresses and not names:
        raise EmbeddingError(f"no Triton address in {url!r}", code="INVALID_ARGUMENT")
    return addresses, names


def is_single(url: Targets) -> bool:
    """One plain address: the client is today's single channel, with nothing of this module on the path."""
    return isinstance(url, str) and "," not in url and not url.strip().startswith(DNS_PREFIX)


def resolve(names: Sequence[DnsName]) -> list[str]:
    """Every address the names resolve to now (``host:port``, IPv6 in brackets), sorted; blocking."""
    found = set()
    for name in names:
        for family, _, _, _, sockaddr in socket.getaddrinfo(name.host, name.port, type=socket.SOCK_STREAM):
            ip = sockaddr[0]
            found.add(f"[{ip}]:{name.port}" if family == socket.AF_INET6 else f"{ip}:{name.port}")
    return sorted(found)


@dataclass(eq=False)
class Replica:
    url: str
    triton: Any  # tritonclient's InferenceServerClient (sync or asyncio) on this replica alone
    up: bool = True  # until a call fails here or a probe says otherwise
    in_flight: int = 0
    requests: int = 0  # calls sent here
    failures: int = 0  # calls that failed here and marked it down
    last_pick: int = 0
    probe_at: float = 0.0  # when its readiness is next asked while it is down
    probing: bool = False
    retired: bool = False  # no longer among the resolved addresses: closed once idle

    def __repr__(self) -> str:
        return f"Replica({self.url!r}, up={self.up}, in_flight={self.in_flight})"


class ReplicaSet:
    """Which replicas there are, which are up, which is next; no I/O (the shells do it)."""

    def __init__(self, addresses: Sequence[str], names: Sequence[DnsName], connect: Callable[[str], Any]) -> None:
        self.static = list(dict.fromkeys(addresses))
        self.names = list(names)
        self.connect = connect
        self.replicas: list[Replica] = []
        self.picks = 0
        self.failovers = 0  # calls sent again to another replica
        self.resolve_at = 0.0
        self.resolving = False
        self.resolve_error: Exception | None = None
        self.update([])

    def __repr__(self) -> str:
        return f"ReplicaSet({self.replicas})"

    @property
    def live(self) -> list[Replica]:
        return [r for r in self.replicas if not r.retired]

    def pick(self, exclude: Sequence[Replica] = ()) -> Replica | None:
        replica = least_busy(r for r in self.live if r not in exclude)
        if replica is not None:
            replica.in_flight += 1
            replica.requests += 1
            self.picks += 1
            replica.last_pick = self.picks
        return replica

    def done(self, replica: Replica) -> Any | None:
        """The call on ``replica`` ended; returns its client if it is retired and idle (to be closed)."""
        replica.in_flight -= 1
        if replica.retired and replica.in_flight == 0 and replica in self.replicas:
            self.replicas.remove(replica)
            return replica.triton
        return None

    def mark_down(self, replica: Replica, now: float) -> None:
        replica.failures += 1
        replica.up = False
        replica.probe_at = now + PROBE_INTERVAL_S

    def due(self, now: float) -> tuple[list[Replica], bool]:
        """The down replicas whose readiness is due to be asked, and whether the names are due to be
        resolved again; both marked as under way (the caller runs them and reports back)."""
        probes = [r for r in self.live if not r.up and not r.probing and r.probe_at <= now]
        for r in probes:
            r.probing = True
        resolve_now = bool(self.names) and not self.resolving and now >= self.resolve_at
        self.resolving = self.resolving or resolve_now
        return probes, resolve_now

    def probed(self, replica: Replica, ready: bool, now: float) -> None:
        replica.probing = False
        replica.up = ready
        replica.probe_at = now + PROBE_INTERVAL_S

    def update(self, resolved: Sequence[str] | None, now: float | None = None) -> list[Any]:
        """The replicas for the static addresses plus ``resolved`` (None: resolution failed, keep what
        there is); returns the clients of vanished idle replicas, to be closed."""
        if now is not None:
            self.resolving = False
            self.resolve_at = now + RESOLVE_INTERVAL_S
        if resolved is None:
            return []
        wanted = list(dict.fromkeys([*self.static, *resolved]))
        if not wanted:  # an empty answer is a DNS hiccup more often than a scale to zero
            return []
        have = {r.url: r for r in self.live}
        closing = []
        for replica in have.values():
            if replica.url not in wanted:
                replica.retired = True
                if replica.in_flight == 0:
                    closing.append(replica.triton)
        kept = [r for r in self.replicas if not (r.retired and r.in_flight == 0)]
        self.replicas = kept + [Replica(url, self.connect(url)) for url in wanted if url not in have]
        return closing

    def unavailable(self, errors: list[tuple[Replica, InferenceServerException]]) -> InferenceServerException:
        """The error of a call no replica answered: each replica's, in one message."""
        if not errors:
            detail = f": {self.resolve_error}" if self.resolve_error else ""
            where = ", ".join([*self.static, *map(str, self.names)])
            return InferenceServerException(f"no Triton replica to send to ({where}){detail}", "StatusCode.UNAVAILABLE")
        if len(errors) == 1:
            return errors[0][1]
        detail = "; ".join(f"{r.url}: {EmbeddingError.from_triton(e).message}" for r, e in errors)
        return InferenceServerException(f"no Triton replica answered ({detail})", errors[-1][1].status())


def remaining(kw: dict[str, Any], started: float) -> dict[str, Any] | None:
    """``kw`` with what is left of its ``client_timeout`` since ``started``; None when nothing is."""
    timeout = kw.get("client_timeout")
    if timeout is None:
        return kw
    left = timeout - (time.monotonic() - started)
    return {**kw, "client_timeout": left} if left > 0 else None


class ReplicatedTriton:
    """The part of tritonclient's ``InferenceServerClient`` this package's sync client uses, over
    several replicas; safe to share between threads like tritonclient's own."""

    def __init__(self, url: Targets, triton_class: type, verbose: bool = False) -> None:
        addresses, names = parse_targets(url)
        self._lock = threading.Lock()
        self._background = ThreadPoolExecutor(1, thread_name_prefix="tembed-replicas")
        self._closed = False
        connect = lambda u: triton_class(u, verbose=verbose, channel_args=channel_args())  # noqa: E731
        self.set = ReplicaSet(addresses, names, connect)
        if names:
            self._resolve(block=True)

    def __repr__(self) -> str:
        return f"ReplicatedTriton({self.set.replicas})"

    def infer(self, *args: Any, **kw: Any) -> Any:
        return self._call("infer", args, kw)

    def get_model_config(self, *args: Any, **kw: Any) -> Any:
        return self._call("get_model_config", args, kw)

    def get_inference_statistics(self, *args: Any, **kw: Any) -> Any:
        return self._call("get_inference_statistics", args, kw)

    def get_server_metadata(self, *args: Any, **kw: Any) -> Any:
        return self._call("get_server_metadata", args, kw)

    def close(self) -> None:
        self._closed = True
        self._background.shutdown(wait=False, cancel_futures=True)
        for replica in self.set.replicas:
            with contextlib.suppress(Exception):
                replica.triton.close()

    def _call(self, method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        started = time.monotonic()
        self._maintain(started)
        if not self.set.live and self.set.names:
            self._resolve(block=True)  # nothing resolved yet (DNS was not ready): try now
        errors: list[tuple[Replica, InferenceServerException]] = []
        while True:
            with self._lock:
                replica = self.set.pick(exclude=[r for r, _ in errors])
            if replica is None:
                raise self.set.unavailable(errors)
            try:
                return getattr(replica.triton, method)(*args, **kw)
            except InferenceServerException as exc:
                if not replica_failed(EmbeddingError.from_triton(exc)):
                    raise
                with self._lock:
                    self.set.mark_down(replica, time.monotonic())
                errors.append((replica, exc))
                left = remaining(kw, started)
                if len(errors) > 1 or left is None:  # one failover per call; the RetryPolicy does the rest
                    raise self.set.unavailable(errors) from None
                kw = left
                with self._lock:
                    self.set.failovers += 1
            finally:
                with self._lock:
                    idle = self.set.done(replica)
                if idle is not None:
                    idle.close()

    def _maintain(self, now: float) -> None:
        with self._lock:
            probes, resolve_now = self.set.due(now)
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            for replica in probes:
                self._background.submit(self._probe, replica)
            if resolve_now:
                self._background.submit(self._resolve)

    def _probe(self, replica: Replica) -> None:
        try:
            ready = bool(replica.triton.is_server_ready(client_timeout=PROBE_TIMEOUT_S))
        except Exception:  # any failure to reach it means "not ready", which is the answer
            ready = False
        with self._lock:
            self.set.probed(replica, ready, time.monotonic())

    def _resolve(self, block: bool = False) -> None:
        try:
            found: list[str] | None = resolve(self.set.names)
            self.set.resolve_error = None
        except OSError as exc:
            found, self.set.resolve_error = None, exc
        with self._lock:
            if self._closed:
                return
            closing = self.set.update(found, time.monotonic())
        for triton in closing:
            triton.close()


class AsyncReplicatedTriton:
    """The asyncio version of :class:`ReplicatedTriton`, for tritonclient's ``grpc.aio`` client.
    Probes and re-resolution run as tasks on the loop of the calls that start them."""

    def __init__(self, url: Targets, triton_class: type, verbose: bool = False) -> None:
        addresses, names = parse_targets(url)
        self._tasks: set[asyncio.Task[None]] = set()
        connect = lambda u: triton_class(u, verbose=verbose, channel_args=channel_args())  # noqa: E731
        self.set = ReplicaSet(addresses, names, connect)
        if names:  # resolved once here, blocking (construction); later in the background
            try:
                self.set.update(resolve(names), time.monotonic())
            except OSError as exc:
                self.set.resolve_error = exc

    def __repr__(self) -> str:
        return f"AsyncReplicatedTriton({self.set.replicas})"

    async def infer(self, *args: Any, **kw: Any) -> Any:
        return await self._call("infer", args, kw)

    async def get_model_config(self, *args: Any, **kw: Any) -> Any:
        return await self._call("get_model_config", args, kw)

    async def get_inference_statistics(self, *args: Any, **kw: Any) -> Any:
        return await self._call("get_inference_statistics", args, kw)

    async def get_server_metadata(self, *args: Any, **kw: Any) -> Any:
        return await self._call("get_server_metadata", args, kw)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for replica in self.set.replicas:
            with contextlib.suppress(Exception):
                await replica.triton.close()

    async def _call(self, method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        started = time.monotonic()
        self._maintain(started)
        if not self.set.live and self.set.names:
            await self._resolve()
        errors: list[tuple[Replica, InferenceServerException]] = []
        while True:
            replica = self.set.pick(exclude=[r for r, _ in errors])
            if replica is None:
                raise self.set.unavailable(errors)
            try:
                return await getattr(replica.triton, method)(*args, **kw)
            except InferenceServerException as exc:
                if not replica_failed(EmbeddingError.from_triton(exc)):
                    raise
                self.set.mark_down(replica, time.monotonic())
                errors.append((replica, exc))
                left = remaining(kw, started)
                if len(errors) > 1 or left is None:
                    raise self.set.unavailable(errors) from None
                kw = left
                self.set.failovers += 1
            finally:
                idle = self.set.done(replica)
                if idle is not None:
                    await idle.close()

    def _maintain(self, now: float) -> None:
        probes, resolve_now = self.set.due(now)
        for replica in probes:
            self._spawn(self._probe(replica))
        if resolve_now:
            self._spawn(self._resolve())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, replica: Replica) -> None:
        try:
            ready = bool(await replica.triton.is_server_ready(client_timeout=PROBE_TIMEOUT_S))
        except Exception:
            ready = False
        self.set.probed(replica, ready, time.monotonic())

    async def _resolve(self) -> None:
        try:
            found: list[str] | None = await asyncio.get_running_loop().run_in_executor(None, resolve, self.set.names)
            self.set.resolve_error = None
        except OSError as exc:
            found, self.set.resolve_error = None, exc
        for triton in self.set.update(found, time.monotonic()):
            await triton.close()


def connect(url: Targets, triton_class: type, verbose: bool = False) -> Any:
    """tritonclient's client for one plain address (exactly what the client always made), or the
    replicated one for several addresses or a ``dns:///`` name (sync or asyncio, as ``triton_class``)."""
    if is_single(url):
        assert isinstance(url, str)
        return triton_class(url, verbose=verbose)
    if inspect.iscoroutinefunction(triton_class.infer):
        return AsyncReplicatedTriton(url, triton_class, verbose)
    return ReplicatedTriton(url, triton_class, verbose)
