"""The gateway's Prometheus metrics, served at ``GET /metrics`` (no API key: like Triton's metrics
port, it belongs on the private network; the Ingress should not route it).

One ``CollectorRegistry`` per app, so several gateways in one process (tests, ``tembed serve``)
keep their own counts. Counters the gateway already keeps (requests in flight, abandoned requests,
per-replica state) are read at scrape time rather than counted twice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# The gateway (app.Gateway) is passed in, not imported: app imports this module.
Gateway = Any

# 1 ms (a tokenize call) to 60 s (the default Triton timeout).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics:
    def __init__(self, gateway: Gateway) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tembed_gateway_requests", "HTTP requests answered, by route, served model and status.",
            ["route", "model", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "tembed_gateway_request_duration_seconds", "Time to answer a request, by route and served model.",
            ["route", "model"], buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "tembed_gateway_tokens", "Tokens embedded or scored (the responses' usage), by served model.",
            ["model"], registry=r,
        )  # fmt: skip
        self.refused = Counter(
            "tembed_gateway_overloaded", "Requests answered 429 (the gateway full, or Triton's queue).", registry=r
        )
        self.errors = Counter(
            "tembed_gateway_errors", "Requests answered with an error, by reason (contract.REASONS).", ["reason"],
            registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "tembed_gateway_triton_retries", "Triton calls retried by the client (UNAVAILABLE, RESOURCE_EXHAUSTED).",
            registry=r,
        )  # fmt: skip
        r.register(_StateCollector(gateway))
        # Labelled children by label values: ``labels()`` validates and locks on every call. The
        # values are bounded (routes, served models, statuses), so the dicts are too.
        self._answered: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._tokens: dict[str, Any] = {}

    def observe(self, route: str, model: str, status: int, seconds: float) -> None:
        children = self._answered.get((route, model, status))
        if children is None:
            children = (self.requests.labels(route, model, str(status)), self.latency.labels(route, model))
            self._answered[(route, model, status)] = children
        children[0].inc()
        children[1].observe(seconds)
        if status == 429:
            self.refused.inc()

    def count_error(self, reason: str) -> None:
        self.errors.labels(reason).inc()  # a dozen reasons: the label's values are bounded

    def count_tokens(self, model: str, tokens: int) -> None:
        child = self._tokens.get(model)
        if child is None:
            child = self._tokens[model] = self.tokens.labels(model)
        child.inc(tokens)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StateCollector(Collector):
    """What the Gateway and its ModelRegistry count themselves, read at each scrape."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def describe(self) -> list[Metric]:
        return []  # no fixed set of series: the replicas are known once the lifespan starts

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        yield GaugeMetricFamily("tembed_gateway_requests_in_flight", "Requests being answered.", value=gw.in_flight)
        yield CounterMetricFamily(
            "tembed_gateway_abandoned_requests", "Requests whose caller disconnected first.", value=gw.abandoned
        )
        registry = gw._registry
        if registry is None:
            return
        yield CounterMetricFamily(
            "tembed_gateway_triton_failovers", "Requests sent again to another replica.", value=registry.failovers
        )
        up = GaugeMetricFamily("tembed_gateway_triton_replica_up", "1: the replica is ready.", labels=["replica"])
        busy = GaugeMetricFamily(
            "tembed_gateway_triton_replica_in_flight", "Requests in flight on the replica.", labels=["replica"]
        )
        sent = CounterMetricFamily(
            "tembed_gateway_triton_replica_requests", "Requests sent to the replica.", labels=["replica"]
        )
        failed = CounterMetricFamily(
            "tembed_gateway_triton_replica_failures", "Requests that failed on the replica as unreachable.",
            labels=["replica"],
        )  # fmt: skip
        for replica in registry.replicas:
            up.add_metric([replica.url], 1.0 if replica.up else 0.0)
            busy.add_metric([replica.url], replica.in_flight)
            sent.add_metric([replica.url], replica.requests)
            failed.add_metric([replica.url], replica.failures)
        yield from (up, busy, sent, failed)
