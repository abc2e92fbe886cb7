"""``GET /metrics``: Prometheus text of a real ``barge serve``, counting what a batch
sends, the upstreams' gauges and the unfinished batches; ``--metrics-key`` guards it."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from api.support import chat_line, upload, wait_for, wait_terminal
from barge_process import BargeProcess
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from upstream import UpstreamConfig, UpstreamServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(proc: BargeProcess, headers: dict[str, str] | None = None) -> Samples:
    r = httpx.get(f"http://127.0.0.1:{proc.port}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_batch_is_counted(shared_barge: BargeProcess,
                            connect: Callable[..., OpenAI]) -> None:
    client = connect(shared_barge)
    lines = [chat_line(f"r{i}") for i in range(5)]
    lines.append(chat_line("retried", status=500, fail_times=1, key="metrics-retried"))
    lines.append(chat_line("refused", status=400))
    before = scrape(shared_barge)
    f = upload(client, lines)
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    assert wait_terminal(client, batch.id).status == "completed"

    after = scrape(shared_barge)
    labels = {"endpoint": "/v1/chat/completions", "model": "gpt-test"}
    done = (value(after, "barge_requests_total", **labels, outcome="completed")
            - value(before, "barge_requests_total", **labels, outcome="completed"))
    failed = (value(after, "barge_requests_total", **labels, outcome="failed")
              - value(before, "barge_requests_total", **labels, outcome="failed"))
    assert (done, failed) == (6, 1)
    assert value(after, "barge_upstream_retries_total", upstream="default", reason="500") >= 1
    attempts = value(after, "barge_upstream_request_duration_seconds_count",
                     upstream="default")
    assert attempts >= 8  # 7 lines, one of them twice
    # The upstream gauges, one per upstream, read at scrape time.
    assert value(after, "barge_upstream_requests_in_flight", upstream="default") == 0
    assert value(after, "barge_upstream_concurrency_limit", upstream="default") >= 1
    assert ("barge_batches", frozenset({("status", "in_progress")})) in after


def test_batches_gauge_follows_a_slow_batch(
        barge_factory: Callable[..., BargeProcess]) -> None:
    with UpstreamServer.in_thread(UpstreamConfig(latency=0.3, capacity=1)) as up:
        proc = barge_factory(up.base_url, "--backoff-base", "0.01")
        client = proc.client()
        try:
            f = upload(client, [chat_line(f"s{i}") for i in range(6)])
            batch = client.batches.create(input_file_id=f.id,
                                          endpoint="/v1/chat/completions",
                                          completion_window="24h")

            def in_progress() -> Samples | None:
                s = scrape(proc)
                return s if value(s, "barge_batches", status="in_progress") == 1 else None

            running = wait_for(in_progress, what="the batch in progress")
            pending = value(running, "barge_pending_requests", model="gpt-test",
                            completion_window="24h")
            assert 0 < pending <= 6
            wait_terminal(client, batch.id)
            done = scrape(proc)
            assert value(done, "barge_batches", status="in_progress") == 0
            assert value(done, "barge_requests_total", endpoint="/v1/chat/completions",
                         model="gpt-test", outcome="completed") == 6
        finally:
            client.close()


def test_metrics_key(barge_factory: Callable[..., BargeProcess],
                     shared_upstream: UpstreamServer) -> None:
    proc = barge_factory(shared_upstream.base_url, "--metrics-key", "sk-metrics")
    url = f"http://127.0.0.1:{proc.port}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.get(url, headers=headers, timeout=10)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "invalid_request_error"
    samples = scrape(proc, {"Authorization": "Bearer sk-metrics"})
    assert ("barge_upstream_concurrency_limit",
            frozenset({("upstream", "default")})) in samples


def test_batch_queue_seconds_counts_each_batch_once(
        barge_factory: Callable[..., BargeProcess]) -> None:
    """Observed as a batch begins to be dispatched (so already while it runs), once per
    batch, with the seconds since its creation."""
    with UpstreamServer.in_thread(UpstreamConfig(latency=0.3, capacity=1)) as up:
        proc = barge_factory(up.base_url, "--backoff-base", "0.01")
        client = proc.client()
        try:
            before = scrape(proc)
            assert value(before, "barge_batch_queue_seconds_count") == 0
            assert ("barge_batch_queue_seconds_bucket", frozenset({("le", "+Inf")})) in before
            f = upload(client, [chat_line(f"q{i}") for i in range(4)])
            batch = client.batches.create(input_file_id=f.id,
                                          endpoint="/v1/chat/completions",
                                          completion_window="24h")

            def observed() -> Samples | None:
                s = scrape(proc)
                return s if value(s, "barge_batch_queue_seconds_count") == 1 else None

            running = wait_for(observed, what="the batch's wait observed")
            assert value(running, "barge_batches", status="in_progress") == 1
            waited = value(running, "barge_batch_queue_seconds_sum")
            assert 0 < waited < 10, waited
            assert value(running, "barge_batch_queue_seconds_bucket", le="+Inf") == 1
            wait_terminal(client, batch.id)
            second = client.batches.create(input_file_id=f.id,
                                           endpoint="/v1/chat/completions",
                                           completion_window="24h")
            wait_terminal(client, second.id)
            after = scrape(proc)
            assert value(after, "barge_batch_queue_seconds_count") == 2
            assert value(after, "barge_batch_queue_seconds_sum") > waited
        finally:
            client.close()
