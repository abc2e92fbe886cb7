"""Coalescing in the worker pool, with a real Dispatcher against the loopback upstream:
lines of several slices share a call while each result goes to its own slice; each line
counts as one turn of its account; an account's limit on requests in flight bounds a
call; a stopped slice's lines are not sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import pytest_asyncio
from upstream import UpstreamConfig, UpstreamServer, hash_embeddings

from barge.domain.usage import NO_USAGE, Usage
from barge.engine.dispatch import Dispatcher, RetryPolicy
from barge.engine.limiter import AdaptiveLimiter
from barge.engine.pool import Job, SliceTracker, WorkerPool
from barge.store.protocol import AccountSettings
from barge.upstreams.client import UpstreamClient

EMB = "/v1/embeddings"
POLICY = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.05)
DIMS = 3


class Collected:
    """A slice's result sink (``pool.ResultSink``) that keeps what it is given."""

    def __init__(self) -> None:
        self.results: dict[int, tuple[bool, bytes, Usage]] = {}

    def append(self, index: int, ok: bool, line: bytes, usage: Usage = NO_USAGE) -> None:
        assert index not in self.results, "a result twice"
        self.results[index] = (ok, line, usage)


def emb_body(i: int, **extra: Any) -> dict[str, Any]:
    return {"model": "emb", "input": f"text {i}", **extra}


def emb_line(custom_id: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": EMB, "body": body})


@pytest_asyncio.fixture
async def up() -> AsyncIterator[UpstreamServer]:
    async with UpstreamServer(UpstreamConfig(embedding_dims=DIMS)) as server:
        yield server


@pytest_asyncio.fixture
async def dispatcher(up: UpstreamServer) -> AsyncIterator[Dispatcher]:
    client = UpstreamClient(up.base_url, api_key=None, timeout=5.0, max_connections=16)
    await client.open()
    yield Dispatcher(client, POLICY, AdaptiveLimiter(1, initial=1))
    await client.close()


async def drain(pool: WorkerPool, *trackers: SliceTracker) -> None:
    pool.start()
    try:
        for tracker in trackers:
            await tracker.drained()
    finally:
        await pool.close()


@pytest.mark.asyncio
async def test_lines_of_two_slices_share_a_call_and_each_result_goes_to_its_slice(
    dispatcher: Dispatcher, up: UpstreamServer,
) -> None:
    pool = WorkerPool(dispatcher, 1, lane_limit=4)
    lane = pool.lane("A", None, EMB)
    assert lane.coalesce and lane.limit == 128  # room for whole calls
    assert not pool.lane("A", None, "/v1/chat/completions").coalesce
    sinks = [Collected(), Collected()]
    trackers = [SliceTracker(sink) for sink in sinks]
    bodies: dict[tuple[int, int], dict[str, Any]] = {}
    for i in range(60):  # the two slices' lines interleaved in the lane
        no, index = i % 2, i // 2
        bodies[no, index] = emb_body(i)
        await pool.submit(lane, Job(lambda: False, trackers[no], index,
                                    emb_line(f"s{no}-{index}", bodies[no, index])))
    await drain(pool, *trackers)
    assert up.stats.embedding_inputs == [60]
    for no, sink in enumerate(sinks):
        assert sorted(sink.results) == list(range(30))
        for index, (ok, line, usage) in sink.results.items():
            row = orjson.loads(line)
            assert ok and row["custom_id"] == f"s{no}-{index}" and usage.input_tokens > 0
            expected = hash_embeddings(bodies[no, index], DIMS)["data"]
            assert row["response"]["body"]["data"] == orjson.loads(orjson.dumps(expected))


@pytest.mark.asyncio
async def test_each_line_of_a_call_counts_as_a_turn_of_its_account(
    dispatcher: Dispatcher, up: UpstreamServer,
) -> None:
    """One worker; A queued 128 embeddings lines, B 20 chat lines. A's first call takes
    64 turns, so B's 20 go before A's second call."""
    pool = WorkerPool(dispatcher, 1, lane_limit=200)
    a, b = pool.lane("A", None, EMB), pool.lane("B", None, "/v1/chat/completions")
    ta, tb = SliceTracker(Collected()), SliceTracker(Collected())
    for i in range(128):
        await pool.submit(a, Job(lambda: False, ta, i, emb_line(
            f"a-{i}", emb_body(i, x_mock={"key": "emb"}))))
    for i in range(20):
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                "x_mock": {"key": f"b-{i}"}}
        await pool.submit(b, Job(lambda: False, tb, i, orjson.dumps(
            {"custom_id": f"b-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": body})))
    await drain(pool, ta, tb)
    assert up.stats.keys == ["emb", *(f"b-{i}" for i in range(20)), "emb"]
    assert up.stats.embedding_inputs == [64, 64]


@pytest.mark.asyncio
async def test_an_accounts_limit_in_flight_bounds_a_call(
    dispatcher: Dispatcher, up: UpstreamServer,
) -> None:
    pool = WorkerPool(dispatcher, 1, lane_limit=4)
    pool.set_settings({"A": AccountSettings(max_in_flight=5)})
    lane = pool.lane("A", None, EMB)
    tracker = SliceTracker(sink := Collected())
    for i in range(20):
        await pool.submit(lane, Job(lambda: False, tracker, i, emb_line(f"a-{i}", emb_body(i))))
    await drain(pool, tracker)
    assert up.stats.embedding_inputs == [5, 5, 5, 5]
    assert len(sink.results) == 20


@pytest.mark.asyncio
async def test_a_stopped_slices_lines_are_not_sent_with_the_others(
    dispatcher: Dispatcher, up: UpstreamServer,
) -> None:
    pool = WorkerPool(dispatcher, 1, lane_limit=4)
    lane = pool.lane("A", None, EMB)
    live, lost = Collected(), Collected()
    t_live, t_lost = SliceTracker(live), SliceTracker(lost)
    for i in range(10):
        await pool.submit(lane, Job(lambda: False, t_live, i, emb_line(f"l-{i}", emb_body(i))))
        await pool.submit(lane, Job(lambda: True, t_lost, i, emb_line(f"x-{i}", emb_body(i))))
    await drain(pool, t_live, t_lost)
    assert up.stats.embedding_inputs == [10]
    assert len(live.results) == 10 and lost.results == {}
