"""The served models, found on one or more Triton replicas, over the client's replica layer.

The replicas (``--triton``, given once or more; ``dns:///NAME:8001`` resolved again every
``RESOLVE_INTERVAL_S``) are one :class:`tembed_client.replicas.AsyncReplicatedTriton`: least in flight,
round robin when idle, failover first (a replica gone or draining is left at once for another, and
marked down until its readiness answers), one RetryPolicy around the whole replicated call. What is
the gateway's own, on top of it: reading what each replica serves (so a model's calls go only to the
replicas that serve it, and a new or returning replica is read before it gets any), one
``AsyncEmbeddingClient`` per served model over the shared replicated channel, aliases, the served
tokenizers for token-id input, readiness for ``/health`` (every replica asked every
``HEALTH_INTERVAL_S``), and the counts ``/metrics`` reads (``replicas``, ``failovers``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
from tembed_client.replicas import AsyncReplicatedTriton, DnsName, Replica
from tembed_client.replicas import resolve as resolve_names
from tembed_serving.contract import TASK_RERANK, Layout
from tembed_serving.profile import ModelProfile

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


class ReplicatedModel(AsyncEmbeddingClient):
    """A served model as the gateway sees it: one AsyncEmbeddingClient (its chunking, concurrent sends
    and reassembly) over the replicas' shared channel, with the config already read."""

    @property
    def info(self) -> ModelInfo:
        assert self._info is not None
        return self._info


class ModelRegistry:
    """Created in the server's event loop: grpc.aio channels belong to the loop that made them.

    ``resolver`` and ``triton_class`` are seams for tests (a DNS answer, a tritonclient)."""

    def __init__(
        self,
        settings: GatewaySettings,
        on_retry: Callable[[], None] | None = None,
        resolver: Callable[[list[DnsName]], list[str]] = resolve_names,
        triton_class: type = grpcaio.InferenceServerClient,
    ) -> None:
        self.settings = settings
        self._retry = ObservedRetry(on_retry=on_retry)
        self.triton = AsyncReplicatedTriton(
            list(settings.replica_urls), triton_class, resolver=resolver, discover=self._discover
        )
        self.clients: dict[str, ReplicatedModel] = {}
        self._served: dict[Replica, dict[str, ModelInfo]] = {}  # per replica, its ensembles
        self._tokenizers: dict[str, Tokenizer] = {}
        self._profiles: dict[str, ModelProfile] = {}
        self._lock = asyncio.Lock()
        self._refreshed_at = -math.inf
        self._watch: asyncio.Task[None] | None = None
        # Discovery reads Triton's statistics, which needs no admin key.
        self._rpc = {"client_timeout": min(settings.timeout_s, 10.0)}

    @property
    def replicas(self) -> list[Replica]:
        """The replicas now (url, up, in_flight, requests, failures: what /metrics shows)."""
        return self.triton.set.live

    @property
    def failovers(self) -> int:
        """Requests sent again to another replica."""
        return self.triton.set.failovers

    def start(self) -> None:
        """Check every replica's readiness every HEALTH_INTERVAL_S in the background."""
        self._watch = asyncio.ensure_future(self._watch_replicas())

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.triton.close()

    async def _watch_replicas(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            with contextlib.suppress(Exception):
                await self.ready()

    async def resolve_addresses(self) -> None:
        """Resolve the ``dns:///`` names again: a new address becomes a replica (once it says what
        it serves), a vanished one stops getting requests. A failed lookup changes nothing."""
        await self.triton.resolve_now()
        self._merge()

    async def ready(self) -> bool:
        """Ask every replica whether it is ready (updating which are up); True if any is."""
        ready = await self.triton.check()
        self._merge()
        return ready

    async def _discover(self, replica: Replica) -> None:
        """Read what ``replica`` serves: its loaded models (calls are routed by them) and its READY
        text-embedding ensembles; raises EmbeddingError if it is unreachable.

        A replica coming back after it was marked down also has to serve: one real inference through each
        of its ensembles, on it alone, before it gets calls again. Triton's readiness stays true while a
        Python stub is dead (docs/RELIABILITY.md), so readiness alone would put back a replica that fails
        every request, each failure hidden by a failover."""
        with triton_errors():
            stats = await replica.triton.get_inference_statistics(as_json=True, **self._rpc)
            names = loaded_models(stats)
            configs = await gather(replica.triton.get_model_config(n, as_json=True, **self._rpc) for n in names)
        served = discover_models(dict(zip(names, configs)))
        if not replica.up:
            await self._canary(replica, served)
        self._served[replica] = served
        replica.models = frozenset(names)
        self._merge()

    async def _canary(self, replica: Replica, served: dict[str, ModelInfo]) -> None:
        """One inference through each model ``replica`` serves, on it alone, no retry; raises EmbeddingError."""
        for info in served.values():
            client = AsyncEmbeddingClient(
                replica.url, timeout=self._rpc["client_timeout"], triton=replica.triton, info=info,
                retry=RetryPolicy(attempts=1),
            )  # fmt: skip
            if info.task == TASK_RERANK:
                await client.score("canary", ["canary"])
            else:
                await client.embed(["canary"])

    async def refresh(self, min_interval: float = 0.0) -> None:
        """Re-read every replica's READY text-embedding ensembles; raises EmbeddingError if no
        replica is reachable."""
        async with self._lock:
            if time.monotonic() - self._refreshed_at < min_interval:
                return
            if not self.replicas and self.triton.set.names:
                await self.triton.resolve_now()
            replicas = self.replicas
            if not replicas:
                raise self.triton.set.unavailable([], None)
            errors = await asyncio.gather(*(self._refresh_one(r, len(replicas)) for r in replicas))
            if all(errors):
                raise errors[0]  # type: ignore[misc]
            self._merge()
            self._refreshed_at = time.monotonic()

    async def _refresh_one(self, replica: Replica, of: int) -> EmbeddingError | None:
        try:
            await self._discover(replica)
        except EmbeddingError as exc:
            if of > 1:
                self.triton.set.mark_down(replica, time.monotonic(), exc)
            return exc
        return None

    def _merge(self) -> None:
        """One ReplicatedModel per model any replica serves (the config of the first that does)."""
        live = self.replicas
        self._served = {r: served for r, served in self._served.items() if r in live}
        found: dict[str, ReplicatedModel] = {}
        for replica in live:
            for name, info in self._served.get(replica, {}).items():
                if name in found:
                    continue
                old = self.clients.get(name)
                found[name] = old if old is not None and old.info == info else self._client(info)
        self.clients = found

    def _client(self, info: ModelInfo) -> ReplicatedModel:
        label = self.settings.triton_label
        return ReplicatedModel(label, timeout=self.settings.timeout_s, triton=self.triton, info=info, retry=self._retry)

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

    def profile(self, name: str) -> ModelProfile | None:
        """The served model's profile (prompts), if the gateway was given the repository."""
        if name not in self._profiles:
            repo = self.settings.model_repository
            path = Layout(Path(repo), name).profile_file if repo else None
            if path is None or not path.is_file():
                return None
            self._profiles[name] = ModelProfile.load(path)
        return self._profiles[name]
