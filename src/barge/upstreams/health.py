"""Whether the upstream can be reached, for ``/healthz`` and the log: learnt from a cheap
periodic probe (``GET {upstream}/models``; any HTTP answer counts) and from every
request the engine sends (an answer, or a connection that could not be made)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp

from barge.upstreams.client import Reply, UpstreamClient, UpstreamUnreachable

log = logging.getLogger("barge.upstream")

PROBE_TIMEOUT = 5.0  # seconds one probe may take


class UpstreamHealth:
    """The last thing known about the upstream; transitions are logged, naming its URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.reachable = False
        self.last_error: str | None = None
        self.checked_at: float | None = None
        self._warned = False  # "unreachable" was logged and no "reachable" since

    def answered(self) -> None:
        self.checked_at = time.time()
        if not self.reachable and self._warned:
            log.warning("upstream %s is reachable again", self.url)
        self.reachable, self._warned = True, False

    def failed(self, error: str) -> None:
        self.checked_at = time.time()
        self.last_error = error
        if self.reachable or not self._warned:
            log.warning("upstream %s cannot be reached: %s", self.url, error)
            self._warned = True
        self.reachable = False

    def as_json(self) -> dict[str, Any]:
        return {"url": self.url, "reachable": self.reachable, "last_error": self.last_error,
                "checked_at": None if self.checked_at is None else int(self.checked_at)}


class WatchedUpstreamClient(UpstreamClient):
    """An UpstreamClient that tells ``health`` how each request went."""

    def __init__(self, health: UpstreamHealth, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.health = health

    async def send(self, endpoint: str, body: bytes) -> Reply:
        try:
            reply = await super().send(endpoint, body)
        except UpstreamUnreachable as e:
            self.health.failed(e.message)
            raise
        if not self.health.reachable:
            self.health.answered()
        return reply


class UpstreamProbe:
    """Every ``interval`` seconds (and at once on start), ``GET {base}/models``."""

    def __init__(self, health: UpstreamHealth, base_url: str, api_key: str | None,
                 interval: float) -> None:
        self._health = health
        self._url = base_url.rstrip("/") + "/models"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(self._loop(), name="barge-upstream-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=min(PROBE_TIMEOUT, max(self._interval, 1.0)))
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session:
            while True:
                await self.probe(session)
                await asyncio.sleep(self._interval)

    async def probe(self, session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(self._url, allow_redirects=False):
                pass  # any answer will do: its body is not needed
        except TimeoutError:
            self._health.failed(f"no answer to GET {self._url} within "
                                f"{session.timeout.total:.0f}s")
        except aiohttp.ClientError as e:
            self._health.failed(f"{type(e).__name__}: {e}")
        else:
            self._health.answered()
