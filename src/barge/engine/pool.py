"""The worker pool: a fixed number of long-lived workers send the requests of every
running batch, so the upstream sees at most ``size`` requests at once.

Each running batch queues its requests in a lane of its own. A worker that is free (and
for which some upstream has room) takes the next request by weighted fair share, with
deadlines: first the account, then one of its lanes, each the one furthest behind its
share (stride scheduling: every request taken moves its account and its lane forward by
``1 / share``). An account's share is its weight (set by an admin; 1 by default) times
the urgency of its most urgent batch; a batch's urgency grows as its deadline nears
(``URGENCY_HORIZON`` over the time it has left, at least 1). So among equal deadlines
accounts get turns in proportion to their weights and an account's batches share its
turns alike, while a batch due in an hour takes most turns ahead of one due in a day,
and no batch ever gets none. An account or batch that comes back to the queue starts
level with the others, never with turns saved up. Workers take a request only once an
upstream has room for it, so requests wait here, fairly, rather than in a first-come
queue.

An account may also have limits (set by an admin; none by default): the most of its
requests in flight at once on this node (``max_in_flight``) and its tokens a minute
(``tokens_per_minute``: a paced bucket as for an upstream's budget, charged each
request's estimate and corrected by its usage). Workers pass over an account at a limit
(it gets its turn when it is back under it, never more turns for the wait); when every
account with queued requests is at one, they wait until a request of one finishes or its
bucket refills. An account without limits costs nothing more.

A batch whose window ends cannot use what its requests in flight would bring: ``abort``
cuts those requests off at once (their results are never recorded, so each goes to the
error file as ``batch_expired``) instead of letting them run up to the upstream timeout.

An embeddings batch's lane coalesces (``engine.coalesce``): a worker that takes one of
its requests also takes the requests queued behind it that are alike (the same body but
``input``), up to the limits of the model's upstreams, and sends them as one call. Each
request still counts as one turn of its account and lane, one of its account's requests
in flight and its own tokens, and its result goes to its own slice. Such a lane holds
at least twice the most inputs of a call, so that whole calls can form."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from barge.domain.usage import NO_USAGE, Usage
from barge.engine.coalesce import EMBEDDINGS, Item, prepare, take_alike
from barge.engine.dispatch import Dispatcher, Result
from barge.engine.pacing import Bucket, estimate_tokens
from barge.store.protocol import AccountSettings

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


@dataclass(frozen=True, slots=True)
class AlikeJob(Job):
    """A request of a lane that coalesces (made by ``submit``), read for it."""

    item: Item | None = None  # None: it goes alone


def _item_of(job: Job) -> Item | None:
    return job.item if isinstance(job, AlikeJob) else None


URGENCY_HORIZON = 86400.0  # seconds: a batch due further away than this is not urgent
MIN_TIME_LEFT = 60.0  # seconds: urgency stops growing this close to the deadline


class Lane:
    """One batch's requests waiting for a worker."""

    __slots__ = ("account", "coalesce", "deadline", "floor", "jobs", "limit", "listed",
                 "pass_", "space")

    def __init__(self, account: str, deadline: float | None = None, *, limit: int,
                 floor: int = 1, coalesce: bool = False) -> None:
        self.account = account
        self.deadline = deadline  # Unix seconds the batch is due, if it has a window
        self.limit = limit  # the most requests it holds
        self.floor = floor  # what it may hold even when the pool is full
        self.coalesce = coalesce  # embeddings: alike requests go in one call
        self.jobs: deque[Job] = deque()
        self.listed = False  # in its account's queue (it has jobs)
        self.space: asyncio.Future[None] | None = None  # its reader, waiting for room
        self.pass_ = 0.0  # turns taken, in units of its share

    def urgency(self, now: float) -> float:
        if self.deadline is None:
            return 1.0
        return max(1.0, URGENCY_HORIZON / max(MIN_TIME_LEFT, self.deadline - now))

    def priority(self, now: float) -> int | None:
        """Its deadline rank for upstreams that schedule by priority: whole minutes
        left (lower goes sooner)."""
        if self.deadline is None:
            return None
        return max(0, int(self.deadline - now) // 60)


class _Limit:
    """An account's limits on this node, and what it uses of them now."""

    __slots__ = ("bucket", "in_flight", "max_in_flight", "tokens_per_minute")

    def __init__(self) -> None:
        self.max_in_flight: int | None = None
        self.tokens_per_minute: int | None = None
        self.bucket: Bucket | None = None
        self.in_flight = 0  # its requests taken and not yet finished

    def set(self, settings: AccountSettings, now: float) -> None:
        self.max_in_flight = settings.max_in_flight
        tpm = settings.tokens_per_minute
        if tpm != self.tokens_per_minute:
            self.tokens_per_minute = tpm
            self.bucket = Bucket(tpm, now=now) if tpm else None

    def wait(self, now: float) -> float | None:
        """Seconds until it may send another request: 0 now, None when it waits for one
        of its requests in flight to finish."""
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            return None
        return 0.0 if self.bucket is None else self.bucket.wait(now)


class _Account:
    """An account's lanes that have requests queued, and its place in the rotation."""

    __slots__ = ("lanes", "limit", "pass_", "vtime", "weight")

    def __init__(self, weight: float, limit: _Limit | None = None) -> None:
        self.weight = weight
        self.limit = limit  # None: no limits
        self.lanes: list[Lane] = []
        self.pass_ = 0.0
        self.vtime = 0.0  # the pass of its lane served last: where a returning lane starts


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
        # Accounts with queued requests; each with its lanes that have some.
        self._accounts: dict[str, _Account] = {}
        self._weights: dict[str, float] = {}  # set by an admin; 1 when absent
        self._limits: dict[str, _Limit] = {}  # accounts with limits; none when absent
        self._timer: asyncio.TimerHandle | None = None  # wakes a worker: a bucket refilled
        self._timer_at = 0.0
        self._vtime = 0.0  # the pass of the account served last
        self._idle: deque[asyncio.Future[None]] = deque()  # workers waiting for a request
        self._workers: list[_Worker] = []
        self._closing = False

    def start(self) -> None:
        self._workers = [_Worker() for _ in range(self._size)]
        for n, worker in enumerate(self._workers):
            worker.task = asyncio.create_task(self._work(worker), name=f"barge-worker-{n}")

    def lane(self, account: str, deadline: float | None = None,
             endpoint: str | None = None) -> Lane:
        """A new, empty lane for one batch of ``account``, due at ``deadline``, whose
        requests go to ``endpoint``."""
        size = self._gate.coalesce_size if endpoint == EMBEDDINGS else 0
        if size > 1:
            return Lane(account, deadline, limit=max(self._lane_limit, 2 * size),
                        floor=size, coalesce=True)
        return Lane(account, deadline, limit=self._lane_limit)

    def set_weights(self, weights: dict[str, float]) -> None:
        """Accounts' weights (those absent weigh 1), from now on."""
        self._weights = dict(weights)
        for name, acct in self._accounts.items():
            acct.weight = self._weights.get(name, 1.0)

    def set_settings(self, settings: dict[str, AccountSettings]) -> None:
        """Accounts' weights and limits (those absent: weight 1, no limits), from now
        on. An account keeps counting its requests in flight across changes."""
        now = time.monotonic()
        limits: dict[str, _Limit] = {}
        for name, s in settings.items():
            if s.limited:
                limit = self._limits.get(name) or _Limit()
                limit.set(s, now)
                limits[name] = limit
        self._limits = limits
        self.set_weights({name: s.weight for name, s in settings.items()})
        for name, acct in self._accounts.items():
            acct.limit = limits.get(name)
        self._wake_worker()  # a limit raised or lifted may let a waiting one go

    async def submit(self, lane: Lane, job: Job) -> None:
        """Queue a request in its batch's lane; waits while the lane (or the pool) is full.
        A request whose batch stopped while it waited is not queued."""
        while len(lane.jobs) >= lane.limit or (
            lane.jobs and self._queued >= self._total_limit and len(lane.jobs) >= lane.floor
        ):
            waiter = asyncio.get_running_loop().create_future()
            lane.space = waiter
            try:
                await waiter
            finally:
                lane.space = None
            if job.stopping():
                return
        if lane.coalesce:
            job = AlikeJob(job.stopping, job.tracker, job.index, job.raw, prepare(job.raw))
        job.tracker.add()
        lane.jobs.append(job)
        self._queued += 1
        if not lane.listed:
            self._list(lane)
        self._wake_worker()

    def _wake_worker(self) -> None:
        """Wake one idle worker, if any."""
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
            self._unlist(lane)
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = [w.task for w in self._workers if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers = []

    def _list(self, lane: Lane) -> None:
        """Queue a lane that has requests again, level with the others."""
        lane.listed = True
        acct = self._accounts.get(lane.account)
        if acct is None:
            acct = _Account(self._weights.get(lane.account, 1.0),
                            self._limits.get(lane.account))
            acct.pass_ = self._vtime
            self._accounts[lane.account] = acct
        lane.pass_ = max(lane.pass_, acct.vtime)
        acct.lanes.append(lane)

    def _unlist(self, lane: Lane) -> None:
        lane.listed = False
        acct = self._accounts.get(lane.account)
        if acct is not None:
            with contextlib.suppress(ValueError):
                acct.lanes.remove(lane)
            if not acct.lanes:
                del self._accounts[lane.account]

    def _take(self) -> tuple[Lane, Job, _Limit | None, int, list[Job] | None] | None:
        """The next request: the account furthest behind its share (and under its
        limits), then its lane furthest behind its own; with the account's limits, if
        any, the tokens charged to them, and the requests that go in one call with it
        (itself first), if any."""
        accounts = self._accounts
        if not accounts:
            return None
        now = time.time()
        if len(accounts) == 1:
            acct = next(iter(accounts.values()))
        else:
            acct = min(accounts.values(), key=_pass)
        limit = acct.limit
        if limit is not None:
            picked = self._under_limits(acct)
            if picked is None:
                return None
            acct, limit = picked, picked.limit
        lanes = acct.lanes
        lane = lanes[0] if len(lanes) == 1 else min(lanes, key=_pass)
        job = lane.jobs.popleft()
        self._queued -= 1
        group = self._more_like(lane, job, limit) if lane.coalesce else None
        taken = 1 if group is None else len(group)
        cost = 0
        if limit is not None:
            limit.in_flight += taken
            if limit.bucket is not None:
                cost = _tokens_of(job.raw) if group is None else sum(
                    _tokens_in(j) for j in group)
                limit.bucket.take(cost, time.monotonic())
            if self._queued:
                self._wake_worker()  # another may go too; if not, it waits again
        urgency = lane.urgency(now)
        self._vtime, acct.vtime = acct.pass_, lane.pass_
        lane.pass_ += taken / urgency
        most = max(urgency, *(x.urgency(now) for x in lanes)) if len(lanes) > 1 else urgency
        acct.pass_ += taken / (acct.weight * most)
        if not lane.jobs:
            self._unlist(lane)
        self._wake_reader(lane)
        return lane, job, limit, cost, group

    def _more_like(self, lane: Lane, first: Job, limit: _Limit | None) -> list[Job] | None:
        """``first`` and the requests queued behind it in ``lane`` that go in one call
        with it (taken out of the lane), within the limits of the model's upstreams and
        the account's requests in flight; None when it goes alone."""
        item = _item_of(first)
        if item is None:
            return None
        limits = self._gate.coalescing(item.model)
        if limits is None:
            return None
        max_inputs, max_tokens = limits
        max_lines = max_inputs
        if limit is not None and limit.max_in_flight is not None:
            max_lines = min(max_lines, limit.max_in_flight - limit.in_flight)
        more = take_alike(lane.jobs, item, _item_of, max_inputs=max_inputs,
                          max_tokens=max_tokens, max_lines=max_lines - 1)
        if not more:
            return None
        self._queued -= len(more)
        return [first, *more]

    def _under_limits(self, first: _Account) -> _Account | None:
        """The account furthest behind its share that is under its limits, ``first``
        (the furthest of all) if it is; accounts passed over come level with the one
        taken, so they save up no turns while they wait. None when all are at a limit:
        then a timer wakes a worker when the first bucket refills (a request that
        finishes wakes one too)."""
        now = time.monotonic()
        limit = first.limit
        if limit is None or limit.wait(now) == 0.0:
            return first
        soonest: float | None = None
        passed: list[_Account] = []
        for acct in sorted(self._accounts.values(), key=_pass):
            limit = acct.limit
            wait = 0.0 if limit is None else limit.wait(now)
            if wait == 0.0:
                for other in passed:
                    other.pass_ = max(other.pass_, acct.pass_)
                return acct
            passed.append(acct)
            if wait is not None and (soonest is None or wait < soonest):
                soonest = wait
        if soonest is not None:
            self._wake_at(now + soonest)
        return None

    def _wake_at(self, when: float) -> None:
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        delay = max(0.0, when - time.monotonic()) + 0.001
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake_worker()

    def _finished(self, limit: _Limit, cost: int, sent: bool, usage: Usage) -> None:
        """A request of an account with limits finished (``sent``: it reached the
        upstream; ``usage``: what the upstream said it used)."""
        limit.in_flight -= 1
        bucket = limit.bucket
        if bucket is not None and cost:
            if not sent:
                bucket.adjust(-cost, time.monotonic())
            elif usage:
                used = usage.input_tokens + usage.output_tokens
                if used > 0:
                    bucket.adjust(used - cost, time.monotonic())
        if self._queued:
            self._wake_worker()

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
            lane, job, limit, cost, group = taken
            if group is not None:
                await self._send_group(me, lane, group, limit)
                continue
            sent, usage = False, NO_USAGE
            try:
                if not job.stopping():  # a stopped batch's queued requests are never sent
                    me.lane = lane
                    sent = True
                    try:
                        result = await self._dispatcher.execute(
                            job.raw, job.stopping, priority=lane.priority(time.time()))
                    finally:
                        me.lane = None
                    if result is not None:
                        usage = result.usage
                        job.tracker.writer.append(job.index, result.ok, result.line,
                                                  result.usage)
            except asyncio.CancelledError:
                if not self._cut_off(me):
                    raise  # the pool closes
            except Exception:
                log.exception("worker failed on a request; it will be sent again on resume")
            finally:
                job.tracker.finish_one()
                if limit is not None:
                    self._finished(limit, cost, sent, usage)

    def _cut_off(self, me: _Worker) -> bool:
        """After a CancelledError in worker ``me``: True when only its request(s) were
        cut off (abort), so it serves the next; False when the pool closes."""
        if not me.aborted or self._closing:
            return False
        me.aborted = False
        if me.task is not None:
            me.task.uncancel()
        return True

    async def _send_group(self, me: _Worker, lane: Lane, group: list[Job],
                          limit: _Limit | None) -> None:
        """Send requests taken together in one call; each result to its own slice."""
        live = [j for j in group if not j.stopping()]  # a stopped batch's are never sent
        results: list[Result | None] = []
        try:
            if live:
                me.lane = lane
                try:
                    items = [_item_of(j) for j in live]
                    results = await self._dispatcher.execute_group(
                        [i for i in items if i is not None], [j.stopping for j in live],
                        priority=lane.priority(time.time()))
                finally:
                    me.lane = None
                for j, result in zip(live, results, strict=True):
                    if result is not None:
                        j.tracker.writer.append(j.index, result.ok, result.line,
                                                result.usage)
        except asyncio.CancelledError:
            if not self._cut_off(me):
                raise  # the pool closes
        except Exception:
            log.exception("worker failed on requests; they will be sent again on resume")
        finally:
            # ``results`` is empty when cut off: those sent keep their charge.
            usages = {id(j): r.usage for j, r in zip(live, results, strict=False)
                      if r is not None}
            sent = {id(j) for j in live}
            for j in group:
                j.tracker.finish_one()
                if limit is not None:
                    self._finished(limit, _tokens_in(j), id(j) in sent,
                                   usages.get(id(j), NO_USAGE))


def _pass(x: Lane | _Account) -> float:
    return x.pass_


def _tokens_in(job: Job) -> int:
    item = _item_of(job)
    return 0 if item is None else item.tokens


def _tokens_of(raw: bytes) -> int:
    """A request line's tokens, estimated before it is sent (0 when unreadable: the
    dispatcher reports it)."""
    try:
        line = orjson.loads(raw)
        return estimate_tokens(line["url"], line["body"])
    except Exception:
        return 0
