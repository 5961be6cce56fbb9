"""Prometheus metrics of one gateway: requests, stage latencies, provider keys, cache, streams."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 180, 300)
_REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180)


class Metrics:
    """Every metric of one application, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imagegate_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "imagegate_http_request_duration_seconds",
            "Time to answer HTTP requests, by route.",
            ["route"],
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "imagegate_stage_duration_seconds",
            "Time spent in each stage: prompt optimisation, generation, image fetch.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.key_failures = Counter(
            "imagegate_provider_key_failures",
            "Provider key failures, by group and reason.",
            ["group", "reason"],
            registry=self.registry,
        )
        self.key_cooldowns = Counter(
            "imagegate_provider_key_cooldowns",
            "Provider keys put to rest, by group.",
            ["group"],
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], tuple] = {}
        self.streams_open = Gauge(
            "imagegate_streams_open",
            "Streaming chat completions open now.",
            registry=self.registry,
        )

    def count_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request (labelled children are looked up once and kept)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.request_seconds.labels(route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def watch(self, collector: Collector) -> None:
        """Report a subsystem's own figures, read at scrape time (the image cache's, say)."""
        self.registry.register(collector)

    def key_rested(self, group: str, reason: str) -> None:
        """A provider key failed and was put to rest."""
        self.key_failures.labels(group, reason).inc()
        self.key_cooldowns.labels(group).inc()

    def render(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)
