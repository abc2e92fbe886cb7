"""The worker pool: a fixed number of long-lived workers take requests from one bounded
queue that every running batch feeds, so the upstream sees at most ``size`` requests
at once and batches share it in arrival order."""

from __future__ import annotations

import asyncio
import logging
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


class WorkerPool:
    def __init__(self, dispatcher: Dispatcher, size: int) -> None:
        self._dispatcher = dispatcher
        self._size = size
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=size)
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"barge-worker-{n}") for n in range(self._size)
        ]

    async def submit(self, job: Job) -> None:
        """Queue a request; waits while the queue is full (backpressure on the reader)."""
        job.tracker.add()
        try:
            await self._queue.put(job)
        except BaseException:
            job.tracker.finish_one()
            raise

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
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
