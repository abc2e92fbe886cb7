"""The worker pool: a fixed number of long-lived workers send the requests of every
running batch, so the upstream sees at most ``size`` requests at once.

Each running batch queues its requests in a lane of its own. A worker that is free (and
for which the adaptive limiter has a slot) takes the next request round-robin: across
accounts first, then across each account's lanes. So an account with one batch gets as
many turns as an account with sixty-four, and a batch that queued first cannot hog the
workers. Workers take a request only once the limiter has room for it, so requests wait
here, fairly, rather than in the limiter's first-come queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from barge.engine.dispatch import Dispatcher
from barge.engine.parts import PartWriter

log = logging.getLogger("barge.pool")


class SliceTracker:
    """Counts a slice's requests that are queued or in flight."""

    def __init__(self, writer: PartWriter) -> None:
        self.writer = writer
        self._outstanding = 0
        self._drained = asyncio.Event()
        self._drained.set()

    def add(self) -> None:
        self._outstanding += 1
        self._drained.clear()

    def finish_one(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0:
            self._drained.set()

    async def drained(self) -> None:
        await self._drained.wait()


@dataclass(frozen=True, slots=True)
class Job:
    """One request line of a slice, and how to tell whether its batch stopped."""

    stopping: Callable[[], bool]
    tracker: SliceTracker
    index: int
    raw: bytes


class Lane:
    """One batch's requests waiting for a worker."""

    __slots__ = ("account", "jobs", "listed", "space")

    def __init__(self, account: str) -> None:
        self.account = account
        self.jobs: deque[Job] = deque()
        self.listed = False  # in the pool's rotation (it has jobs)
        self.space: asyncio.Future[None] | None = None  # its reader, waiting for room


class WorkerPool:
    def __init__(self, dispatcher: Dispatcher, size: int, *, lane_limit: int | None = None
                 ) -> None:
        self._dispatcher = dispatcher
        self._limiter = dispatcher.limiter
        self._size = size
        # Backpressure on the readers: a lane holds at most ``lane_limit`` (``size``)
        # requests, and all lanes together at most twice that — except that every lane
        # may always hold one, so a newly started batch never waits for the others'.
        self._lane_limit = lane_limit or size
        self._total_limit = 2 * self._lane_limit
        self._queued = 0
        # Accounts with queued requests, in rotation order, each with its lanes in turn.
        self._accounts: dict[str, deque[Lane]] = {}
        self._idle: deque[asyncio.Future[None]] = deque()  # workers waiting for a request
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"barge-worker-{n}") for n in range(self._size)
        ]

    @staticmethod
    def lane(account: str) -> Lane:
        """A new, empty lane for one batch of ``account``."""
        return Lane(account)

    async def submit(self, lane: Lane, job: Job) -> None:
        """Queue a request in its batch's lane; waits while the lane (or the pool) is full.
        A request whose batch stopped while it waited is not queued."""
        while len(lane.jobs) >= self._lane_limit or (
            lane.jobs and self._queued >= self._total_limit
        ):
            waiter = asyncio.get_running_loop().create_future()
            lane.space = waiter
            try:
                await waiter
            finally:
                lane.space = None
            if job.stopping():
                return
        job.tracker.add()
        lane.jobs.append(job)
        self._queued += 1
        if not lane.listed:
            lane.listed = True
            lanes = self._accounts.get(lane.account)
            if lanes is None:
                self._accounts[lane.account] = lanes = deque()
            lanes.append(lane)
        while self._idle:
            worker = self._idle.popleft()
            if not worker.done():
                worker.set_result(None)
                break

    def drop(self, lane: Lane) -> None:
        """Forget every queued request of a stopped batch (none of them is sent)."""
        while lane.jobs:
            job = lane.jobs.popleft()
            self._queued -= 1
            job.tracker.finish_one()
        if lane.listed:
            lane.listed = False
            lanes = self._accounts.get(lane.account)
            if lanes is not None:
                with contextlib.suppress(ValueError):
                    lanes.remove(lane)
                if not lanes:
                    del self._accounts[lane.account]
        self._wake_reader(lane)

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def _take(self) -> Job | None:
        """The next request, round-robin across accounts, then across their lanes."""
        accounts = self._accounts
        if not accounts:
            return None
        account = next(iter(accounts))
        lanes = accounts.pop(account)
        lane = lanes.popleft()
        job = lane.jobs.popleft()
        self._queued -= 1
        if lane.jobs:
            lanes.append(lane)
        else:
            lane.listed = False
        if lanes:
            accounts[account] = lanes  # back of the rotation
        self._wake_reader(lane)
        return job

    @staticmethod
    def _wake_reader(lane: Lane) -> None:
        waiter = lane.space
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _work(self) -> None:
        limiter = self._limiter
        loop = asyncio.get_running_loop()
        while True:
            if not limiter.has_room():
                await limiter.room()
            job = self._take()
            if job is None:
                idle = loop.create_future()
                self._idle.append(idle)
                try:
                    await idle
                except asyncio.CancelledError:
                    with contextlib.suppress(ValueError):
                        self._idle.remove(idle)
                    raise
                continue
            try:
                if not job.stopping():  # a stopped batch's queued requests are never sent
                    result = await self._dispatcher.execute(job.raw, job.stopping)
                    if result is not None:
                        job.tracker.writer.append(job.index, result.ok, result.line,
                                                  result.usage)
            except Exception:
                log.exception("worker failed on a request; it will be sent again on resume")
            finally:
                job.tracker.finish_one()
