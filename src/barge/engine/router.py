"""Routing: which upstream a request goes to.

Each upstream is a ``Route``: its client, its own AIMD limiter and its circuit breaker.
A request goes to a route that serves its model; among replicas of that model, to the
one with the least outstanding work for its limit and weight, so replicas share the
load by what each can take. A replica that keeps failing (connections refused or reset,
timeouts, 5xx answers) is taken out of rotation for a cooldown, then tried with one
request at a time until one succeeds (half-open); its requests go to the others. When
every replica of a model is out, ``acquire`` raises ``NoRoute`` and the request waits
as it does for one upstream that is down.

An upstream with ``requests_per_minute`` or ``tokens_per_minute`` has a ``Pacer``: a
replica whose pacer cannot take a request now is passed over for another; when none
can, the request waits until the soonest can, and the worker pool takes no request
while every upstream's pacer is empty (``has_room``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence

from barge.engine.limiter import AdaptiveLimiter, Outcome
from barge.engine.pacing import Pacer, rate_limit_holds
from barge.upstreams.client import UpstreamClient
from barge.upstreams.config import UpstreamSpec

log = logging.getLogger("barge.router")

FAILURES_TO_OPEN = 5  # consecutive failures that take a replica out of rotation
COOLDOWN = 2.0  # seconds out of rotation at first; doubles while it keeps failing
MAX_COOLDOWN = 60.0
_RECHECK = 0.25  # seconds between looks while waiting for room (breaker timers)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class NoRoute(Exception):
    """Every upstream serving the model is out of rotation right now."""


class Breaker:
    """Closed (in rotation), open (out, until a time), or half-open (one probe at a time
    decides)."""

    def __init__(self, name: str, max_cooldown: float = MAX_COOLDOWN) -> None:
        self.name = name
        self.failures = 0
        self.open_until = 0.0
        self.max_cooldown = max_cooldown
        self.first_cooldown = min(COOLDOWN, max_cooldown)
        self.cooldown = self.first_cooldown
        self.probing = False
        self.opened = False  # out of rotation (open or half-open)

    def available(self, now: float) -> bool:
        """Whether a request may go now (a half-open breaker lets one probe at a time)."""
        if not self.opened:
            return True
        return now >= self.open_until and not self.probing

    def taken(self) -> None:
        if self.opened:
            self.probing = True  # this request is the probe

    def success(self) -> None:
        if self.opened:
            log.warning("upstream %s answers again; back in rotation", self.name)
        self.failures = 0
        self.opened = self.probing = False
        self.cooldown = self.first_cooldown

    def failure(self) -> None:
        self.failures += 1
        if self.opened:  # the probe failed: out again, for longer
            self.probing = False
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
            self.open_until = time.monotonic() + self.cooldown
        elif self.failures >= FAILURES_TO_OPEN:
            self.opened = True
            self.open_until = time.monotonic() + self.cooldown
            log.warning("upstream %s failed %d times in a row; out of rotation for %.0fs",
                        self.name, self.failures, self.cooldown)

    def neutral(self) -> None:
        """The request said nothing about the upstream's health (it was cut off)."""
        self.probing = False


