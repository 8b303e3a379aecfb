"""The served ensembles, found on one or more Triton replicas, each replica with one shared gRPC channel.

With several replicas (``--triton`` given more than once) each request goes to the ready replica with
the fewest requests in flight; a request that fails there with UNAVAILABLE (the server or the
connection is gone, not a full queue) is sent once more to another replica (every request is
idempotent), and the replica is marked down until its readiness answers again (checked every
``HEALTH_INTERVAL_S``). A ``dns:///NAME:8001`` replica (a Kubernetes headless Service) is one replica per
address the name resolves to, resolved again every ``RESOLVE_INTERVAL_S``: pods that appear get
traffic, pods that vanish are dropped once their requests are done (gRPC's own resolver looks a name
up again only when a connection breaks, grpc/grpc#12295, so a scale-up would go unseen).

What counts as a failed replica (``replica_failed``: gone, or draining), the order of choice
(``least_busy``) and the channel arguments are the client's (``tembed_client.replicas``): the gateway
and an ``EmbeddingClient`` over several replicas behave alike."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tritonclient.grpc.aio as grpcaio
from tokenizers import Tokenizer

from tembed_client import (
    AsyncEmbeddingClient,
    EmbeddingError,
    ModelInfo,
    RetryPolicy,
    discover_models,
    gather,
    loaded_models,
    triton_errors,
)
from tembed_client.replicas import (
    RESOLVE_INTERVAL_S,
    DnsName,
    channel_args,
    least_busy,
    parse_targets,
    replica_failed,
)
from tembed_client.replicas import resolve as resolve_names
from tembed_serving.contract import Layout

from .settings import GatewaySettings

# An unknown model name triggers a re-read of Triton's index, but not more often than this.
REFRESH_INTERVAL_S = 1.0
# How often every replica's readiness is asked (a replica marked down is put back by it).
HEALTH_INTERVAL_S = 1.0

log = logging.getLogger("tembed_gateway")


@dataclass(frozen=True)
class ObservedRetry(RetryPolicy):
    """The client's RetryPolicy, telling ``on_retry`` of every retry it grants (the gateway counts them)."""

    on_retry: Callable[[], None] | None = None

    def again(self, attempt: int, started: float, timeout: float | None) -> float | None:
        pause = super().again(attempt, started, timeout)
        if pause is not None and self.on_retry is not None:
            self.on_retry()
        return pause


