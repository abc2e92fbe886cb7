"""Prometheus metrics for ``GET /metrics``, in a registry of their own per App (tests run
several Apps in one process). Counters and the latency histogram are fed by the
dispatcher; gauges of the upstreams, the sender processes and unfinished batches are read
at scrape time."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from barge.domain.models import BatchRecord
from barge.domain.status import OpenAIStatus, project
from barge.engine.router import Router
from barge.store.protocol import Store
from barge.upstreams.senders import SenderPool

# The OpenAI statuses an unfinished batch can show: always reported, 0 when none.
LIVE_STATUSES = (OpenAIStatus.VALIDATING, OpenAIStatus.IN_PROGRESS,
                 OpenAIStatus.FINALIZING, OpenAIStatus.CANCELLING)

WEBHOOK_OUTCOMES = ("delivered", "failed", "given_up")  # of barge_webhook_deliveries_total
MAX_SERIES = 1000  # (endpoint, model, outcome) series of barge_requests_total
OTHER_MODEL = "(other)"  # the model label of requests past MAX_SERIES

# Seconds: one attempt, from a quick embedding to a long generation.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0)
# Seconds a batch waits before its requests are sent: from an idle server's fraction of
# a second to a day-long window's queue.
QUEUE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0,
                 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)


class _ScrapeCollector(Collector):
    """Gauges computed when scraped: each upstream's in-flight requests and AIMD limit,
    the sender processes (running, and exits so far), and the unfinished batches (read
    by ``Metrics.render`` just before)."""

    def __init__(self, router: Router | None, senders: SenderPool | None) -> None:
        self.router = router
        self.senders = senders
        self.batches: Sequence[BatchRecord] = ()
        self.webhooks_pending = 0  # webhook deliveries pending or failing, cluster-wide

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
        if self.senders is not None:
            yield GaugeMetricFamily("barge_sender_processes",
                                    "Sender processes running (--dispatch-processes).",
                                    value=len(self.senders.pids))
            yield CounterMetricFamily("barge_sender_exits",
                                      "Sender processes that died or were killed as stuck "
                                      "(each is replaced).", value=self.senders.exits)
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
        yield GaugeMetricFamily("barge_webhook_deliveries_pending",
                                "Webhook deliveries not yet made (pending or failing), "
                                "of every node.", value=self.webhooks_pending)


class Metrics:
    def __init__(self, router: Router | None = None,
                 senders: SenderPool | None = None) -> None:
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
        self._queue = Histogram(
            "barge_batch_queue_seconds",
            "Seconds from a batch's creation to the start of its processing (its first "
            "dispatch), once per batch.",
            buckets=QUEUE_BUCKETS, registry=self.registry)
        self._webhooks = Counter(
            "barge_webhook_deliveries", "Webhook delivery attempts recorded by this node, by "
            "outcome: delivered, failed (to be tried again) or given_up.",
            ["outcome"], registry=self.registry)
        for outcome in WEBHOOK_OUTCOMES:
            self._webhooks.labels(outcome)
        self._scrape = _ScrapeCollector(router, senders)
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

    def batch_queued(self, seconds: float) -> None:
        """A batch's requests begin to be sent, ``seconds`` after it was created.

        Observed once per batch, by the engine of the node that moved it from validating
        to processing, as that node begins to dispatch it (``Engine._process``): the move
        is a compare-and-set in the store, so exactly one node makes it, and nothing is
        counted again when a batch resumes after a restart or other nodes join in on
        leases. The moment is the start of processing rather than the first request
        leaving for the upstream: between the two lies only the queueing of the batch's
        first lines in its lane (the pool serves a new lane within about one request's
        time), and catching the very first send would put a check on every request's
        path and need the nodes to agree on which one was first. What the histogram
        shows is the wait that matters: for an active slot (``--max-active-batches``),
        the hash check and validation."""
        self._queue.observe(seconds)

    def webhook_delivery(self, outcome: str) -> None:
        """A webhook delivery attempt was recorded: ``outcome`` is one of
        ``WEBHOOK_OUTCOMES``."""
        self._webhooks.labels(outcome).inc()

    async def render(self, store: Store) -> bytes:
        """The text exposition of every metric, the batch and webhook gauges read from
        ``store``."""
        self._scrape.batches = await store.unfinished_batches()
        self._scrape.webhooks_pending = await store.pending_webhook_deliveries()
        try:
            return generate_latest(self.registry)
        finally:
            self._scrape.batches = ()
