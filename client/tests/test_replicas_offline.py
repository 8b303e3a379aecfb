"""The replica bookkeeping of tembed_client.replicas, without a server (tests/test_client_replicas.py
runs it against two real tritonservers)."""

from __future__ import annotations

import asyncio
import socket

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from tembed_client import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError
from tembed_client.replicas import (
    PROBE_INTERVAL_S,
    RESOLVE_INTERVAL_S,
    AsyncReplicatedTriton,
    DnsName,
    ReplicaSet,
    ReplicatedTriton,
    parse_targets,
    replica_failed,
    resolve,
)


def test_targets_are_parsed_from_a_string_a_list_or_dns_names():
    assert parse_targets("a:1") == (["a:1"], [])
    assert parse_targets(" a:1 , b:2,") == (["a:1", "b:2"], [])
    assert parse_targets(["a:1", "b:2"]) == (["a:1", "b:2"], [])
    assert parse_targets("dns:///triton-headless:8001") == ([], [DnsName("triton-headless", 8001)])
    assert parse_targets("dns:triton:8001,c:3") == (["c:3"], [DnsName("triton", 8001)])
    assert str(DnsName("t", 1)) == "dns:///t:1"
    for bad in ("", " , ", "dns:///nameonly", "dns://8.8.8.8/name:1", ["a:1", 5]):
        with pytest.raises(EmbeddingError) as e:
            parse_targets(bad)  # type: ignore[arg-type]
        assert e.value.code == "INVALID_ARGUMENT"


def test_one_address_is_exactly_the_plain_tritonclient():
    """No replica layer, no health calls: what the client always made."""
    with EmbeddingClient("localhost:1") as client:
        assert type(client._triton) is grpcclient.InferenceServerClient

    async def made(url: object) -> type:
        async with AsyncEmbeddingClient(url) as aclient:  # grpc.aio channels belong to a running loop
            return type(aclient._triton)

    assert asyncio.run(made("localhost:1")) is grpcaio.InferenceServerClient
    # Several addresses (or a DNS name) get the replica layer, sync or asyncio.
    with EmbeddingClient("localhost:1,localhost:2") as client:
        assert isinstance(client._triton, ReplicatedTriton)
        assert [r.url for r in client._triton.set.replicas] == ["localhost:1", "localhost:2"]
        assert client.url == "localhost:1,localhost:2"
    assert asyncio.run(made(["localhost:1", "localhost:2"])) is AsyncReplicatedTriton


def plain_set(*urls: str, names: tuple[DnsName, ...] = ()) -> ReplicaSet:
    return ReplicaSet(list(urls), list(names), lambda u: grpcclient.InferenceServerClient(u))


def test_least_busy_then_least_recently_chosen_and_a_down_replica_skipped():
    rs = plain_set("a:1", "b:1", "c:1")
    a, _, c = rs.replicas
    # Idle: round robin.
    order = []
    for _ in range(6):
        r = rs.pick()
        order.append(r.url)
        rs.done(r)
    assert order == ["a:1", "b:1", "c:1"] * 2
    # Busy ones are passed over: a and b hold a call each, so c is chosen while they do.
    held = [rs.pick(), rs.pick()]
    assert {r.url for r in held} == {"a:1", "b:1"} and rs.pick() is c
    for r in [*held, c]:
        rs.done(r)
    # Failover: the replica that failed is excluded for the second try.
    first = rs.pick()
    second = rs.pick(exclude=[first])
    assert second is not first
    rs.done(first), rs.done(second)
    # Down: skipped while another is up; probed after PROBE_INTERVAL_S, not before.
    rs.mark_down(a, now=100.0)
    picked = {rs.pick().url for _ in range(4)}
    assert "a:1" not in picked
    for r in rs.replicas:
        r.in_flight = 0
    assert rs.due(100.0 + PROBE_INTERVAL_S / 2) == ([], False)
    assert rs.due(100.0 + PROBE_INTERVAL_S) == ([a], False)
    assert rs.due(100.0 + PROBE_INTERVAL_S) == ([], False)  # one probe at a time
    rs.probed(a, ready=True, now=102.0)
    assert a.up
    # All down: calls still go to them (readiness may be stale; a dead one refuses at once).
    for r in rs.replicas:
        rs.mark_down(r, now=200.0)
    assert rs.pick() is not None


def test_resolution_adds_new_addresses_retires_vanished_ones_and_survives_a_failed_lookup():
    rs = plain_set(names=(DnsName("svc", 8001),))
    assert rs.replicas == [] and rs.due(0.0) == ([], True)  # resolution due at once, once
    assert rs.due(0.0) == ([], False)
    rs.update(["10.0.0.1:8001", "10.0.0.2:8001"], now=0.0)
    assert [r.url for r in rs.replicas] == ["10.0.0.1:8001", "10.0.0.2:8001"]
    assert rs.due(RESOLVE_INTERVAL_S / 2) == ([], False) and rs.due(RESOLVE_INTERVAL_S)[1]
    first, second = rs.replicas
    busy = rs.pick()
    assert busy is first
    # 10.0.0.1 is gone from DNS while a call is on it: no new call goes there, it is closed when idle.
    closing = rs.update(["10.0.0.2:8001", "10.0.0.3:8001"], now=20.0)
    assert closing == [] and first.retired
    assert [r.url for r in rs.live] == ["10.0.0.2:8001", "10.0.0.3:8001"]
    assert rs.pick(exclude=[second]).url == "10.0.0.3:8001"
    assert rs.done(busy) is first.triton and first not in rs.replicas
    # A failed or empty lookup keeps what there is.
    assert rs.update(None, now=40.0) == [] and rs.update([], now=50.0) == []
    assert [r.url for r in rs.live] == ["10.0.0.2:8001", "10.0.0.3:8001"]


def test_what_counts_as_a_failed_replica():
    def err(code: str, message: str) -> EmbeddingError:
        # As tritonclient raises it: the reason is classify's reading of the status and Triton's prose.
        return EmbeddingError.from_triton(InferenceServerException(message, f"StatusCode.{code}"))

    assert replica_failed(err("UNAVAILABLE", "failed to connect to all addresses"))
    assert replica_failed(err("UNAVAILABLE", "Socket closed"))
    # A draining replica: its ensemble is being unloaded.
    assert replica_failed(err("NOT_FOUND", "Request for unknown model: 'e5' has no available versions"))
    # Busy, not gone: another replica is as busy.
    assert not replica_failed(err("UNAVAILABLE", "Exceeds maximum queue size"))
    assert not replica_failed(err("UNAVAILABLE", "Request timeout expired"))
    assert not replica_failed(err("NOT_FOUND", "Request for unknown model: 'x' is not found"))
    assert not replica_failed(err("INVALID_ARGUMENT", "text[0] is 2000000 bytes"))


def test_localhost_resolves_to_its_addresses():
    expected = {a[4][0] for a in socket.getaddrinfo("localhost", 8001, type=socket.SOCK_STREAM)}
    got = resolve([DnsName("localhost", 8001)])
    assert {u.rsplit(":", 1)[0].strip("[]") for u in got} == expected
    assert all(u.endswith(":8001") for u in got)
