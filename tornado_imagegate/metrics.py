"""Prometheus metrics of one gateway: requests, stage latencies, provider keys, cache, streams.

With several worker processes every metric lives in files that the workers share
(prometheus_client's multiprocess mode), and any worker's ``/metrics`` reports the sum of all.
"""

from __future__ import annotations

import asyncio
import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 180, 300)
_REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180)
SHARED_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def share_between_processes(directory: str) -> None:
    """Keep every metric made from now on in ``directory``, where processes forked later add up.

    prometheus_client picks its value class once, when imported, from this variable; the
    supervisor decides after that import, so the choice is made again here, before any metric.
    """
    os.environ[SHARED_DIR_VARIABLE] = directory
    values.ValueClass = values.get_value_class()


def forget_process(pid: int) -> None:
    """A worker has exited: its gauges no longer count (its counters still do)."""
    multiprocess.mark_process_dead(pid, os.environ[SHARED_DIR_VARIABLE])


def shared_directory() -> str:
    """The directory that processes share metrics through, or "" when this process is alone."""
    return os.environ.get(SHARED_DIR_VARIABLE, "")


class Metrics:
    """Every metric of one application, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # With workers, figures read at scrape time are copied into shared metrics (``_Mirror``),
        # and a scrape reads what every worker wrote.
        self.shared_dir = shared_directory()
        self._mirrors: list[_Mirror] = []
        self._publish_pending = False
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
        self._request_tallies: dict[tuple[str, str, int], _RequestTally] = {}
        self._stage_children: dict[str, Histogram] = {}
        self.streams_open = Gauge(
            "imagegate_streams_open",
            "Streaming chat completions open now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )

    def count_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request (labelled children are looked up once and kept).

        The request counter is brought up to date when it is read (a scrape) or shared (once
        per turn of the event loop, with workers), not once per request.
        """
        key = (route, method, status)
        tally = self._request_tallies.get(key)
        if tally is None:
            tally = _RequestTally(
                self.requests.labels(route, method, str(status)),
                self.request_seconds.labels(route),
            )
            self._request_tallies[key] = tally
        tally.uncounted += 1
        tally.seconds.observe(seconds)
        if self.shared_dir and not self._publish_pending:
            # Requests are what change the shared figures. Copied once per turn of the event
            # loop, after the requests it answered (about 25 us a copy): before the next request
            # is read, so a scrape that follows an answer finds it counted.
            self._publish_pending = True
            asyncio.get_running_loop().call_soon(self._publish)

    def _add_uncounted(self) -> None:
        """Add the requests answered since the last call to the request counter."""
        for tally in self._request_tallies.values():
            if tally.uncounted:
                uncounted, tally.uncounted = tally.uncounted, 0
                tally.counter.inc(uncounted)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """How long a stage took (its labelled child is looked up once and kept)."""
        child = self._stage_children.get(stage)
        if child is None:
            child = self._stage_children[stage] = self.stage_seconds.labels(stage)
        child.observe(seconds)

    def _publish(self) -> None:
        self._publish_pending = False
        self._add_uncounted()
        for mirror in self._mirrors:
            mirror.publish()

    def watch(self, collector: Collector) -> None:
        """Report a subsystem's own figures, read at scrape time (the image cache's, say)."""
        if self.shared_dir:
            self._mirrors.append(_Mirror(collector, self.registry))
            self._mirrors[-1].publish()
        else:
            self.registry.register(collector)

    def key_rested(self, group: str, reason: str) -> None:
        """A provider key failed and was put to rest."""
        self.key_failures.labels(group, reason).inc()
        self.key_cooldowns.labels(group).inc()

    def render(self) -> bytes:
        """The Prometheus text format: this process's figures, or the sum of every worker's."""
        if not self.shared_dir:
            self._add_uncounted()
            return generate_latest(self.registry)
        self._publish()
        every_worker = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_worker, self.shared_dir)
        return generate_latest(every_worker)


class _RequestTally:
    """The labelled request counter and latency histogram of one route, method and status, and
    the answers not yet added to the counter."""

    __slots__ = ("counter", "seconds", "uncounted")

    def __init__(self, counter: Counter, seconds: Histogram) -> None:
        self.counter = counter
        self.seconds = seconds
        self.uncounted = 0


class _Mirror:
    """Copies a scrape-time collector's figures into metrics the workers share.

    Counters grow by what they grew since the last copy (a worker's share outlives it, as a
    counter must never go down); gauges are set, and count while their worker lives.
    """

    def __init__(self, collector: Collector, registry: CollectorRegistry) -> None:
        self.collector = collector
        self.registry = registry
        self.metrics: dict[str, Counter | Gauge] = {}
        self.published: dict[tuple[str, tuple[str, ...]], float] = {}

    def publish(self) -> None:
        """Copy every figure that changed since the last call."""
        for family in self.collector.collect():
            for sample in family.samples:
                if family.type == "counter" and not sample.name.endswith("_total"):
                    continue  # a ``_created`` timestamp: not summable
                labels = tuple(sample.labels.values())
                key = (family.name, labels)
                if self.published.get(key) == sample.value:
                    continue
                last = self.published.get(key, 0.0)
                self.published[key] = sample.value
                metric = self._metric(family.name, family.type, family.documentation, sample)
                child = metric.labels(*labels) if labels else metric
                if isinstance(child, Counter):
                    child.inc(max(0.0, sample.value - last))
                else:
                    child.set(sample.value)

    def _metric(self, name: str, kind: str, documentation: str, sample: Sample) -> Counter | Gauge:
        metric = self.metrics.get(name)
        if metric is None:
            labelnames = tuple(sample.labels)
            if kind == "counter":
                metric = Counter(name, documentation, labelnames, registry=self.registry)
            else:
                metric = Gauge(
                    name,
                    documentation,
                    labelnames,
                    registry=self.registry,
                    multiprocess_mode="livesum",
                )
            self.metrics[name] = metric
        return metric
