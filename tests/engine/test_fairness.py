"""Acceptance: fair dispatch across accounts, against a real ``barge serve`` driven by the
``openai`` SDK. One account with many slow batches must not starve another account's
small batch: slots go per account first (``--max-active-batches-per-account``, a global
``--max-active-batches`` that an account with none running may pass), and the workers
take requests round-robin across accounts, then across each account's batches."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from api.keys_support import api_key, unique
from api.support import CHAT, chat_line, upload, wait_terminal
from barge_process import BargeProcess
from openai import OpenAI
from upstream import UpstreamServer

SLOW = 2.0  # seconds each of the hogging account's requests takes upstream
QUICK = 6.0  # seconds within which the other account's one-line batch must complete


def _slow_batches(client: OpenAI, prefix: str, n: int, lines: int = 4) -> list[str]:
    ids = []
    for i in range(n):
        f = upload(client, [chat_line(f"{prefix}{i}-{j}", delay=SLOW) for j in range(lines)])
        ids.append(client.batches.create(input_file_id=f.id, endpoint=CHAT,
                                         completion_window="24h").id)
    return ids


def _barge_status(client: OpenAI, batch_ids: list[str]) -> list[str]:
    """Fine-grained statuses of ``batch_ids``, in that order."""
    found: dict[str, Any] = {}
    for b in client.batches.list(limit=100):
        found[b.id] = b
    statuses = []
    for batch_id in batch_ids:
        extra = found[batch_id].model_extra or {}
        statuses.append(str(extra["barge_status"]))
    return statuses


def _running(statuses: list[str]) -> int:
    """How many batches are under way (neither waiting as ``new`` nor finished). Those
    that left ``new`` must be the oldest: an account's batches start in creation order."""
    started = sum(s != "new" for s in statuses)
    assert all(s != "new" for s in statuses[:started]), statuses
    return sum(s not in ("new", "completed") for s in statuses)


def _time_one_line_batch(client: OpenAI, custom_id: str) -> float:
    f = upload(client, [chat_line(custom_id)])
    started = time.monotonic()
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    done = wait_terminal(client, b.id, timeout=QUICK + 10)
    took = time.monotonic() - started
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.completed == 1, done
    return took


def _wait_busy(upstream: UpstreamServer, at_least: int) -> None:
    deadline = time.monotonic() + 15
    while upstream.stats.in_flight < at_least:
        assert time.monotonic() < deadline, "the slow batches never reached the upstream"
        time.sleep(0.02)


def test_one_line_batch_of_a_new_account_overtakes_seventy_slow_batches(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    """The issue's case with the defaults: account A has more slow batches than the old
    global limit of 64 active batches; B's one-line batch completes within seconds."""
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "8",
                         "--backoff-base", "0.01")
    _, key_a = api_key(proc, "member", unique("hog"))
    _, key_b = api_key(proc, "member", unique("small"))
    a, b = proc.client(key_a), proc.client(key_b)
    a_ids = _slow_batches(a, "a", 70)
    _wait_busy(upstream, 4)

    took = _time_one_line_batch(b, "b-0")
    statuses = _barge_status(a, a_ids)
    print(f"B's batch completed in {took:.2f}s; A's statuses: {statuses}")
    assert took < QUICK, f"B waited {took:.1f}s behind A's batches"
    # A is far from done: B really overtook it.
    assert sum(s != "completed" for s in statuses) > 50, statuses
    # At most 16 (the default per account) of A's batches run, the oldest ones; the
    # rest wait as ``new``, which the OpenAI status shows as validating.
    assert 1 <= _running(statuses) <= 16
    assert statuses[-1] == "new"
    assert a.batches.retrieve(a_ids[-1]).status == "validating"


def test_per_account_and_global_caps(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    """``--max-active-batches-per-account 2 --max-active-batches 3``: A gets 2 slots and
    C the last one; B, with none running, still starts at once and completes; a waiting
    batch of A is cancelled at once."""
    proc = barge_factory(upstream.base_url, "--upstream-concurrency", "8",
                         "--backoff-base", "0.01", "--max-active-batches", "3",
                         "--max-active-batches-per-account", "2")
    _, key_a = api_key(proc, "member", unique("a"))
    _, key_b = api_key(proc, "member", unique("b"))
    _, key_c = api_key(proc, "member", unique("c"))
    a, b, c = proc.client(key_a), proc.client(key_b), proc.client(key_c)
    a_ids = _slow_batches(a, "a", 5)
    c_ids = _slow_batches(c, "c", 3)
    _wait_busy(upstream, 4)

    took = _time_one_line_batch(b, "b-0")
    a_status, c_status = _barge_status(a, a_ids), _barge_status(c, c_ids)
    print(f"B's batch completed in {took:.2f}s; A {a_status}; C {c_status}")
    assert took < QUICK, f"B waited {took:.1f}s behind A's and C's batches"
    assert 1 <= _running(a_status) <= 2, a_status  # the per-account cap
    assert _running(c_status) >= 1, c_status  # C got a slot although A was first
    assert _running(a_status) + _running(c_status) <= 3, (a_status, c_status)  # global
    assert a.batches.retrieve(a_ids[-1]).status == "validating"
    # Cancelling a batch that waits for a slot needs no slot: it ends at once.
    started = time.monotonic()
    a.batches.cancel(a_ids[-1])
    cancelled = wait_terminal(a, a_ids[-1], timeout=QUICK + 10)
    assert cancelled.status == "cancelled", cancelled
    assert time.monotonic() - started < QUICK