class Route:
    """One upstream at run time."""

    def __init__(self, spec: UpstreamSpec, client: UpstreamClient,
                 limiter: AdaptiveLimiter | None = None, *,
                 max_cooldown: float = MAX_COOLDOWN) -> None:
        self.spec = spec
        self.client = client
        self.limiter = limiter or AdaptiveLimiter(spec.concurrency)
        # Out of rotation at most as long as a request would back off between tries.
        self.breaker = Breaker(spec.name, max_cooldown)
        # Its per-minute budgets; also made for one without any, once it answers that a
        # budget of its own is spent (a hold until the reset).
        self.pacer: Pacer | None = Pacer.of(spec.requests_per_minute,
                                            spec.tokens_per_minute, time.monotonic())

    @property
    def name(self) -> str:
        return self.spec.name

    def load(self) -> float:
        """Outstanding work for what it can take: lower goes first."""
        return (self.limiter.in_flight + 1) / (max(1, self.limiter.limit) * self.spec.weight)


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        if not routes:
            raise ValueError("a router needs at least one upstream")
        self.routes = list(routes)
        self._single = self.routes[0] if len(self.routes) == 1 else None
        self._by_model: dict[str, list[Route]] = {}
        self._changed = asyncio.Event()  # a slot came free: for acquire's waiters
        self._room_waiters: deque[asyncio.Future[None]] = deque()  # the pool's workers
        self._pace_timer: asyncio.TimerHandle | None = None  # wakes them when a pacer refills
        self._pace_when = math.inf  # loop time it fires at
        # Whether requests need their tokens estimated: some upstream has a token budget.
        self.counts_tokens = any(r.pacer is not None and r.pacer.tokens is not None
                                 for r in self.routes)
        # Embeddings calls: the most inputs one may carry on any upstream (0: none
        # coalesces), and per model the limits on all of its upstreams (``coalescing``).
        self.coalesce_size = max((r.spec.coalesce_max_inputs for r in self.routes
                                  if r.spec.coalesce), default=0)
        self._coalescing: dict[str, tuple[int, int] | None] = {}

    def for_model(self, model: str) -> list[Route]:
        routes = self._by_model.get(model)
        if routes is None:
            routes = [r for r in self.routes if r.spec.serves(model)]
            if len(self._by_model) < 10_000:  # a file has few models; bound the cache
                self._by_model[model] = routes
        return routes

    def serves(self, model: str) -> bool:
        return bool(self.for_model(model))

    def coalescing(self, model: str) -> tuple[int, int] | None:
        """The most inputs and estimated tokens one embeddings call for ``model`` may
        carry: the least of its upstreams' (a call may go to any of them); None when one
        of them does not coalesce (or none serves it)."""
        try:
            return self._coalescing[model]
        except KeyError:
            pass
        routes = self.for_model(model)
        limits = None
        if routes and all(r.spec.coalesce for r in routes):
            limits = (min(r.spec.coalesce_max_inputs for r in routes),
                      min(r.spec.coalesce_max_tokens for r in routes))
        if len(self._coalescing) < 10_000:
            self._coalescing[model] = limits
        return limits

    # -- room, for the worker pool ---------------------------------------------------

    def has_room(self) -> bool:
        """Whether some upstream could take a request now."""
        single = self._single
        if single is not None and not single.breaker.opened and single.pacer is None:
            return single.limiter.has_room()  # the common case, per request
        now = time.monotonic()
        return any(r.limiter.has_room() and r.breaker.available(now)
                   and (r.pacer is None or r.pacer.wait(now) <= 0) for r in self.routes)

    def _pace_wait(self, now: float) -> float:
        """Seconds until a pacer that alone keeps its upstream from taking a request
        refills (inf: none does)."""
        soonest = math.inf
        for r in self.routes:
            if r.pacer is not None and r.limiter.has_room() and r.breaker.available(now):
                soonest = min(soonest, r.pacer.wait(now))
        return soonest

    async def room(self) -> None:
        """Wait until ``has_room``. Waiters are woken one per free slot as requests end
        (not all at once), or as pacers refill (one timer for them all), and look again
        every ``_RECHECK`` for breakers that reopen."""
        if len(self.routes) == 1 and not self.routes[0].breaker.opened:
            await self.routes[0].limiter.room()  # one upstream in rotation: its own wake-ups
        loop = asyncio.get_running_loop()
        while not self.has_room():
            waiter = loop.create_future()
            self._room_waiters.append(waiter)
            handle = loop.call_later(_RECHECK, _settle, waiter)
            pace = self._pace_wait(time.monotonic())
            if pace < math.inf:
                self._arm(loop, pace)
            try:
                await waiter
            finally:
                handle.cancel()
                if not waiter.done():
                    waiter.cancel()

    def _arm(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Wake waiters in ``delay`` seconds (or sooner, where already due sooner)."""
        when = loop.time() + delay
        if self._pace_timer is not None:
            if self._pace_when <= when:
                return
            self._pace_timer.cancel()
        self._pace_when = when
        self._pace_timer = loop.call_at(when, self._paced)

    def _paced(self) -> None:
        self._pace_timer = None
        self._pace_when = math.inf
        self._changed.set()
        if self._room_waiters:
            self._wake_room()
        if self._room_waiters:  # the others: at the next refill (after the woken take)
            pace = self._pace_wait(time.monotonic())
            if pace < math.inf:
                self._arm(asyncio.get_running_loop(), pace)

    def _wake_room(self) -> None:
        now = time.monotonic()
        free = 0
        for r in self.routes:
            if r.breaker.available(now):
                slots = max(0, r.limiter.limit - r.limiter.in_flight)
                if r.pacer is not None and slots:
                    slots = min(slots, r.pacer.allowance(now))
                free += slots
        waiters = self._room_waiters
        while free > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    # -- one attempt -----------------------------------------------------------------

    async def acquire(self, model: str, avoid: Route | None = None,
                      tokens: int = 0) -> tuple[Route, int]:
        """A slot on the best route for ``model`` (``avoid``: one that just failed to
        connect, passed over while another can take the request), charged to its pacer
        (``tokens``: the request's estimate); waits while every route in rotation is
        full or paced. NoRoute when every route of the model is out."""
        single = self._single
        if single is not None and single.pacer is None and not single.breaker.opened and \
                single.limiter.in_flight < single.limiter.limit and self.for_model(model):
            return single, await single.limiter.acquire()  # one upstream: no choice to make
        routes = self.for_model(model)
        while True:
            now = time.monotonic()
            usable = [r for r in routes if r.breaker.available(now)]
            if not usable:
                raise NoRoute(model)
            if avoid is not None and len(usable) > 1:
                usable = [r for r in usable if r is not avoid] or usable
            best: Route | None = None
            best_load = math.inf
            soonest = _RECHECK
            for r in usable:
                if r.limiter.in_flight < r.limiter.limit:
                    if r.pacer is not None:
                        wait = r.pacer.wait(now)
                        if wait > 0:  # paced: passed over, for now
                            soonest = min(soonest, wait)
                            continue
                    load = r.load()
                    if load < best_load:
                        best, best_load = r, load
            if best is not None:
                if best.pacer is not None:
                    best.pacer.take(tokens, now)
                best.breaker.taken()
                granted = await best.limiter.acquire()  # has room: returns at once
                return best, granted
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), soonest)

    # -- pacing ----------------------------------------------------------------------

    def unsent(self, route: Route, tokens: int) -> None:
        """A request charged to ``route`` was never sent: its pacer gets it back."""
        if route.pacer is not None:
            route.pacer.unsent(tokens, time.monotonic())

    def settle(self, route: Route, estimated: int, used: int) -> None:
        """The upstream used ``used`` tokens on a request charged ``estimated``."""
        if route.pacer is not None:
            route.pacer.settle(estimated, used, time.monotonic())

    def hint(self, route: Route, headers: Mapping[str, str], *, rejected: bool,
             tokens: int = 0) -> None:
        """An answer's rate-limit headers: a budget it says is spent holds the route's
        requests until its reset."""
        holds = rate_limit_holds(headers, rejected=rejected, tokens=tokens)
        if not holds:
            return
        now = time.monotonic()
        if route.pacer is None:
            route.pacer = Pacer(now=now)
        held = route.pacer.holding(now)
        route.pacer.hint(holds, now)
        if not held:  # one line a hold, not one per answer during it
            log.info("upstream %s: its %s budget is spent; holding its requests %.2fs",
                     route.name, " and ".join(holds), max(holds.values()))

    def release(self, route: Route, granted: int, outcome: Outcome, *,
                healthy: bool | None) -> None:
        """Give the slot back; ``healthy``: whether the upstream answered sanely (None:
        the attempt says nothing about it)."""
        route.limiter.release(granted, outcome)
        if healthy is True:
            route.breaker.success()
        elif healthy is False:
            route.breaker.failure()
        else:
            route.breaker.neutral()
        self._changed.set()
        if self._room_waiters:
            self._wake_room()

    def poke(self) -> None:
        """Something changed outside (a share of the budget): look again. A route's
        per-minute budgets follow this node's share of its concurrency."""
        now = time.monotonic()
        for r in self.routes:
            share = r.limiter.share
            if r.pacer is not None and share:
                r.pacer.scale(min(1.0, share / max(1, r.spec.concurrency)), now)
        self._changed.set()
        self._wake_room()

    def shares(self, held: int, total: int) -> list[int]:
        """Each route's part of ``held`` slots of a cluster budget of ``total``."""
        return [math.floor(r.spec.concurrency * held / total) if total else 0
                for r in self.routes]
