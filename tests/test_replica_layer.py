"""The one replica layer (tembed_client.replicas), the same tests for each of its users: the sync and the
asyncio client over several addresses, and the gateway's registry. No server: a fake tritonclient
answers for each address as told (up, gone, draining, busy, or refusing the request), and counts.

What they pin: failover first (a gone or draining replica gets one attempt, the call moves on at once,
no backoff), a busy replica is tried once elsewhere without being marked down, and the RetryPolicy's
pauses wrap the whole replicated call, only when no replica could take it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tembed_client import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError, ModelInfo
from tembed_client import contract as c
from tembed_gateway.registry import ObservedRetry

A, B = "a:8001", "b:8001"
MODEL, OTHER = "m", "n"
DIM = 4
# What a tritonclient raises for each state of a replica (Triton's and gRPC's own words).
REFUSALS = {
    "gone": ("failed to connect to all addresses", "StatusCode.UNAVAILABLE"),
    "draining": (f"Request for unknown model: '{MODEL}' has no available versions", "StatusCode.NOT_FOUND"),
    "busy": ("Exceeds maximum queue size", "StatusCode.UNAVAILABLE"),
    "invalid": ("text[0] is not valid", "StatusCode.INVALID_ARGUMENT"),
}


class Cluster:
    """The fake replicas' state (by address) and the calls each got (by address and model)."""

    state: dict[str, str] = {}
    models: dict[str, tuple[str, ...]] = {}
    calls: Counter[tuple[str, str]] = Counter()

    @classmethod
    def reset(cls) -> None:
        cls.state = {A: "up", B: "up"}
        cls.models = {A: (MODEL,), B: (MODEL,)}
        cls.calls = Counter()

    @classmethod
    def sent(cls, url: str, model: str = MODEL) -> int:
        return cls.calls[url, model]


class Result:
    def __init__(self, rows: int) -> None:
        self.rows = rows

    def as_numpy(self, name: str) -> np.ndarray | None:
        if name == c.EMBEDDING:
            return np.full((self.rows, DIM), 0.5, np.float32)
        if name == c.TOKEN_COUNT:
            return np.full(self.rows, 3, np.int32)
        return None


def config(name: str) -> dict[str, Any]:
    params = {c.PARAM_DIMENSION: DIM, c.PARAM_MAX_TEXTS: 8}
    parameters = {k: {"string_value": str(v)} for k, v in params.items()}
    return {"config": {"name": name, "platform": "ensemble", "parameters": parameters}}


class FakeTriton:
    """tritonclient's InferenceServerClient on one address, as the fake cluster says."""

    def __init__(self, url: str, verbose: bool = False, channel_args: Any = None) -> None:
        self.url = url

    def _answer(self, model: str | None, inputs: list[Any]) -> Result:
        state = Cluster.state[self.url]
        if model is not None:
            Cluster.calls[self.url, model] += 1
        if state != "up":
            raise InferenceServerException(*REFUSALS[state])
        return Result(inputs[0].shape()[0] if inputs else 0)

    def infer(self, model_name: str, inputs: list[Any], **kw: Any) -> Result:
        return self._answer(model_name, inputs)

    def is_server_ready(self, **kw: Any) -> bool:
        if Cluster.state[self.url] == "gone":
            raise InferenceServerException(*REFUSALS["gone"])
        return Cluster.state[self.url] in ("up", "busy")

    def get_inference_statistics(self, **kw: Any) -> dict[str, Any]:
        self._answer(None, [])
        return {"model_stats": [{"name": n} for n in Cluster.models[self.url]]}

    def get_model_config(self, model_name: str, **kw: Any) -> dict[str, Any]:
        self._answer(None, [])
        return config(model_name)

    def close(self) -> None:
        pass


class AsyncFakeTriton(FakeTriton):
    async def infer(self, model_name: str, inputs: list[Any], **kw: Any) -> Result:  # type: ignore[override]
        return self._answer(model_name, inputs)

    async def is_server_ready(self, **kw: Any) -> bool:  # type: ignore[override]
        return FakeTriton.is_server_ready(self)

    async def get_inference_statistics(self, **kw: Any) -> dict[str, Any]:  # type: ignore[override]
        return FakeTriton.get_inference_statistics(self)

    async def get_model_config(self, model_name: str, **kw: Any) -> dict[str, Any]:  # type: ignore[override]
        return FakeTriton.get_model_config(self, model_name)

    async def close(self) -> None:  # type: ignore[override]
        pass


# The gateway's RetryPolicy that counts each pause it grants; the tests give it short pauses.
CountedRetry = ObservedRetry


