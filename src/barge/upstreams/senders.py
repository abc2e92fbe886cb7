"""The engine's sender processes (``--dispatch-processes N``).

With an upstream that answers at once, one Python process is bound by its CPU, and about
half of what it spends on a request is the HTTP client's work (building and writing the
request, parsing and reading the answer). A SenderPool moves that work into N processes
of ``barge.upstreams.sender``: the engine keeps everything that decides (scheduling, the
adaptive limits, pacing, routing, retries, classification, durable results) and hands a
request's bytes to the sender with the fewest in flight over a Unix socket, getting its
status, headers and body back. A result is still recorded only by the engine, so a
sender that dies costs nothing but retries: its requests in flight fail as connection
errors (the dispatcher retries them like any other) and another sender starts.

A sender that stops answering (frozen) is found by a watchdog: once a request is older than
the request timeout plus a grace (5 s), its requests fail and it is killed and replaced.
Either way the error (SenderLost) is retried but blames no upstream: its breaker and
adaptive limit never hear of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from barge.upstreams import wire
from barge.upstreams.client import (
    Reply,
    SenderLost,
    UpstreamConnectionError,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnreachable,
)

log = logging.getLogger("barge.senders")

GRACE = 5.0  # seconds past the request timeout before a sender counts as stuck
WATCH_INTERVAL = 1.0  # seconds between the watchdog's looks
START_TIMEOUT = 30.0  # seconds a request waits for a sender to be running
MAX_RESTART_DELAY = 5.0  # seconds between restarts of a sender that keeps dying
MAX_PROCESSES = 64


class _Link(wire.FramedProtocol):
    """The engine's end of one sender's socket: the requests it waits on."""

    def __init__(self, pool: SenderPool, slot: int) -> None:
        super().__init__()
        self.pool = pool
        self.slot = slot
        self.pending: dict[int, tuple[asyncio.Future[Reply], float]] = {}
        self.alive = True

    def on_frame(self, kind: int, fields: memoryview) -> None:
        if kind == wire.ANSWER:
            rid, status, n = wire.ANSWER_FIELDS.unpack_from(fields)
            entry = self.pending.pop(rid, None)
            if entry is None or entry[0].done():
                return  # given up on (cancelled, or timed out by the watchdog)
            at = wire.ANSWER_FIELDS.size
            headers = CIMultiDictProxy(CIMultiDict(wire.decode_headers(bytes(fields[at:at + n]))))
            entry[0].set_result(Reply(status, headers, bytes(fields[at + n:])))
        elif kind == wire.FAILURE:
            rid, what, status, n = wire.FAILURE_FIELDS.unpack_from(fields)
            entry = self.pending.pop(rid, None)
            if entry is None or entry[0].done():
                return
            at = wire.FAILURE_FIELDS.size
            message = str(fields[at:at + n], "utf-8", "surrogateescape")
            request_id = str(fields[at + n:], "utf-8", "surrogateescape") or None
            entry[0].set_exception(_failure(what, message, status, request_id))

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.fail_all(SenderLost(
            "The sender process making this request exited before its answer came back."))
        self.pool._lost(self)

    def fail_all(self, error: Exception) -> None:
        pending, self.pending = self.pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(error)


def _failure(what: int, message: str, status: int, request_id: str | None) -> Exception:
    if what == wire.TOO_LARGE:
        return UpstreamResponseTooLarge(message, status=status, request_id=request_id)
    if what == wire.TIMEOUT:
        return UpstreamTimeout(message)
    if what == wire.UNREACHABLE:
        return UpstreamUnreachable(message)
    return UpstreamConnectionError(message)


class SenderPool:
    """``processes`` sender processes, started by ``start`` and ended by ``stop``;
    UpstreamClients given this pool ``register`` their settings and ``send`` through it."""

    def __init__(self, processes: int, *, request_timeout: float, grace: float = GRACE) -> None:
        if not 1 <= processes <= MAX_PROCESSES:
            raise ValueError(f"processes must be 1-{MAX_PROCESSES}")
        self.processes = processes
        self._request_timeout = request_timeout
        self._grace = grace
        self._configs: list[bytes] = []
        self._links: list[_Link | None] = [None] * processes
        self._procs: list[asyncio.subprocess.Process | None] = [None] * processes
        self._restarts: dict[int, asyncio.Task[None]] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._next_id = 0
        self._stopping = False
        self.exits = 0  # senders that exited or were killed while the pool ran

    def register(self, config: dict[str, Any]) -> int:
        """Sends ``config`` (an UpstreamClient's settings) to every sender, now and after
        each restart; the id to ``send`` with."""
        upstream = len(self._configs)
        self._configs.append(orjson.dumps({**config, "id": upstream}))
        for link in self._links:
            if link is not None:
                link.send(wire.CONFIGURE, self._configs[-1])
        return upstream

    @property
    def pids(self) -> list[int]:
        """The running senders' process ids (tests and the log name them)."""
        return [p.pid for p, link in zip(self._procs, self._links, strict=True)
                if p is not None and link is not None and link.alive]

    async def start(self) -> None:
        self._changed = asyncio.Event()
        await asyncio.gather(*(self._spawn(slot) for slot in range(self.processes)))
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        log.info("%d sender processes (pids %s)", self.processes,
                 ", ".join(map(str, self.pids)))

    async def stop(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._watchdog, *self._restarts.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in self._links:
            if link is not None and link.transport is not None:
                link.transport.close()  # the sender sees the end of its input and exits
        for proc in self._procs:
            if proc is not None:
                await _reap(proc, timeout=5.0)

    async def send(self, upstream: int, endpoint: str, body: bytes) -> Reply:
        link = self._pick() or await self._running()
        self._next_id = rid = (self._next_id + 1) & 0xFFFFFFFF
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        link.pending[rid] = (future, time.monotonic())
        path = endpoint.encode()
        link.send(wire.REQUEST, wire.REQUEST_FIELDS.pack(rid, upstream, len(path)) + path, body)
        try:
            return await future
        except asyncio.CancelledError:
            if link.pending.pop(rid, None) is not None and link.alive:
                link.send(wire.CANCEL, wire.CANCEL_FIELDS.pack(rid))  # it stops there too
            raise

    def _pick(self) -> _Link | None:
        best: _Link | None = None
        for link in self._links:
            if link is not None and link.alive and (
                    best is None or len(link.pending) < len(best.pending)):
                best = link
        return best

    async def _running(self) -> _Link:
        """A running sender, waiting up to START_TIMEOUT for one to (re)start."""
        assert self._changed is not None
        deadline = time.monotonic() + START_TIMEOUT
        while (link := self._pick()) is None:
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping:
                raise SenderLost("No sender process is running.")  # not the upstream's doing
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return link

    async def _spawn(self, slot: int) -> None:
        ours, theirs = socket.socketpair()
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "barge.upstreams.sender", str(theirs.fileno()),
                    pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL)
            finally:
                theirs.close()
            loop = asyncio.get_running_loop()
            _, link = await loop.create_unix_connection(lambda: _Link(self, slot), sock=ours)
        except BaseException:
            ours.close()  # a sender started without it reads the end of its input and exits
            raise
        for config in self._configs:
            link.send(wire.CONFIGURE, config)
        self._procs[slot], self._links[slot] = proc, link
        assert self._changed is not None
        self._changed.set()

    def _lost(self, link: _Link) -> None:
        if self._links[link.slot] is link:
            self._links[link.slot] = None
        if not self._stopping:
            self.exits += 1
        if not self._stopping and link.slot not in self._restarts:
            task = asyncio.get_running_loop().create_task(self._restart(link.slot))
            self._restarts[link.slot] = task

    async def _restart(self, slot: int) -> None:
        delay = 0.1
        try:
            while not self._stopping:
                proc = self._procs[slot]
                if proc is not None:
                    code = await _reap(proc, timeout=1.0)
                    log.warning("sender process %d exited (%s); starting another",
                                proc.pid, code)
                try:
                    await self._spawn(slot)
                    return
                except OSError as e:
                    log.error("could not start a sender process: %s", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY)
        finally:
            self._restarts.pop(slot, None)

    async def _watch(self) -> None:
        """Fails requests a sender has held past the timeout, and replaces that sender."""
        limit = self._request_timeout + self._grace
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            for slot, link in enumerate(self._links):
                proc = self._procs[slot]
                if link is None or proc is None or not any(
                        now - t > limit for _, t in link.pending.values()):
                    continue
                log.warning("sender process %d holds a request past %.0fs; replacing it",
                            proc.pid, limit)
                link.fail_all(SenderLost(
                    f"The sender process making this request stopped answering for "
                    f"{limit:.0f}s; it was replaced."))
                if proc.returncode is None:
                    proc.kill()  # its socket closes, and _lost starts another


async def _reap(proc: asyncio.subprocess.Process, timeout: float) -> int | None:
    """Its exit status, killing it after ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return await proc.wait()