class ModelClient(AsyncEmbeddingClient):
    """One model's AsyncEmbeddingClient on one replica's shared channel (its chunking, concurrent
    sends and reassembly are what the gateway needs), with the config already read."""

    def __init__(
        self,
        triton: grpcaio.InferenceServerClient,
        url: str,
        info: ModelInfo,
        timeout: float,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(url, timeout=timeout, triton=triton, info=info, retry=ObservedRetry(on_retry=on_retry))

    @property
    def info(self) -> ModelInfo:
        assert self._info is not None
        return self._info


class Replica:
    """One Triton server: its channel, the clients of the models it serves, and whether it answers."""

    def __init__(self, url: str, settings: GatewaySettings, on_retry: Callable[[], None] | None = None) -> None:
        self.url = url
        self.settings = settings
        self.triton = grpcaio.InferenceServerClient(url, channel_args=channel_args())
        self.clients: dict[str, ModelClient] = {}
        self.up = True  # until a request or a readiness check says otherwise
        self.in_flight = 0
        self.requests = 0  # sent here, failed or not
        self.failures = 0  # requests that failed here and marked it down
        self.last_pick = 0  # the registry's pick count when it was last chosen (ties go to the oldest)
        self._on_retry = on_retry
        self._refreshed_at = -math.inf
        # Discovery reads Triton's statistics, which needs no admin key.
        self._rpc = {"client_timeout": min(settings.timeout_s, 10.0)}

    def __repr__(self) -> str:
        return f"Replica({self.url!r}, up={self.up}, in_flight={self.in_flight})"

    async def ready(self) -> bool:
        try:
            return bool(await self.triton.is_server_ready(client_timeout=2.0))
        except Exception:  # any failure to reach Triton means "not ready", which is the answer
            return False

    async def refresh(self) -> None:
        """Re-read this replica's READY ensembles; raises EmbeddingError if it is unreachable."""
        with triton_errors():
            stats = await self.triton.get_inference_statistics(as_json=True, **self._rpc)
            names = loaded_models(stats)
            configs = await gather(self.triton.get_model_config(n, as_json=True, **self._rpc) for n in names)
        found = {}
        for name, info in discover_models(dict(zip(names, configs))).items():
            old = self.clients.get(name)
            found[name] = old if old is not None and old.info == info else self._client(info)
        self.clients = found
        self._refreshed_at = time.monotonic()

    def _client(self, info: ModelInfo) -> ModelClient:
        return ModelClient(self.triton, self.url, info, self.settings.timeout_s, self._on_retry)


class ReplicatedModel:
    """A served model as the gateway sees it: the same methods as :class:`ModelClient`, each call
    sent to the least busy ready replica that serves it, and once more to another if that one fails."""

    def __init__(self, registry: ModelRegistry, info: ModelInfo) -> None:
        self.registry, self.info = registry, info

    async def encode(self, *args: Any, **kw: Any) -> Any:
        return await self._call("encode", args, kw)

    async def embed(self, *args: Any, **kw: Any) -> Any:
        return await self._call("embed", args, kw)

    async def tokenize(self, *args: Any, **kw: Any) -> Any:
        return await self._call("tokenize", args, kw)

    async def score(self, *args: Any, **kw: Any) -> Any:
        return await self._call("score", args, kw)

    async def _call(self, method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        tried: list[Replica] = []
        while True:
            replica = self.registry.pick(self.info.name, exclude=tried)
            if replica is None:
                raise EmbeddingError(f"no Triton replica serving {self.info.name!r} is ready", code="UNAVAILABLE")
            client = replica.clients[self.info.name]
            replica.in_flight += 1
            replica.requests += 1
            self.registry.picks += 1
            replica.last_pick = self.registry.picks
            try:
                return await getattr(client, method)(*args, **kw)
            except EmbeddingError as exc:
                if not replica_failed(exc):
                    raise
                self.registry.mark_down(replica, exc)
                tried.append(replica)
                # One more replica at most; with one replica, the answer is the error.
                if len(tried) > 1 or self.registry.pick(self.info.name, exclude=tried) is None:
                    raise
                self.registry.failovers += 1
            finally:
                replica.in_flight -= 1


class ModelRegistry:
    """Created in the server's event loop: grpc.aio channels belong to the loop that made them."""

    def __init__(
        self,
        settings: GatewaySettings,
        on_retry: Callable[[], None] | None = None,
        resolver: Callable[[list[DnsName]], list[str]] = resolve_names,
    ) -> None:
        self.settings = settings
        self._on_retry = on_retry
        self._static, self._names = parse_targets(list(settings.replica_urls))
        self._resolver = resolver  # the names' addresses now (blocking; run in a thread)
        self._retired: list[Replica] = []  # resolved no more: closed once their requests are done
        self.replicas = [Replica(url, settings, on_retry) for url in self._static]
        self.clients: dict[str, ReplicatedModel] = {}
        self.failovers = 0  # requests sent again to another replica
        self.picks = 0
        self._tokenizers: dict[str, Tokenizer] = {}
        self._lock = asyncio.Lock()
        self._refreshed_at = -math.inf
        self._watch: asyncio.Task[None] | None = None
        if self._names:
            try:
                self._update_addresses(resolver(self._names))
            except OSError as exc:  # not resolvable yet (pods not up): the watcher tries again
                log.warning("cannot resolve %s yet: %s", ", ".join(map(str, self._names)), exc)

    def start(self) -> None:
        """Check every replica's readiness every HEALTH_INTERVAL_S in the background."""
        self._watch = asyncio.ensure_future(self._watch_replicas())

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for replica in [*self.replicas, *self._retired]:
            await replica.triton.close()

    async def _watch_replicas(self) -> None:
        resolve_at = time.monotonic() + RESOLVE_INTERVAL_S
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            if self._names and time.monotonic() >= resolve_at:
                resolve_at = time.monotonic() + RESOLVE_INTERVAL_S
                with contextlib.suppress(Exception):
                    await self.resolve_addresses()
            with contextlib.suppress(Exception):
                await self.ready()
            for replica in [r for r in self._retired if r.in_flight == 0]:
                self._retired.remove(replica)
                with contextlib.suppress(Exception):
                    await replica.triton.close()

    async def resolve_addresses(self) -> None:
        """Resolve the ``dns:///`` names again: a new address becomes a replica (once it says what
        it serves), a vanished one stops getting requests. A failed lookup changes nothing."""
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, self._resolver, self._names)
        except OSError as exc:
            log.warning("cannot resolve %s: %s; keeping %d replicas", self._names, exc, len(self.replicas))
            return
        added = self._update_addresses(found)
        for replica in added:
            await self._refresh_one(replica)
        if added:
            self._merge()

    def _update_addresses(self, resolved: list[str]) -> list[Replica]:
        """The replicas for the static addresses plus ``resolved``; returns the new ones."""
        wanted = list(dict.fromkeys([*self._static, *resolved]))
        have = {r.url: r for r in self.replicas}
        for url in set(have) - set(wanted):
            log.warning("Triton replica %s no longer resolves; dropped", url)
            self._retired.append(have[url])
        added = [Replica(url, self.settings, self._on_retry) for url in wanted if url not in have]
        self.replicas = [have.get(url) or next(r for r in added if r.url == url) for url in wanted]
        self._merge()
        return added

    def mark_down(self, replica: Replica, exc: EmbeddingError) -> None:
        replica.failures += 1
        if replica.up:
            log.warning("Triton replica %s marked down: %s", replica.url, exc)
        replica.up = False

    async def ready(self) -> bool:
        """Ask every replica whether it is ready (updating which are up); True if any is."""
        answers = await gather(r.ready() for r in self.replicas)
        for replica, ready in zip(self.replicas, answers):
            if ready and not replica.up:
                # Back: read what it serves before sending it requests again.
                try:
                    await replica.refresh()
                except EmbeddingError:
                    continue
                log.warning("Triton replica %s is ready again", replica.url)
                self._merge()
            replica.up = ready
        return any(answers)

    def pick(self, name: str, exclude: list[Replica] | None = None) -> Replica | None:
        """The ready replica serving ``name`` with the fewest requests in flight (the least recently
        chosen, among equals: round robin when idle). With none marked ready, any that serves it: readiness may be out of date, and
        a replica that is really down answers UNAVAILABLE at once."""
        return least_busy(r for r in self.replicas if name in r.clients and r not in (exclude or ()))

    async def refresh(self, min_interval: float = 0.0) -> None:
        """Re-read every replica's READY text-embedding ensembles; raises EmbeddingError if no
        replica is reachable."""
        async with self._lock:
            if time.monotonic() - self._refreshed_at < min_interval:
                return
            errors = await gather(self._refresh_one(r) for r in self.replicas)
            if all(errors):
                raise errors[0]  # type: ignore[misc]
            self._merge()
            self._refreshed_at = time.monotonic()

    async def _refresh_one(self, replica: Replica) -> EmbeddingError | None:
        try:
            await replica.refresh()
        except EmbeddingError as exc:
            if len(self.replicas) > 1:
                self.mark_down(replica, exc)
            return exc
        return None

    def _merge(self) -> None:
        """One ReplicatedModel per model any replica serves (the config of the first that does)."""
        found: dict[str, ReplicatedModel] = {}
        for replica in self.replicas:
            for name, client in replica.clients.items():
                if name in found:
                    continue
                old = self.clients.get(name)
                found[name] = old if old is not None and old.info == client.info else ReplicatedModel(self, client.info)
        self.clients = found

    async def resolve(self, model: str) -> ReplicatedModel | None:
        name = self.settings.aliases.get(model, model)
        client = self.clients.get(name)
        if client is None:
            await self.refresh(REFRESH_INTERVAL_S)
            client = self.clients.get(name)
        return client

    def tokenizer(self, name: str) -> Tokenizer | None:
        """The served tokenizer's ``tokenizer.json``, if the gateway was given the repository."""
        if name not in self._tokenizers:
            repo = self.settings.model_repository
            path = Layout(Path(repo), name).tokenizer_file if repo else None
            if path is None or not path.is_file():
                return None
            self._tokenizers[name] = Tokenizer.from_file(str(path))
        return self._tokenizers[name]
