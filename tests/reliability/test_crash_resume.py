"""kill -9 of the real barge process at several points of one batch; after each restart on
the same data dir the batch carries on, and in the end every custom_id is in the output
exactly once and the counts equal the file's lines."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from barge_process import BargeProcess
from openai.types import Batch
from upstream import UpstreamServer

N = 3000
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _input(n: int) -> bytes:
    return b"".join(
        orjson.dumps({"custom_id": f"c-{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "m", "messages": [{"role": "user", "content": str(i)}]}})
        + b"\n"
        for i in range(n)
    )


def _wait(proc: BargeProcess, batch_id: str, until: Callable[[Batch], bool],
          timeout: float = 60.0) -> Batch:
    client = proc.client()
    deadline = time.monotonic() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if until(b) or b.status in TERMINAL:
            return b
        assert time.monotonic() < deadline, f"timed out waiting; last state {b}"
        time.sleep(0.01)


def _done(b: Batch) -> int:
    return b.request_counts.completed + b.request_counts.failed if b.request_counts else 0


def test_kill_9_at_many_points_loses_and_duplicates_nothing(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    upstream.config.latency = 0.004  # about 16 / 0.004 = 4,000 req/s at most: a few seconds
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "16")
    client = proc.client()
    f = client.files.create(file=("in.jsonl", _input(N)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")

    kill_points: list[tuple[str, Callable[[Batch], bool]]] = [
        ("right after create", lambda b: True),
        ("in progress, early", lambda b: _done(b) >= N // 10),
        ("in progress, middle", lambda b: _done(b) >= N // 2),
        ("in progress, late", lambda b: _done(b) >= N * 9 // 10),
        ("finalizing or done", lambda b: b.status in ("finalizing", "completed")),
    ]
    seen_states = []
    for name, point in kill_points:
        b = _wait(proc, batch.id, point)
        seen_states.append((name, b.status, _done(b)))
        proc.kill()
        proc.restart()

    final = _wait(proc, batch.id, lambda b: b.status in TERMINAL)
    assert final.status == "completed", (final, seen_states)
    assert final.request_counts is not None
    assert final.request_counts.total == N
    assert final.request_counts.completed == N, (final, seen_states)
    assert final.request_counts.failed == 0
    assert final.output_file_id is not None
    rows = [orjson.loads(r) for r in client.files.content(final.output_file_id).read().splitlines()]
    ids = Counter(r["custom_id"] for r in rows)
    assert len(rows) == N
    assert set(ids) == {f"c-{i}" for i in range(N)}
    assert max(ids.values()) == 1
    # Token usage is counted exactly once too: it equals the sum over the output file.
    assert final.usage is not None
    assert final.usage.input_tokens == sum(r["response"]["body"]["usage"]["prompt_tokens"]
                                           for r in rows)
    assert final.usage.output_tokens == sum(
        r["response"]["body"]["usage"]["completion_tokens"] for r in rows)
    # At-least-once to the upstream: only requests in flight or not yet committed at a
    # kill are sent again; the batch never starts over.
    assert N <= upstream.stats.total < N + N // 2
    assert max(upstream.stats.bodies.values()) <= 1 + len(kill_points)
    # The store and the file agree after every restart.
    assert client.files.retrieve(final.output_file_id).bytes == sum(
        len(r) + 1 for r in client.files.content(final.output_file_id).read().splitlines()
    )


@pytest.mark.parametrize("senders", [0, 2])
def test_sigterm_finishes_in_flight_requests_and_exits_zero(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer, senders: int
) -> None:
    """With sender processes too: SIGTERM sent to them as well (as a service manager
    signals the whole group) lets the engine drain through them; none is left after."""
    upstream.config.latency = 0.3
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "8",
                         "--shutdown-grace", "10", "--dispatch-processes", str(senders))
    assert proc.proc is not None
    helpers = [int(c) for c in Path(f"/proc/{proc.proc.pid}/task/{proc.proc.pid}/children")
               .read_text().split()]
    assert len(helpers) == senders
    client = proc.client()
    f = client.files.create(file=("in.jsonl", _input(200)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    _wait(proc, batch.id, lambda b: _done(b) >= 8)
    for pid in helpers:
        os.kill(pid, signal.SIGTERM)
    assert proc.terminate(timeout=30) == 0
    for pid in helpers:  # gone, and reaped by the server before it exited
        assert not Path(f"/proc/{pid}").exists()
    sent_before_restart = upstream.stats.total
    stopped = proc.restart().client().batches.retrieve(batch.id)
    # Every request that reached the upstream before SIGTERM got its result recorded.
    assert _done(stopped) == sent_before_restart
    final = _wait(proc, batch.id, lambda b: b.status in TERMINAL, timeout=60)
    assert final.status == "completed"
    assert upstream.stats.total == 200  # nothing was sent twice


def test_kill_9_mid_validation_and_mid_writing_results(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    """A big file (validation and writing results take a while): kill once while the
    engine validates and once while it writes the output file."""
    n = 30_000
    pad = "p" * 900
    data = b"".join(
        orjson.dumps({"custom_id": f"v-{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "m", "messages": [{"role": "user", "content": pad}]}})
        + b"\n"
        for i in range(n)
    )
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "64")
    client = proc.client(timeout=120)
    f = client.files.create(file=("big.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    hit = []
    b = _wait(proc, batch.id, lambda b: b.status == "validating")
    proc.kill()
    hit.append(getattr(b, "barge_status", None))
    proc.restart()
    b = _wait(proc, batch.id, lambda b: b.status == "finalizing", timeout=120)
    proc.kill()
    hit.append(getattr(b, "barge_status", None))
    proc.restart()

    final = _wait(proc, batch.id, lambda b: b.status in TERMINAL, timeout=120)
    print("fine-grained statuses at the kills:", hit)
    assert final.status == "completed", (final, hit)
    assert final.request_counts is not None
    assert (final.request_counts.total, final.request_counts.completed) == (n, n), hit
    assert final.output_file_id is not None
    rows = client.files.content(final.output_file_id).read().splitlines()
    ids = Counter(orjson.loads(r)["custom_id"] for r in rows)
    assert len(rows) == n and len(ids) == n, hit
    # Writing results again after the kill published the same file, not a second one.
    outputs = [x for x in client.files.list(purpose="batch_output").data]
    assert [x.id for x in outputs] == [final.output_file_id]
