"""Prometheus metrics of one gateway: requests, stage latencies, provider keys, cache, streams."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tornado_imagegate.images.cache import ImageCache

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 180, 300)
_REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180)


class _CacheCollector(Collector):
    """Reads the image cache's counters at scrape time (no bookkeeping on the hot path)."""

    def __init__(self, cache: ImageCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator:
        """The cache's figures now."""
        cache = self.cache
        for name, doc, value in (
            ("imagegate_image_cache_hits", "Image cache hits (memory or disk).", cache.hits),
            ("imagegate_image_cache_misses", "Image cache misses.", cache.misses),
            ("imagegate_image_cache_evictions", "Images evicted from memory.", cache.evictions),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "imagegate_image_cache_bytes",
            "Bytes of images held in memory.",
            value=cache.current_bytes,
        )
        yield GaugeMetricFamily(
            "imagegate_image_cache_items", "Images held in memory.", value=len(cache)
        )
        for tier in cache.tiers:
            yield GaugeMetricFamily(
                f"imagegate_image_{tier.name}_cache_bytes",
                f"Bytes of images held on {tier.name}.",
                value=tier.current_bytes,
            )
            yield CounterMetricFamily(
                f"imagegate_image_{tier.name}_cache_evictions",
                f"Images evicted from {tier.name}.",
                value=tier.evictions,
            )


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

    def watch_cache(self, cache: ImageCache) -> None:
        """Report this image cache's figures."""
        self.registry.register(_CacheCollector(cache))

    def key_rested(self, group: str, reason: str) -> None:
        """A provider key failed and was put to rest."""
        self.key_failures.labels(group, reason).inc()
        self.key_cooldowns.labels(group).inc()

    def render(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)
