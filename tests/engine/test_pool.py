"""The worker pool with a real Dispatcher against the loopback upstream: requests are
taken round-robin across accounts, then across each account's batches (lanes); a
stopped batch's queued requests are dropped; readers feel backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from upstream import UpstreamServer

from barge.engine.dispatch import Dispatcher, RetryPolicy
from barge.engine.limiter import AdaptiveLimiter
from barge.engine.parts import PartWriter
from barge.engine.pool import Job, Lane, SliceTracker, WorkerPool
from barge.upstreams.client import UpstreamClient

CHAT = "/v1/chat/completions"
POLICY = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.05)


def line(custom_id: str, **mock: Any) -> bytes:
    body: dict[str, Any] = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}],
                            "x_mock": {"key": custom_id, **mock}}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body})


@pytest_asyncio.fixture
async def up() -> AsyncIterator[UpstreamServer]:
    async with UpstreamServer() as server:
        yield server


@pytest_asyncio.fixture
async def dispatcher(up: UpstreamServer) -> AsyncIterator[Dispatcher]:
    client = UpstreamClient(up.base_url, api_key=None, timeout=5.0, max_connections=16)
    await client.open()
    yield Dispatcher(client, POLICY, AdaptiveLimiter(1, initial=1))
    await client.close()


class Batch:
    """One batch's lane and its slice, as the engine makes them."""

    def __init__(self, pool: WorkerPool, account: str, name: str, tmp: Path) -> None:
        self.name = name
        self.lane: Lane = pool.lane(account)
        self.writer = PartWriter(tmp / f"{name}.part", 0, 0)
        self.tracker = SliceTracker(self.writer)
        self.stopped = False

    def job(self, i: int) -> Job:
        return Job(lambda: self.stopped, self.tracker, i, line(f"{self.name}-{i}"))


@pytest.mark.asyncio
async def test_round_robin_across_accounts_then_batches(
    dispatcher: Dispatcher, up: UpstreamServer, tmp_path: Path
) -> None:
    """One worker, so the upstream sees the pool's order. Account A queued six requests
    in two batches before B queued three: B still gets every other turn."""
    pool = WorkerPool(dispatcher, 1, lane_limit=10)
    a1, a2 = Batch(pool, "A", "a1", tmp_path), Batch(pool, "A", "a2", tmp_path)
    b = Batch(pool, "B", "b", tmp_path)
    for batch in (a1, a2):
        for i in range(3):
            await pool.submit(batch.lane, batch.job(i))
    for i in range(3):
        await pool.submit(b.lane, b.job(i))
    pool.start()
    try:
        for batch in (a1, a2, b):
            await asyncio.wait_for(batch.tracker.drained(), 10)
    finally:
        await pool.close()
    assert up.stats.keys == ["a1-0", "b-0", "a2-0", "b-1", "a1-1", "b-2", "a2-1",
                             "a1-2", "a2-2"]


@pytest.mark.asyncio
async def test_a_dropped_lane_sends_nothing_more_and_frees_its_reader(
    dispatcher: Dispatcher, up: UpstreamServer, tmp_path: Path
) -> None:
    pool = WorkerPool(dispatcher, 1, lane_limit=2)
    batch = Batch(pool, "A", "x", tmp_path)
    await pool.submit(batch.lane, batch.job(0))
    await pool.submit(batch.lane, batch.job(1))
    blocked = asyncio.create_task(pool.submit(batch.lane, batch.job(2)))  # lane is full
    await asyncio.sleep(0.05)
    assert not blocked.done()
    batch.stopped = True
    pool.drop(batch.lane)
    await asyncio.wait_for(blocked, 1)  # woken, and (stopped) not queued
    await asyncio.wait_for(batch.tracker.drained(), 1)
    pool.start()
    await asyncio.sleep(0.1)
    await pool.close()
    assert up.stats.total == 0


@pytest.mark.asyncio
async def test_a_new_lane_may_always_queue_one_request(
    dispatcher: Dispatcher, up: UpstreamServer, tmp_path: Path
) -> None:
    """All lanes together hold at most twice the lane limit, but a lane with nothing
    queued still takes one: a batch that starts late is never stuck behind the others."""
    pool = WorkerPool(dispatcher, 1, lane_limit=2)
    hogs = [Batch(pool, "A", f"h{n}", tmp_path) for n in range(2)]
    for hog in hogs:
        for i in range(2):
            await pool.submit(hog.lane, hog.job(i))
    late = Batch(pool, "B", "late", tmp_path)
    await asyncio.wait_for(pool.submit(late.lane, late.job(0)), 1)
    second = asyncio.create_task(pool.submit(late.lane, late.job(1)))
    await asyncio.sleep(0.05)
    assert not second.done()  # the pool is over its total: one each, no more
    pool.start()
    try:
        await asyncio.wait_for(second, 10)
        for batch in (*hogs, late):
            await asyncio.wait_for(batch.tracker.drained(), 10)
    finally:
        await pool.close()
    assert up.stats.keys[:2] == ["h0-0", "late-0"]
    assert sorted(up.stats.keys) == sorted(["h0-0", "h0-1", "h1-0", "h1-1", "late-0", "late-1"])
