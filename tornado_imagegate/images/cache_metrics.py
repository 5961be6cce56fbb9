"""The image cache's figures in ``/metrics``: memory and each tier, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tornado_imagegate.images.cache import ImageCache


class CacheCollector(Collector):
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
