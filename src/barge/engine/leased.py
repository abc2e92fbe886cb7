"""Dispatch on leases: a node's share of a processing batch when many nodes share one
store (PostgreSQL) and one blob store.

A node claims slices of the batch (``Store.claim_slices``), sends their requests that
have no stored result yet, and commits results as records in the store with the slice's
lease token (``record_progress``): a commit under a token that is no longer the slice's
(another node took it over, or the batch is being finalised) changes nothing and is
dropped. Leases are renewed every third of their length; a slice whose lease could not
be renewed in time stops sending on its own. Finished slices are given back at once, and
so is every slice on a graceful stop, so other nodes take over without waiting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from barge.domain.models import BatchRecord, Slice
from barge.domain.usage import NO_USAGE, Usage
from barge.domain.validation import is_blank
from barge.engine.finalize import Merged, Sink, expire_missing, open_sinks
from barge.engine.pool import Job, Lane, SliceTracker, WorkerPool
from barge.exceptions import Fenced
from barge.store.protocol import ExpiredLines, Lease, SliceProgress, Store, StoredResult

log = logging.getLogger("barge.engine")

# Stored results read per query when writing result files. A page's lines and their
# objects are all held at once, so pages are small: memory stays flat at any size.
RESULTS_PAGE = 1000


class LeasedSlice:
    """A slice this node holds a lease on: its results not yet committed, and whether it
    may still send (``lost``: fenced, or its lease ran out before it could be renewed)."""

    def __init__(self, lease: Lease, deadline: float) -> None:
        self.lease = lease
        self.deadline = deadline  # monotonic: stop sending past it unless renewed
        self.lost = False
        self.fenced = False
        self.expected = 0  # requests queued for this node
        self.received = 0  # results appended
        self.done = False  # every request of the slice has a result
        self.done_committed = False
        self.committed_bytes = lease.slice.committed_bytes
        self.commit_lock = asyncio.Lock()
        self._records: list[tuple[int, bool, bytes, Usage]] = []

    @property
    def no(self) -> int:
        return self.lease.slice_no

    def append(self, index: int, ok: bool, line: bytes, usage: Usage = NO_USAGE) -> None:
        if not self.fenced:
            self._records.append((index, ok, line, usage))
            self.received += 1

    @property
    def pending(self) -> bool:
        return bool(self._records) or (self.done and not self.done_committed)

    def progress(self) -> tuple[int, SliceProgress] | None:
        """What to commit now, and how many buffered records it covers."""
        if not self.pending or self.fenced:
            return None
        records = self._records[:]
        completed = sum(1 for r in records if r[1])
        usage = sum((r[3] for r in records), NO_USAGE)
        size = sum(len(r[2]) + 1 for r in records)
        return len(records), SliceProgress(
            self.no, self.committed_bytes + size, completed, len(records) - completed,
            self.done, usage, token=self.lease.token,
            records=tuple((r[0], r[1], r[2]) for r in records),
        )

    def committed(self, n: int, progress: SliceProgress) -> None:
        del self._records[:n]
        self.committed_bytes = progress.committed_bytes
        if progress.done:
            self.done_committed = True

    def fence(self) -> None:
        """Another node owns the slice now (or the batch is being finalised): what is
        buffered can never count, and nothing more is sent."""
        self.fenced = self.lost = True
        self._records.clear()


class LeasedRun:
    """This node's work on one processing batch, on leases; ``run`` returns why it
    stopped: done (every slice of the batch is done), cancel, expire, shutdown."""

    def __init__(
        self, batch: BatchRecord, *, store: Store, pool: WorkerPool, lane: Lane, node: str,
        lease_seconds: float, flush_interval: float, poll_interval: float,
        max_slices: int, stopping: Callable[[], bool],
    ) -> None:
        self.batch = batch
        self._store = store
        self._pool = pool
        self._lane = lane
        self._node = node
        self._lease_seconds = lease_seconds
        self._flush_interval = flush_interval
        self._poll_interval = poll_interval
        self._max_slices = max_slices
        self._stopping = stopping
        self.held: dict[int, LeasedSlice] = {}
        self._changed = asyncio.Event()
        self._reader = asyncio.Lock()
        self._last_warning = 0.0

    # -- the batch -----------------------------------------------------------------

    async def run(self, input_path: Path) -> None:
        """Claim and work slices until the batch is done everywhere or this run stops."""
        tasks: set[asyncio.Task[None]] = set()
        watcher = asyncio.create_task(self._watch(), name=f"leases-{self.batch.id}")
        try:
            while not self._stopping():
                self._changed.clear()
                leases: list[Lease] = []
                room = self._max_slices - len(self.held)
                if room > 0:
                    started = time.monotonic()
                    try:
                        leases = await self._store.claim_slices(
                            self._node, limit=room, lease_seconds=self._lease_seconds,
                            batch_id=self.batch.id)
                    except Exception as e:
                        self._warn("cannot claim work", e)
                    for lease in leases:
                        ls = LeasedSlice(lease, started + self._lease_seconds * 2 / 3)
                        self.held[lease.slice_no] = ls
                        task = asyncio.create_task(self._work(ls, input_path))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                if not self.held and not leases:
                    slices = await self._store.list_slices(self.batch.id)
                    if all(s.done for s in slices):
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self._poll_interval)
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await asyncio.shield(self._give_back())

    def stop_all(self) -> None:
        for ls in self.held.values():
            ls.lost = True
        self._changed.set()

    async def _work(self, ls: LeasedSlice, input_path: Path) -> None:
        """Send the slice's requests that have no stored result, commit, give it back."""
        try:
            done = set(await self._store.done_indexes(self.batch.id, ls.no))
            tracker = SliceTracker(ls)
            stopped: Callable[[], bool] = lambda: ls.lost or self._stopping()  # noqa: E731
            s = ls.lease.slice
            lines = await asyncio.to_thread(_read_slice, input_path, s)
            async with self._reader:  # a lane has one reader at a time
                for i, raw in enumerate(lines):
                    if i in done or is_blank(raw):
                        continue
                    if stopped():
                        break
                    ls.expected += 1
                    await self._pool.submit(self._lane, Job(stopped, tracker, i, raw))
            await tracker.drained()
            if not stopped() and ls.received == ls.expected:
                ls.done = True
            while ls.pending and not ls.fenced:
                if await self.commit(ls):
                    break
                if self._stopping() and time.monotonic() > ls.deadline:
                    break  # leave it to whoever takes the slice over
                await asyncio.sleep(self._flush_interval)
        except Exception as e:
            self._warn(f"slice {ls.no} failed", e)
        finally:
            if not self._stopping():
                await self._release([ls])
            self._changed.set()

    async def commit(self, ls: LeasedSlice) -> bool:
        """Commit the slice's buffered results; False when the store could not be reached
        (they stay buffered for the next try)."""
        async with ls.commit_lock:
            taken = ls.progress()
            if taken is None:
                return True
            n, progress = taken
            try:
                await self._store.record_progress(self.batch.id, [progress])
            except Fenced:
                log.warning("batch %s: slice %d is no longer ours (token %d); %d results "
                            "dropped", self.batch.id, ls.no, ls.lease.token, n)
                ls.fence()
                return True
            except Exception as e:
                self._warn("cannot record results; keeping them for the next try", e)
                return False
            ls.committed(n, progress)
            return True

    async def flush(self) -> None:
        held = list(self.held.values())
        if held:
            await asyncio.gather(*(self.commit(ls) for ls in held))

    # -- leases ----------------------------------------------------------------------

    async def _watch(self) -> None:
        """Commit every flush interval; renew leases every third of their length; stop
        sending on a slice whose lease runs out unrenewed."""
        renew_every = self._lease_seconds / 3
        next_renew = time.monotonic() + renew_every
        while True:
            await asyncio.sleep(self._flush_interval)
            await self.flush()
            now = time.monotonic()
            if now >= next_renew:
                next_renew = now + renew_every
                await self._renew()
            now = time.monotonic()
            for ls in self.held.values():
                if not ls.lost and now >= ls.deadline:
                    log.warning("batch %s: lease on slice %d not renewed in time; it stops "
                                "sending", self.batch.id, ls.no)
                    ls.lost = True

    async def _renew(self) -> None:
        held = [ls for ls in self.held.values() if not ls.fenced]
        if not held:
            return
        started = time.monotonic()
        try:
            renewed = await self._store.renew_leases(
                [ls.lease for ls in held], lease_seconds=self._lease_seconds)
        except Exception as e:
            self._warn("cannot renew leases", e)
            return
        kept = {lease.slice_no for lease in renewed}
        for ls in held:
            if ls.no in kept:
                ls.deadline = started + self._lease_seconds * 2 / 3
            elif not ls.lost:
                log.warning("batch %s: slice %d was taken over; it stops sending",
                            self.batch.id, ls.no)
                ls.lost = True

    async def _release(self, slices: list[LeasedSlice]) -> None:
        for ls in slices:
            self.held.pop(ls.no, None)
        leases = [ls.lease for ls in slices if not ls.fenced]
        if not leases:
            return
        try:
            await self._store.release_leases(leases)
        except Exception as e:
            self._warn("cannot give leases back; they expire by themselves", e)

    async def _give_back(self) -> None:
        """On the way out: commit what is buffered, give every lease back."""
        await self.flush()
        await self._release(list(self.held.values()))

    def _warn(self, what: str, e: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 5.0:
            self._last_warning = now
            log.warning("batch %s: %s: %s", self.batch.id, what, e or type(e).__name__)


def _read_slice(path: Path, s: Slice) -> list[bytes]:
    with open(path, "rb") as fh:
        fh.seek(s.start_offset)
        return [fh.readline() for _ in range(s.n_lines)]


async def merge_stored(
    store: Store, *, batch_id: str, slices: list[Slice], input_path: Path, folder: Path,
    expire_rest: bool,
) -> Merged:
    """Write a batch's output and error files into ``folder`` from the results stored
    with its progress, in (slice, commit, line) order (see ``ResultGroup``). With
    ``expire_rest``, every request without a result goes to the error file as
    ``batch_expired``, after the results of its slice."""
    out, err = open_sinks(folder)
    expiring = _Expiring(input_path, slices, err) if expire_rest else None
    after: tuple[int, int, int] | None = None
    try:
        while True:
            page = await store.slice_results(batch_id, after=after, limit=RESULTS_PAGE)
            await asyncio.to_thread(_write_page, page, out, err, expiring)
            if len(page) < RESULTS_PAGE:
                break
            last = page[-1]
            after = (last.slice_no, last.commit_no, last.index)
        if expiring is not None:
            await asyncio.to_thread(expiring.up_to, None)
    finally:
        if expiring is not None:
            expiring.close()
    return Merged(*await asyncio.to_thread(lambda: (out.close(), err.close())),
                  expired=() if expiring is None else tuple(expiring.expired))


class _Expiring:
    """The batch_expired lines of the slices not done, each slice's written once its
    stored results are (the files are in slice order)."""

    def __init__(self, input_path: Path, slices: list[Slice], err: Sink) -> None:
        self._open = deque(s for s in slices if not s.done)
        self._done = {s.no: bytearray(s.n_lines) for s in self._open}
        self._err = err
        self._fh = open(input_path, "rb") if self._open else None  # noqa: SIM115
        self.expired: list[ExpiredLines] = []

    def mark(self, r: StoredResult) -> None:
        done = self._done.get(r.slice_no)
        if done is not None:
            done[r.index] = 1

    def up_to(self, slice_no: int | None) -> None:
        """Write the lines of the slices before ``slice_no`` (None: of all left)."""
        while self._open and (slice_no is None or self._open[0].no < slice_no):
            s = self._open.popleft()
            assert self._fh is not None
            self.expired.append((s.no, *expire_missing(self._fh, s, self._done.pop(s.no),
                                                      self._err)))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _write_page(page: list[StoredResult], out: Sink, err: Sink,
                expiring: _Expiring | None) -> None:
    for r in page:
        if expiring is not None:
            expiring.up_to(r.slice_no)
            expiring.mark(r)
        (out if r.ok else err).add(r.line)
