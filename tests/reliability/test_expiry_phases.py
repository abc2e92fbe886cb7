"""Acceptance: a completion window that ends in any phase — queued as ``new``, before or
during validation (also across kill -9), or while requests run — ends the batch
``expired`` with every request line of its input exactly once: in the output file when it
had a result, else in the error file as ``batch_expired``; ``request_counts.total`` is the
number of requests. A file with a bad line fails validation even when its window has ended
(the failure says more than the expiry), and a batch whose window ended before it was
validated sends nothing.

Windows of a few seconds come from ``--completion-windows 24h,2s``; a batch is held in
``new`` past its window by ``--max-active-batches-per-account 1`` and a slow batch of the
same account that holds the slot."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from api.support import CHAT, chat_line, to_jsonl, upload, wait_status, wait_terminal
from barge_process import BargeProcess
from openai import OpenAI
from openai.types import Batch
from upstream import UpstreamServer

WINDOWS = ("--completion-windows", "24h,2s,1s")
QUEUED = (*WINDOWS, "--max-active-batches-per-account", "1", "--max-attempts", "100")
BIG = ("--max-requests", "200000")
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _barge_status(b: Batch) -> str:
    return str((b.model_extra or {})["barge_status"])


def _lines(prefix: str, n: int, **mock: Any) -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}-{i}", key=f"{prefix}-{i}", **mock) for i in range(n)]


def _big_input(prefix: str, n: int) -> bytes:
    """``n`` small requests (a few MB per 10,000), each answered 503 with Retry-After 3 s,
    so none can finish inside a short window, with a blank line every 1,000."""
    out = bytearray()
    for i in range(n):
        out += orjson.dumps({
            "custom_id": f"{prefix}-{i}", "method": "POST", "url": CHAT,
            "body": {"model": "m", "messages": [{"role": "user", "content": "x"}],
                     "x_mock": {"status": 503, "retry_after": 3}},
        })
        out += b"\n\n" if i % 1000 == 999 else b"\n"
    return bytes(out)


def _hold_the_slot(client: OpenAI, upstream: UpstreamServer) -> str:
    """A batch that keeps its account's only slot (with the per-account cap at 1): its
    requests are answered 503, Retry-After 5 s, for as many attempts as it gets."""
    f = upload(client, _lines("hold", 2, status=503, retry_after=5))
    b = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 15
    while len(upstream.stats.keys) < 2:
        assert time.monotonic() < deadline, "the slot holder never reached the upstream"
        time.sleep(0.02)
    return b.id


def _error_ids(client: OpenAI, b: Batch) -> Counter[str]:
    """custom_id -> times in the error file; every line there is batch_expired."""
    assert b.error_file_id is not None, b
    counts: Counter[str] = Counter()
    for raw in client.files.content(b.error_file_id).content.splitlines():
        row = orjson.loads(raw)
        assert row["error"]["code"] == "batch_expired", row
        assert row["response"] is None, row
        counts[row["custom_id"]] += 1
    return counts


def _assert_all_expired(client: OpenAI, b: Batch, expected: set[str]) -> None:
    assert b.status == "expired", (b.status, b.errors)
    assert b.expired_at is not None
    assert b.request_counts is not None
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (
        len(expected), 0, len(expected))
    assert b.output_file_id is None
    ids = _error_ids(client, b)
    assert set(ids) == expected
    assert max(ids.values()) == 1
    record = client.files.retrieve(b.error_file_id)
    assert record.purpose == "batch_output"


def _wait(proc: BargeProcess, batch_id: str, until: Callable[[Batch], bool],
          timeout: float = 30.0) -> Batch:
    client = proc.client()
    deadline = time.monotonic() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if until(b) or b.status in TERMINAL:
            return b
        assert time.monotonic() < deadline, f"timed out; last {_barge_status(b)}"
        time.sleep(0.005)


def test_window_ends_while_queued_as_new(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    """Two batches wait as ``new`` behind the account's cap until their windows end. The
    valid one (created with an integrity hash, so it passes through copying) expires with
    each of its requests as batch_expired; the one with a bad line fails validation."""
    proc = barge_factory(upstream.base_url, *QUEUED)
    client = proc.client()
    holder = _hold_the_slot(client, upstream)

    lines = _lines("q", 50)
    data = to_jsonl([*lines[:20], b"", *lines[20:], b"   "])
    f = upload(client, data)
    valid = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="2s",
                                  extra_body={"hash": hashlib.sha256(data).hexdigest()})
    bad_data = to_jsonl([*_lines("bad", 3), b"{not json"])
    bad = client.batches.create(input_file_id=upload(client, bad_data).id, endpoint=CHAT,
                                completion_window="2s")
    for b in (valid, bad):
        queued = client.batches.retrieve(b.id)
        assert (queued.status, _barge_status(queued)) == ("validating", "new")

    done = wait_terminal(client, valid.id, timeout=20)
    _assert_all_expired(client, done, {f"q-{i}" for i in range(50)})
    assert done.in_progress_at is None
    failed = wait_terminal(client, bad.id, timeout=20)
    assert failed.status == "failed", failed.status
    assert failed.errors is not None and failed.errors.data is not None
    assert [(e.code, e.line) for e in failed.errors.data] == [("invalid_json_line", 4)]
    assert failed.output_file_id is None and failed.error_file_id is None
    # Nothing of either was sent, and the slot holder still runs: they went around it.
    assert not {k for k in upstream.stats.keys if not k.startswith("hold-")}
    assert client.batches.retrieve(holder).status == "in_progress"


def test_kill_9_during_an_expiry_that_validates_a_big_file(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    """A big file's window ends while it waits; the engine then validates it and writes
    its error file. kill -9 mid-validation and again a little later: after the restarts the
    batch is expired with each request exactly once (results come from durable state)."""
    n = 150_000
    proc = barge_factory(upstream.base_url, *QUEUED, *BIG)
    client = proc.client(timeout=120)
    _hold_the_slot(client, upstream)
    f = upload(client, _big_input("big", n))
    batch = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="2s")

    kills = []
    for delay in (0.0, 0.3, 0.6):
        _wait(proc, batch.id, lambda b: _barge_status(b) == "validating")
        time.sleep(delay)
        kills.append(_barge_status(client.batches.retrieve(batch.id)))
        proc.kill()
        proc.restart()
        client = proc.client(timeout=120)
    print("fine-grained statuses at the kills:", kills)
    assert kills[0] == "validating"

    done = _wait(proc, batch.id, lambda b: False, timeout=60)
    _assert_all_expired(client, done, {f"big-{i}" for i in range(n)})
    assert not {k for k in upstream.stats.keys if k.startswith("big-")}


def test_window_ends_while_a_big_file_is_validated(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    """A 1-second window ends while the engine still reads a big file (or just after):
    expired, every request once as batch_expired, none sent."""
    n = 150_000
    proc = barge_factory(upstream.base_url, *WINDOWS, *BIG)
    client = proc.client(timeout=120)
    f = upload(client, _big_input("live", n))
    batch = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="1s")
    done = wait_terminal(client, batch.id, timeout=60)
    print("in_progress_at:", done.in_progress_at, "upstream requests:", upstream.stats.total)
    _assert_all_expired(client, done, {f"live-{i}" for i in range(n)})
    if done.in_progress_at is None:  # the window ended before validation was over
        assert upstream.stats.total == 0


def test_window_ends_while_requests_run(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    """In processing: the requests that finished are in the output file, the rest (still
    retrying at the end of the window) in the error file, each once."""
    proc = barge_factory(upstream.base_url, *WINDOWS, "--backoff-base", "0.01")
    client = proc.client()
    lines = _lines("ok", 10) + _lines("busy", 10, status=503, retry_after=3)
    b = client.batches.create(input_file_id=upload(client, lines).id, endpoint=CHAT,
                              completion_window="2s")
    wait_status(client, b.id, {"in_progress", "expired"})
    done = wait_terminal(client, b.id, timeout=20)
    assert done.status == "expired"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (20, 10, 10)
    assert done.output_file_id is not None
    out = [orjson.loads(r) for r in client.files.content(done.output_file_id).content.splitlines()]
    assert sorted(r["custom_id"] for r in out) == sorted(f"ok-{i}" for i in range(10))
    assert _error_ids(client, done) == Counter({f"busy-{i}": 1 for i in range(10)})


def test_window_end_cuts_off_requests_in_flight(
    barge_factory: Callable[..., BargeProcess], upstream: UpstreamServer
) -> None:
    """Requests still waiting for a slow upstream when the window ends are cut off at
    once (their answers could not count), not awaited up to the upstream timeout: the
    batch ends within seconds of its window, each of them once as batch_expired."""
    proc = barge_factory(upstream.base_url, *WINDOWS, "--backoff-base", "0.01")
    client = proc.client()
    lines = _lines("ok", 5) + _lines("slow", 5, delay=60)
    b = client.batches.create(input_file_id=upload(client, lines).id, endpoint=CHAT,
                              completion_window="2s")
    deadline = time.monotonic() + 15
    while sum(upstream.stats.attempts[f"slow-{i}"] for i in range(5)) < 5:
        assert time.monotonic() < deadline, "the slow requests never reached the upstream"
        time.sleep(0.02)
    done = wait_terminal(client, b.id, timeout=20)  # the upstream would answer after 60 s
    assert done.status == "expired"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (10, 5, 5)
    assert done.expired_at is not None and done.expired_at - b.created_at <= 10
    assert _error_ids(client, done) == Counter({f"slow-{i}": 1 for i in range(5)})
    # The server goes on serving: a new batch runs to completion.
    again = client.batches.create(input_file_id=upload(client, _lines("after", 3)).id,
                                  endpoint=CHAT, completion_window="24h")
    assert wait_terminal(client, again.id).status == "completed"
