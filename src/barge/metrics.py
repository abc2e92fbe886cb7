"""Prometheus metrics for ``GET /metrics``, in a registry of their own per App (tests run
several Apps in one process). Counters and the latency histogram are fed by the
dispatcher; gauges of the upstreams and of unfinished batches are read at scrape time."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from barge.domain.models import BatchRecord
from barge.domain.status import OpenAIStatus, project
from barge.engine.router import Router
from barge.store.protocol import Store

# The OpenAI statuses an unfinished batch can show: always reported, 0 when none.
LIVE_STATUSES = (OpenAIStatus.VALIDATING, OpenAIStatus.IN_PROGRESS,
                 OpenAIStatus.FINALIZING, OpenAIStatus.CANCELLING)

MAX_SERIES = 1000  # (endpoint, model, outcome) series of barge_requests_total
OTHER_MODEL = "(other)"  # the model label of requests past MAX_SERIES

# Seconds: one attempt, from a quick embedding to a long generation.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0)


class _ScrapeCollector(Collector):
    """Gauges computed when scraped: each upstream's in-flight requests and AIMD limit,
    and the unfinished batches (read by ``Metrics.render`` just before)."""

    def __init__(self, router: Router | None) -> None:
        self.router = router
        self.batches: Sequence[BatchRecord] = ()

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily("barge_upstream_requests_in_flight",
                                      "Requests being sent to the upstream now.",
                                      labels=["upstream"])
        limit = GaugeMetricFamily("barge_upstream_concurrency_limit",
                                  "The upstream's adaptive (AIMD) concurrency limit.",
                                  labels=["upstream"])
        for route in self.router.routes if self.router is not None else ():
            in_flight.add_metric([route.name], route.limiter.in_flight)
            limit.add_metric([route.name], route.limiter.limit)
        yield in_flight
        yield limit
        statuses: Tally[str] = Tally({s.value: 0 for s in LIVE_STATUSES})
        pending: Tally[tuple[str, str]] = Tally()
        for b in self.batches:
            statuses[project(b.status).value] += 1
            key = (b.model or "", b.completion_window)
            pending[key] += max(0, b.total - b.completed - b.failed)
        batches = GaugeMetricFamily("barge_batches", "Unfinished batches, by status.",
                                    labels=["status"])
        for status, n in statuses.items():
            batches.add_metric([status], n)
        yield batches
        waiting = GaugeMetricFamily("barge_pending_requests",
                                    "Requests of unfinished batches without a result yet.",
                                    labels=["model", "completion_window"])
        for (model, window), n in pending.items():
            waiting.add_metric([model, window], n)
        yield waiting


class Metrics:
    def __init__(self, router: Router | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "barge_requests", "Requests that got their final result.",
            ["endpoint", "model", "outcome"], registry=self.registry)
        self._retries = Counter(
            "barge_upstream_retries", "Attempts that will be tried again, by reason.",
            ["upstream", "reason"], registry=self.registry)
        self._duration = Histogram(
            "barge_upstream_request_duration_seconds", "Duration of each upstream attempt.",
            ["upstream"], buckets=DURATION_BUCKETS, registry=self.registry)
        self._scrape = _ScrapeCollector(router)
        self.registry.register(self._scrape)
        # Label children, cached: ``.labels()`` on every request costs a lock and a tuple.
        self._request_children: dict[tuple[str, str, bool], Counter] = {}
        self._retry_children: dict[tuple[str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}

    def finished(self, endpoint: str, model: str, ok: bool) -> None:
        """A request got its final result (an output line when ``ok``, else an error)."""
        key = (endpoint, model, ok)
        child = self._request_children.get(key)
        if child is None:
            if len(self._request_children) >= MAX_SERIES:
                # Model names come from the batches: past this many series they share
                # one, so no client can grow the scrape (or this process) without end.
                key = (endpoint, OTHER_MODEL, ok)
                child = self._request_children.get(key)
            if child is None:
                child = self._requests.labels(key[0], key[1],
                                              "completed" if ok else "failed")
                self._request_children[key] = child
        child.inc()

    def retried(self, upstream: str, reason: str) -> None:
        """An attempt on ``upstream`` will be tried again (``reason``: its HTTP status,
        "timeout" or "connection")."""
        key = (upstream, reason)
        child = self._retry_children.get(key)
        if child is None:
            child = self._retries.labels(upstream, reason)
            self._retry_children[key] = child
        child.inc()

    def attempt(self, upstream: str, seconds: float) -> None:
        """One attempt on ``upstream`` took ``seconds``."""
        child = self._duration_children.get(upstream)
        if child is None:
            child = self._duration.labels(upstream)
            self._duration_children[upstream] = child
        child.observe(seconds)

    async def render(self, store: Store) -> bytes:
        """The text exposition of every metric, the batch gauges read from ``store``."""
        self._scrape.batches = await store.unfinished_batches()
        try:
            return generate_latest(self.registry)
        finally:
            self._scrape.batches = ()
