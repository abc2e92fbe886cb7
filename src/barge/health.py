"""Whether the store and the blob store answer, for ``/healthz``: each checked with its
``ping`` (a trivial query; one small listing or a look at the folders) when asked and
the last check is older than ``HEALTH_TTL``, so that many probes at once cost one check
of each. Transitions are logged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from barge.exceptions import BargeError

log = logging.getLogger("barge.health")

HEALTH_TTL = 1.5  # seconds a check is reused
PING_TIMEOUT = 2.0  # seconds one check may take


class ComponentHealth:
    """The last check of one dependency (``what``: its name in the log)."""

    def __init__(self, what: str, ping: Callable[[float], Awaitable[None]]) -> None:
        self.what = what
        self._ping = ping
        self.ok = True
        self.error: str | None = None
        self.checked_at: float | None = None
        self._checked_mono = float("-inf")
        self._lock = asyncio.Lock()

    def opened(self) -> None:
        """The dependency was just opened: that is a check that passed."""
        self.ok, self.error = True, None
        self.checked_at, self._checked_mono = time.time(), time.monotonic()

    async def refresh(self, ttl: float = HEALTH_TTL, timeout: float = PING_TIMEOUT) -> None:
        """Check again unless the last check is younger than ``ttl``; callers that come
        while a check runs wait for it rather than start their own."""
        if time.monotonic() - self._checked_mono < ttl:
            return
        async with self._lock:
            if time.monotonic() - self._checked_mono < ttl:
                return
            try:
                await asyncio.wait_for(self._ping(timeout), timeout + 0.5)
            except TimeoutError:
                self._record(f"no answer within {timeout:g}s")
            except BargeError as e:
                self._record(e.message)
            except Exception as e:  # whatever the driver raised: still an answer here
                self._record(f"{type(e).__name__}: {e}")
            else:
                self._record(None)

    def _record(self, error: str | None) -> None:
        self.checked_at, self._checked_mono = time.time(), time.monotonic()
        if error is None and not self.ok:
            log.warning("the %s answers again", self.what)
        elif error is not None and self.ok:
            log.warning("the %s cannot be reached: %s", self.what, error)
        self.ok, self.error = error is None, error

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error,
                "checked_at": None if self.checked_at is None else int(self.checked_at)}