class User:
    """One user of the layer, driven the same way: ``embed(model)``, and what the layer counted."""

    def __init__(self, kind: str) -> None:
        self.kind, self.retries = kind, 0
        self.loop = asyncio.new_event_loop()
        retry = CountedRetry(base_s=0.001, max_s=0.001, on_retry=self.count)
        if kind == "client":
            sync_client = type("Client", (EmbeddingClient,), {"_triton_class": FakeTriton})
            self.client: Any = sync_client([A, B], info=info(MODEL), retry=retry, timeout=10)
        elif kind == "async client":
            async_client = type("AsyncClient", (AsyncEmbeddingClient,), {"_triton_class": AsyncFakeTriton})
            self.client = self.run(self.made(lambda: async_client([A, B], info=info(MODEL), retry=retry, timeout=10)))
        else:
            from tembed_gateway import GatewaySettings
            from tembed_gateway.registry import ModelRegistry

            settings = GatewaySettings(triton_urls=(A, B), timeout_s=10)

            async def registry() -> ModelRegistry:
                made = ModelRegistry(settings, on_retry=self.count, triton_class=AsyncFakeTriton)
                await made.refresh()
                return made

            self.registry = self.run(registry())
            for client in self.registry.clients.values():  # the same short pauses, still counted
                client.retry = retry
        self.layer = self.registry.triton if kind == "gateway" else self.client._triton

    def count(self) -> None:
        self.retries += 1

    @staticmethod
    async def made(factory: Callable[[], Any]) -> Any:
        return factory()  # grpc.aio clients (and so the layer) belong to a running loop

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def embed(self, model: str = MODEL) -> np.ndarray:
        if self.kind == "client":
            return self.client.embed(["x", "y"])
        if self.kind == "async client":
            return self.run(self.client.embed(["x", "y"]))

        async def through_gateway() -> np.ndarray:
            client = await self.registry.resolve(model)
            assert client is not None, model
            return await client.embed(["x", "y"])

        return self.run(through_gateway())

    @property
    def replicas(self) -> dict[str, Any]:
        return {r.url: r for r in self.layer.set.live}

    @property
    def failovers(self) -> int:
        return self.layer.set.failovers

    def close(self) -> None:
        if self.kind == "gateway":
            self.run(self.registry.close())
        elif self.kind == "async client":
            self.run(self.client.close())
        else:
            self.client.close()
        self.loop.close()


def info(name: str) -> ModelInfo:
    return ModelInfo(name=name, dimension=DIM, min_dimension=DIM, max_texts=8)


@pytest.fixture(params=["client", "async client", "gateway"])
def user(request):
    Cluster.reset()
    made = User(request.param)
    yield made
    made.close()


@pytest.mark.parametrize("why", ["gone", "draining"])
def test_a_gone_or_draining_replica_gets_one_attempt_and_the_call_moves_on_at_once(user, why):
    """kill -9 (gone) or SIGTERM (draining) of the replica the next call goes to: the call succeeds on the
    other, the dead one got exactly one attempt and no pause was taken; it is marked down and left alone."""
    user.embed(), user.embed()  # idle: round robin, a then b; a is next
    assert (Cluster.sent(A), Cluster.sent(B)) == (1, 1)
    Cluster.state[A] = why
    assert user.embed().shape == (2, DIM)
    assert (Cluster.sent(A), Cluster.sent(B)) == (2, 2)  # one attempt on a, then b at once
    assert user.retries == 0 and user.failovers == 1
    assert not user.replicas[A].up and user.replicas[A].failures == 1 and user.replicas[B].up
    for _ in range(3):  # marked down: no call goes there while b is up
        user.embed()
    assert Cluster.sent(A) == 2 and user.retries == 0


def test_a_busy_replica_is_tried_once_elsewhere_and_not_marked_down(user):
    Cluster.state[A] = "busy"
    assert user.embed().shape == (2, DIM)
    assert (Cluster.sent(A), Cluster.sent(B)) == (1, 1)
    assert user.retries == 0 and user.failovers == 1
    assert user.replicas[A].up and user.replicas[A].failures == 0
    Cluster.state[A] = "up"
    user.embed(), user.embed()
    assert Cluster.sent(A) == 2, "a busy replica is not left: it takes calls again at once"


def test_every_replica_busy_is_retried_with_backoff_around_the_whole_call(user):
    Cluster.state[A] = Cluster.state[B] = "busy"
    with pytest.raises(EmbeddingError) as err:
        user.embed()
    assert err.value.reason == c.OVERLOADED and err.value.retryable
    # Each of the RetryPolicy's 4 attempts tried both replicas once; 3 pauses, between attempts only.
    assert (Cluster.sent(A), Cluster.sent(B)) == (4, 4) and user.retries == 3
    assert user.replicas[A].up and user.replicas[B].up


def test_every_replica_gone_is_a_clear_error_after_the_policys_retries(user):
    Cluster.state[A] = Cluster.state[B] = "gone"
    with pytest.raises(EmbeddingError) as err:
        user.embed()
    assert err.value.reason == c.REPLICA_GONE and err.value.code == "UNAVAILABLE"
    assert A in err.value.message and B in err.value.message
    # Down, but still tried (readiness may be stale; a dead replica refuses at once): once per attempt.
    assert (Cluster.sent(A), Cluster.sent(B)) == (4, 4) and user.retries == 3
    Cluster.state[B] = "up"  # one comes back before the next call: it answers, no pause needed
    assert user.embed().shape == (2, DIM)


def test_a_request_the_replica_refuses_is_not_sent_elsewhere(user):
    Cluster.state[A] = "invalid"
    with pytest.raises(EmbeddingError) as err:
        user.embed()
    assert err.value.reason == c.INVALID_ARGUMENT
    assert (Cluster.sent(A), Cluster.sent(B)) == (1, 0) and user.retries == 0 and user.failovers == 0
    assert user.replicas[A].up


def test_the_gateway_sends_a_model_only_to_the_replicas_serving_it():
    Cluster.reset()
    Cluster.models[B] = (MODEL, OTHER)
    user = User("gateway")
    try:
        assert sorted(user.registry.clients) == [MODEL, OTHER]
        for _ in range(4):
            user.embed(OTHER)
        assert (Cluster.sent(A, OTHER), Cluster.sent(B, OTHER)) == (0, 4)
        # b gone: no failover to a replica that does not serve it; the retries find none either.
        Cluster.state[B] = "gone"
        with pytest.raises(EmbeddingError) as err:
            user.embed(OTHER)
        assert err.value.reason == c.REPLICA_GONE and Cluster.sent(A, OTHER) == 0
        # The other model fails over to a as usual.
        assert user.embed(MODEL).shape == (2, DIM) and Cluster.sent(A, MODEL) >= 1
    finally:
        user.close()
