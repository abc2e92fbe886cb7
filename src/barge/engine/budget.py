"""One upstream budget for the whole cluster: each node's share of it.

``--upstream-concurrency`` is the most requests in flight to the upstream from all nodes
together. Every engine node keeps a row in the store with the slots it holds; a node
asks for ``budget // live nodes`` and gets at most what the others leave free, so the
slots held never add up to more than the budget. A node gives slots back only once its
requests in flight fit under what it keeps, and its limiter runs under what it holds,
so the requests in flight never exceed the budget either — not while a node joins, not
while one leaves. A node that dies gives its slots back when its row expires (after
``ttl``); one that cannot renew its row in time (frozen, or cut off from the store)
stops sending on its own before then (``AdaptiveLimiter.set_share``).

With several upstreams the slots are of their summed budgets, and each upstream gets its
part of a node's slots in proportion to its own budget (rounded down), so no upstream
sees more than its own budget either; a node keeps enough slots for the upstream whose
requests in flight need the most of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from barge.engine.router import Router
from barge.store.protocol import Store

log = logging.getLogger("barge.budget")


class SharedBudget:
    def __init__(self, store: Store, node: str, router: Router, *, ttl: float) -> None:
        self._store = store
        self._node = node
        self._router = router
        self._budget = sum(r.spec.concurrency for r in router.routes)
        self._ttl = ttl
        self._held = 0
        self._live = 1
        self._task: asyncio.Task[None] | None = None
        self._last_warning = 0.0

    @property
    def interval(self) -> float:
        return min(2.0, self._ttl / 6)

    async def start(self) -> None:
        self._apply(0, self._ttl)  # nothing until granted
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="barge-budget")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._store.leave(self._node)

    async def refresh(self) -> None:
        """Renew this node's row and settle its share."""
        target = self._budget // max(1, self._live)
        # Keep slots that requests in flight still use; give back the rest.
        want = target if self._held <= target else max(target, self._in_use())
        started = time.monotonic()
        try:
            held, live = await self._store.share_budget(
                self._node, ttl=self._ttl, want=want, budget=self._budget)
        except Exception as e:
            now = time.monotonic()
            if now - self._last_warning >= 5.0:
                self._last_warning = now
                log.warning("cannot renew this node's share of the upstream budget (%s); "
                            "it stops sending if that lasts", e or type(e).__name__)
            return
        if (held, live) != (self._held, self._live):
            log.info("upstream budget: %d of %d slots here, %d node(s)", held,
                     self._budget, live)
        self._held, self._live = held, live
        # Valid until the row could have expired, less a margin for the clocks.
        self._apply(held, self._ttl * 2 / 3 - (time.monotonic() - started))

    def _in_use(self) -> int:
        """The fewest slots whose parts cover every upstream's requests in flight."""
        return max(math.ceil(r.limiter.in_flight * self._budget / r.spec.concurrency)
                   for r in self._router.routes)

    def _apply(self, held: int, valid_for: float) -> None:
        for route, share in zip(self._router.routes, self._router.shares(held, self._budget),
                                strict=True):
            route.limiter.set_share(share, valid_for=valid_for)
        self._router.poke()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.refresh()
