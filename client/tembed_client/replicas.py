"""One layer over several Triton replicas serving the same models, for the client and the gateway alike.

``EmbeddingClient("10.0.0.11:8001,10.0.0.12:8001")`` (or a list, or ``"dns:///tembed-triton-headless:8001"``,
a name resolving to several addresses, resolved again every ``RESOLVE_INTERVAL_S``) gets one channel per
replica behind the same face as tritonclient's ``InferenceServerClient``, so the clients' request logic,
chunking and :class:`~tembed_client.RetryPolicy` are the same over one replica or ten. The gateway
(``tembed_gateway.registry``) runs its model clients over the same :class:`AsyncReplicatedTriton`.

- each call goes to the replica with the fewest of this client's calls in flight (the least recently
  chosen among equals: round robin when idle), among those not marked down and, when the owner told
  the layer what each replica serves (the gateway does), among those serving the call's model;
- failover first: a call that fails because its replica is gone or draining (``exc.failover``) is sent
  once more, at once, to another replica, within what is left of the call's timeout (every call is
  idempotent); the failed replica is marked down, and its readiness is asked in the background every
  ``PROBE_INTERVAL_S`` (only while it is down, and only when calls come, or when the owner asks:
  :meth:`AsyncReplicatedTriton.check`) until it answers again;
- a replica that answers ``overloaded`` (its queue is full) is not marked down: the call is sent once
  to another replica that is up, at once; only when that one cannot take it either does the call fail,
  as ``overloaded``;
- retries with backoff wrap the whole replicated call, never one replica: when no replica could take
  the call (every one tried was gone, draining or busy), the error is retryable and the caller's
  RetryPolicy pauses and sends it again, to whichever replica is then the best;
- with every replica down, calls still go to them (readiness may be stale; a dead one refuses at once),
  so the error comes fast and names each replica.

One plain address (``"localhost:8001"``) is exactly today's client: one tritonclient with its own channel
defaults, no health calls, none of this module on the path. The bookkeeping (:class:`ReplicaSet`) does no
I/O; :class:`ReplicatedTriton` and :class:`AsyncReplicatedTriton` are its thin sync and asyncio shells."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, Union

from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions
from tritonclient.utils import InferenceServerException

from . import contract as c
from .errors import EmbeddingError

# How often a replica marked down has its readiness asked (while calls come).
PROBE_INTERVAL_S = 1.0
# How long a readiness probe may take: a replica that cannot answer this fast stays down.
PROBE_TIMEOUT_S = 2.0
# How often a ``dns:///`` name is resolved again (pods come and go behind a headless Service).
RESOLVE_INTERVAL_S = 10.0
DNS_PREFIX = "dns:"

log = logging.getLogger("tembed_client")

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
    # The models it serves, when its owner reads them (the gateway); None: not known (yet).
    models: frozenset[str] | None = None

    def __repr__(self) -> str:
        return f"Replica({self.url!r}, up={self.up}, in_flight={self.in_flight})"


class ReplicaSet:
    """Which replicas there are, which are up, which is next; no I/O (the shells do it).

    ``by_model``: the owner says what each replica serves (``Replica.models``, read by its ``discover``);
    a call for a model then goes only to a replica known to serve it, and a new replica gets calls once
    it has been read."""

    def __init__(
        self,
        addresses: Sequence[str],
        names: Sequence[DnsName],
        connect: Callable[[str], Any],
        by_model: bool = False,
    ) -> None:
        self.static = list(dict.fromkeys(addresses))
        self.names = list(names)
        self.connect = connect
        self.by_model = by_model
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

    def serving(self, model: str | None, exclude: Sequence[Replica] = ()) -> list[Replica]:
        """The live replicas a call for ``model`` may go to (any, for a call naming none)."""
        known = self.by_model and model
        return [r for r in self.live if r not in exclude and not (known and model not in (r.models or ()))]

    def pick(self, model: str | None = None, exclude: Sequence[Replica] = (), up_only: bool = False) -> Replica | None:
        candidates = self.serving(model, exclude)
        replica = least_busy(r for r in candidates if r.up or not up_only)
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

    def mark_down(self, replica: Replica, now: float, why: object = "") -> None:
        replica.failures += 1
        if replica.up:
            log.warning("Triton replica %s marked down: %s", replica.url, why)
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
        if ready and not replica.up:
            log.warning("Triton replica %s is ready again", replica.url)
        replica.probing = False
        replica.up = ready
        replica.probe_at = now + PROBE_INTERVAL_S

    def unread(self) -> list[Replica]:
        """Live replicas whose models are still to be read (``by_model`` only)."""
        return [r for r in self.live if r.models is None] if self.by_model else []

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
                log.warning("Triton replica %s no longer resolves; dropped", replica.url)
                replica.retired = True
                if replica.in_flight == 0:
                    closing.append(replica.triton)
        kept = [r for r in self.replicas if not (r.retired and r.in_flight == 0)]
        self.replicas = kept + [Replica(url, self.connect(url)) for url in wanted if url not in have]
        return closing

    def attempt(self, method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Attempt:
        return Attempt(self, call_model(method, args, kw), kw)

    def unavailable(self, errors: Sequence[tuple[Replica, EmbeddingError]], model: str | None) -> EmbeddingError:
        """The error of a call no replica could take: each replica's, in one message. ``overloaded`` when
        one of them was busy (the call may succeed later), else the replicas are gone or draining."""
        if not errors:
            detail = f": {self.resolve_error}" if self.resolve_error else ""
            where = ", ".join([*self.static, *map(str, self.names)])
            serving = f" serving {model!r}" if self.by_model and model else ""
            return EmbeddingError(f"no Triton replica{serving} to send to ({where}){detail}", c.REPLICA_GONE)
        reasons = {e.reason for _, e in errors}
        reason = c.OVERLOADED if c.OVERLOADED in reasons else c.DRAINING if reasons == {c.DRAINING} else c.REPLICA_GONE
        detail = "; ".join(f"{r.url}: {e.message}" for r, e in errors)
        return EmbeddingError(f"no Triton replica answered ({detail})", reason)


def call_model(method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> str | None:
    """The model a tritonclient call is for (``infer``'s, ``get_model_config``'s ``model_name``), or None."""
    if method == "get_server_metadata":
        return None
    name = kw.get("model_name", args[0] if args else None)
    return name or None


class Attempt:
    """One replicated call's walk over the replicas: where it goes next, and whether a failure there
    sends it on to another replica or ends it (with the error to raise). No I/O, no pause: the pause
    between attempts is the caller's RetryPolicy, around the whole call."""

    def __init__(self, rs: ReplicaSet, model: str | None, kw: dict[str, Any]) -> None:
        self.rs, self.model, self.kw = rs, model, kw
        self.started = time.monotonic()
        self.errors: list[tuple[Replica, EmbeddingError]] = []
        self.up_only = False  # after a busy replica: only another that is up is worth trying at once

    def next(self) -> Replica:
        replica = self.rs.pick(self.model, [r for r, _ in self.errors], self.up_only)
        if replica is None:
            raise self.rs.unavailable(self.errors, self.model)
        return replica

    def failed(self, replica: Replica, exc: InferenceServerException) -> None:
        """Returns when the call goes on to another replica; raises the call's error otherwise."""
        error = EmbeddingError.from_triton(exc)
        if error.failover:
            self.rs.mark_down(replica, time.monotonic(), error)
        elif error.reason != c.OVERLOADED:
            raise exc  # this request's own fault, or a deadline: another replica would answer the same
        self.errors.append((replica, error))
        self.up_only = self.up_only or error.reason == c.OVERLOADED
        left = remaining(self.kw, self.started)
        others = [r for r in self.rs.serving(self.model, [r for r, _ in self.errors]) if r.up or not self.up_only]
        if len(self.errors) > 1 or left is None or not others:  # one failover per call
            if len(self.errors) == 1:
                raise exc
            raise self.rs.unavailable(self.errors, self.model) from None
        self.kw = left
        self.rs.failovers += 1


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

    def __init__(
        self,
        url: Targets,
        triton_class: type,
        verbose: bool = False,
        resolver: Callable[[Sequence[DnsName]], list[str]] = resolve,
    ) -> None:
        addresses, names = parse_targets(url)
        self.resolver = resolver
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
        self._maintain(time.monotonic())
        if not self.set.live and self.set.names:
            self._resolve(block=True)  # nothing resolved yet (DNS was not ready): try now
        attempt = self.set.attempt(method, args, kw)
        while True:
            with self._lock:
                replica = attempt.next()
            try:
                return getattr(replica.triton, method)(*args, **attempt.kw)
            except InferenceServerException as exc:
                with self._lock:
                    attempt.failed(replica, exc)
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
            found: list[str] | None = self.resolver(self.set.names)
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
    Probes and re-resolution run as tasks on the loop of the calls that start them.

    ``discover``: reads what a replica serves into ``Replica.models`` (raising if it cannot); given,
    calls are routed by model, and a replica is read before it gets calls: when it first appears, and
    each time it comes back up. ``resolver``: the addresses of the ``dns:///`` names now (blocking)."""

    def __init__(
        self,
        url: Targets,
        triton_class: type,
        verbose: bool = False,
        resolver: Callable[[Sequence[DnsName]], list[str]] = resolve,
        discover: Callable[[Replica], Awaitable[None]] | None = None,
    ) -> None:
        addresses, names = parse_targets(url)
        self.resolver = resolver
        self._discover = discover
        self._tasks: set[asyncio.Task[None]] = set()
        connect = lambda u: triton_class(u, verbose=verbose, channel_args=channel_args())  # noqa: E731
        self.set = ReplicaSet(addresses, names, connect, by_model=discover is not None)
        if names:  # resolved once here, blocking (construction); later in the background
            try:
                self.set.update(resolver(names), time.monotonic())
            except OSError as exc:
                self.set.resolve_error = exc
                log.warning("cannot resolve %s yet: %s", ", ".join(map(str, names)), exc)

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

    async def check(self) -> bool:
        """Ask every replica's readiness now (and resolve the names when due): the ones that answer are
        up (read first, if they were down), the others down. True if any is up."""
        probes, resolve_now = self.set.due(time.monotonic())
        if resolve_now:
            await self._resolve()
        others = [r for r in self.set.live if not r.probing]
        for replica in others:
            replica.probing = True
        await asyncio.gather(*(self._probe(r) for r in [*probes, *others]))
        return any(r.up for r in self.set.live)

    async def resolve_now(self) -> None:
        """Resolve the ``dns:///`` names at once; new replicas are read before this returns."""
        self.set.resolving = True
        await self._resolve()

    async def _call(self, method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        self._maintain(time.monotonic())
        if not self.set.live and self.set.names:
            await self.resolve_now()
        attempt = self.set.attempt(method, args, kw)
        while True:
            replica = attempt.next()
            try:
                return await getattr(replica.triton, method)(*args, **attempt.kw)
            except InferenceServerException as exc:
                attempt.failed(replica, exc)
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
            if ready and self._discover is not None and (not replica.up or replica.models is None):
                await self._discover(replica)  # back: read what it serves before it gets calls again
        except Exception:  # any failure to reach it (or to read it) means "not ready", which is the answer
            ready = False
        self.set.probed(replica, ready, time.monotonic())

    async def _resolve(self) -> None:
        try:
            found: list[str] | None = await asyncio.get_running_loop().run_in_executor(
                None, self.resolver, self.set.names
            )
            self.set.resolve_error = None
        except OSError as exc:
            found, self.set.resolve_error = None, exc
            log.warning("cannot resolve %s: %s; keeping %d replicas", self.set.names, exc, len(self.set.live))
        for triton in self.set.update(found, time.monotonic()):
            await triton.close()
        for replica in self.set.unread():
            try:
                await self._discover(replica)  # type: ignore[misc]
            except Exception:  # cannot be read yet: down, and read again when its probe answers
                self.set.probed(replica, False, time.monotonic())


def connect(url: Targets, triton_class: type, verbose: bool = False) -> Any:
    """tritonclient's client for one plain address (exactly what the client always made), or the
    replicated one for several addresses or a ``dns:///`` name (sync or asyncio, as ``triton_class``)."""
    if is_single(url):
        assert isinstance(url, str)
        return triton_class(url, verbose=verbose)
    if inspect.iscoroutinefunction(triton_class.infer):
        return AsyncReplicatedTriton(url, triton_class, verbose)
    return ReplicatedTriton(url, triton_class, verbose)
