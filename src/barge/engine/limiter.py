"""Adaptive concurrency: how many requests the upstream gets at once.

AIMD with a slow start, per upstream. The limit starts small and grows by one per
success until the upstream first pushes back (slow start), then by one per ``limit``
successes (additive increase), and four times slower within one of the limit at which
the upstream last pushed back, so a steady upstream is probed rarely. A push-back (429,
503 or a timeout) cuts it to ``BACKOFF_FACTOR`` times the requests that were in flight
(multiplicative decrease), once per round: signals from requests sent before the last
cut do not cut again. The limit stays within [1, ``maximum``]."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from enum import Enum

BACKOFF_FACTOR = 0.9
INITIAL_LIMIT = 4
CAUTION = 4  # near the last push-back, grow this many times slower


class Outcome(Enum):
    SUCCESS = "success"  # the upstream coped: an answer other than a push-back
    OVERLOAD = "overload"  # 429, 503 or a timeout: the upstream has too much
    IGNORE = "ignore"  # says nothing about load (e.g. nothing could be sent)


class AdaptiveLimiter:
    def __init__(self, maximum: int, *, initial: int = INITIAL_LIMIT) -> None:
        self.maximum = maximum
        self._limit = float(min(maximum, initial))
        self._slow_start = True
        self._ceiling = float(maximum)  # in flight at the last push-back
        self._in_flight = 0
        self._round = 0  # bumped at every cut
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self.cuts = 0
        self._share: int | None = None  # this node's part of a shared budget
        self._share_until = math.inf  # monotonic time the share holds until

    @property
    def limit(self) -> int:
        base = max(1, math.floor(self._limit))
        if self._share is None:
            return base
        if time.monotonic() >= self._share_until:
            return 0
        return min(base, self._share)

    @property
    def share(self) -> int | None:
        return self._share

    def set_share(self, share: int, *, valid_for: float) -> None:
        """Run under ``share`` requests in flight (0: none) for ``valid_for`` seconds;
        after that, send nothing until the share is set again."""
        self._share = max(0, share)
        self._share_until = time.monotonic() + valid_for
        self._limit = min(self._limit, float(max(1, self._share)))
        self._wake()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def has_room(self) -> bool:
        """Whether a new request would get a slot at once (no one waits for one)."""
        return self._in_flight + len(self._waiters) < self.limit

    async def room(self) -> None:
        """Wait until ``has_room``: the worker pool takes a new request only then, so
        requests wait in its fair queues rather than in this limiter's FIFO."""
        while not self.has_room():
            waiter = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.cancelled():
                    with contextlib.suppress(ValueError):
                        self._room_waiters.remove(waiter)
                else:  # woken, but leaving: pass the wake-up on
                    self._wake_room(self.limit - self._in_flight - len(self._waiters))
                raise

    async def acquire(self) -> int:
        """Wait for a slot; returns the round it was granted in (give it to ``release``)."""
        while self._in_flight >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.cancelled():
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                    self._wake_room(self.limit - self._in_flight - len(self._waiters))
                else:
                    self._wake()  # woken, but leaving: pass the wake-up on
                raise
        self._in_flight += 1
        return self._round

    def release(self, granted_round: int, outcome: Outcome) -> None:
        in_flight = self._in_flight
        self._in_flight -= 1
        if outcome is Outcome.OVERLOAD and granted_round == self._round:
            self._ceiling = float(min(self._limit, in_flight))
            self._limit = max(1.0, self._ceiling * BACKOFF_FACTOR)
            self._slow_start = False
            self._round += 1
            self.cuts += 1
        elif outcome is Outcome.SUCCESS:
            if self._slow_start:
                step = 1.0
            elif self._limit + 1.0 >= self._ceiling:
                step = 1.0 / (CAUTION * self._limit)
            else:
                step = 1.0 / self._limit
            top = self.maximum if self._share is None else max(1, min(self.maximum,
                                                                         self._share))
            self._limit = min(float(top), self._limit + step)
        self._wake()

    def _wake(self) -> None:
        free = self.limit - self._in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1
        self._wake_room(free)

    def _wake_room(self, free: int) -> None:
        while free > 0 and self._room_waiters:
            waiter = self._room_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1
