"""The worker pool: a fixed number of long-lived workers send the requests of every
running batch, so the upstream sees at most ``size`` requests at once.

Each running batch queues its requests in a lane of its own. A worker that is free (and
for which the adaptive limiter has a slot) takes the next request round-robin: across
accounts first, then across each account's lanes. So an account with one batch gets as
many turns as an account with sixty-four, and a batch that queued first cannot hog the
workers. Workers take a request only once the limiter has room for it, so requests wait
here, fairly, rather than in the limiter's first-come queue.

A batch whose window ends cannot use what its requests in flight would bring: ``abort``
cuts those requests off at once (their results are never recorded, so each goes to the
error file as ``batch_expired``) instead of letting them run up to the upstream timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from barge.domain.usage import NO_USAGE, Usage
from barge.engine.dispatch import Dispatcher

log = logging.getLogger("barge.pool")


class ResultSink(Protocol):
    """Where a slice's results go: its part file (one node) or its leased buffer."""

    def append(self, index: int, ok: bool, line: bytes, usage: Usage = NO_USAGE) -> None: ...


class SliceTracker:
    """Counts a slice's requests that are queued or in flight."""

    def __init__(self, writer: ResultSink) -> None:
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


class _Worker:
    """One worker task, and the lane whose request it is sending (None between them)."""

    __slots__ = ("aborted", "lane", "task")

    def __init__(self) -> None:
        self.lane: Lane | None = None
        self.aborted = False
        self.task: asyncio.Task[None] | None = None


class WorkerPool:
    def __init__(self, dispatcher: Dispatcher, size: int, *, lane_limit: int | None = None
                 ) -> None:
        self._dispatcher = dispatcher
        self._gate = dispatcher.router  # room on some upstream
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
        self._workers: list[_Worker] = []
        self._closing = False

    def start(self) -> None:
        self._workers = [_Worker() for _ in range(self._size)]
        for n, worker in enumerate(self._workers):
            worker.task = asyncio.create_task(self._work(worker), name=f"barge-worker-{n}")

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

    def abort(self, lane: Lane) -> int:
        """Cut off the requests of ``lane`` that are in flight now; none of them gets a
        result. Returns how many were cut off."""
        cut = 0
        for worker in self._workers:
            if worker.lane is lane and not worker.aborted and worker.task is not None:
                worker.aborted = True
                worker.task.cancel()
                cut += 1
        return cut

    async def close(self) -> None:
        self._closing = True  # a worker cut off by ``abort`` now stops too
        tasks = [w.task for w in self._workers if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers = []

    def _take(self) -> tuple[Lane, Job] | None:
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
        return lane, job

    @staticmethod
    def _wake_reader(lane: Lane) -> None:
        waiter = lane.space
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _work(self, me: _Worker) -> None:
        gate = self._gate
        loop = asyncio.get_running_loop()
        while True:
            if not gate.has_room():
                await gate.room()
            taken = self._take()
            if taken is None:
                idle = loop.create_future()
                self._idle.append(idle)
                try:
                    await idle
                except asyncio.CancelledError:
                    with contextlib.suppress(ValueError):
                        self._idle.remove(idle)
                    raise
                continue
            lane, job = taken
            try:
                if not job.stopping():  # a stopped batch's queued requests are never sent
                    me.lane = lane
                    try:
                        result = await self._dispatcher.execute(job.raw, job.stopping)
                    finally:
                        me.lane = None
                    if result is not None:
                        job.tracker.writer.append(job.index, result.ok, result.line,
                                                  result.usage)
            except asyncio.CancelledError:
                if not me.aborted or self._closing:
                    raise  # the pool closes
                me.aborted = False  # only this request was cut off: serve the next
                if me.task is not None:
                    me.task.uncancel()
            except Exception:
                log.exception("worker failed on a request; it will be sent again on resume")
            finally:
                job.tracker.finish_one()
