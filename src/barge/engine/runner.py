"""The engine loop: find unfinished batches and drive each along its lifecycle.

Every step starts from what the Store says, so a process that dies anywhere resumes
where the durable state left off; see ``parts`` for why results are written once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from barge.blobs.protocol import Blobs
from barge.domain.models import OUTPUT_PURPOSE, BatchRecord, FileRecord, LineError, Slice
from barge.domain.status import TERMINAL, Status, project
from barge.domain.validation import LineCodes, is_blank
from barge.engine.budget import SharedBudget
from barge.engine.dispatch import Dispatcher
from barge.engine.finalize import Merged, merge_results, part_path, result_file_id
from barge.engine.leased import LeasedRun, merge_stored
from barge.engine.parts import PartWriter, done_map
from barge.engine.pool import Job, Lane, SliceTracker, WorkerPool
from barge.engine.purge import purge_batch, sha256_file
from barge.engine.reaper import reap_expired_files
from barge.engine.scan import ScanResult, scan_input
from barge.exceptions import (
    BargeError,
    BlobsUnavailable,
    Conflict,
    Fenced,
    NotFound,
    StoreUnavailable,
)
from barge.logs import batch_event, seconds_since_created
from barge.memory import release_free_memory
from barge.settings import Settings
from barge.store.protocol import Store
from barge.upstreams.config import serves_any

if TYPE_CHECKING:
    from barge.metrics import Metrics

log = logging.getLogger("barge.engine")

# Statuses in which the completion window still matters; a batch in one of them whose
# window has not ended needs an active slot (it may send requests).
_EXPIRABLE = frozenset(
    {Status.NEW, Status.COPYING, Status.COPIED, Status.VALIDATING, Status.PROCESSING}
)
# Moves that need no work of their own, each made in one transaction. Without a hash
# to check, copying is nothing more than the moves.
_SIMPLE_MOVES = {
    Status.COPIED: (Status.VALIDATING,),
    Status.PROCESSED: (Status.WRITING_RESULTS,),
    Status.CANCEL: (Status.CANCELLING,),
}
REAP_INTERVAL = 60.0  # seconds between sweeps for expired files
WEIGHTS_INTERVAL = 5.0  # seconds between looks at the accounts' weights
WAITING_LOG_INTERVAL = 5.0  # seconds between "waiting for storage" lines


class BatchRun:
    """A batch in ``processing`` on this node: its part writers and why it stops."""

    def __init__(self, batch: BatchRecord, store: Store, pool: WorkerPool) -> None:
        self.batch = batch
        self.stop_reason: str | None = None
        self.writers: dict[int, PartWriter] = {}
        self.lane: Lane = pool.lane(batch.account, float(batch.expires_at),
                                    batch.endpoint)
        self._pool = pool
        self._store = store
        self._flush_lock = asyncio.Lock()
        self._broken = False

    def stopping(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self._pool.drop(self.lane)  # its queued requests are never sent
            if reason == "expire":  # nor do those in flight count: cut them off now
                self._pool.abort(self.lane)

    async def flush(self) -> None:
        """Make buffered results durable, then acknowledge them in the Store. After a
        failure nothing more is flushed: the run stops and resumes from the Store, which
        cuts every part back to its acknowledged length."""
        async with self._flush_lock:
            if self._broken:
                return
            pending = [(w, w.take()) for w in self.writers.values() if w.pending]
            if not pending:
                return
            try:
                progress = await asyncio.to_thread(lambda: [w.sync(*t) for w, t in pending])
                await self._store.record_progress(self.batch.id, progress)
            except BaseException:
                self._broken = True
                self.stop("error")
                raise
            for p in progress:  # a slice recorded done has nothing more to write
                if p.done:
                    self.writers.pop(p.no, None)


class Engine:
    def __init__(
        self, store: Store, blobs: Blobs, dispatcher: Dispatcher, settings: Settings,
        *, node: str | None = None, metrics: Metrics | None = None,
    ) -> None:
        """With ``node`` (its name in the cluster), the engine shares the work of every
        batch with other nodes through leases (see ``leased``); without, it works alone
        on part files in ``work_dir``, as one machine does. ``metrics``: where the time
        each batch waited before processing is observed."""
        self._node = node
        self._metrics = metrics
        # Batches this node moved to processing whose dispatch has not begun here yet.
        self._starting: set[str] = set()
        self._store = store
        self._blobs = blobs
        self._dispatcher = dispatcher
        self._settings = settings
        self._pool = WorkerPool(dispatcher, settings.upstream_concurrency)
        self._wake = asyncio.Event()
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._slots: dict[str, str] = {}  # batch id -> account, of drivers holding a slot
        self._runs: dict[str, BatchRun] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_waiting = 0.0
        self._budget = None if node is None else SharedBudget(
            store, node, dispatcher.router, ttl=settings.lease_seconds)

    # -- lifecycle of the engine itself ------------------------------------------

    async def start(self) -> None:
        self._settings.work_dir.mkdir(parents=True, exist_ok=True)
        if self._budget is not None:
            await self._budget.start()
        self._pool.start()
        self._loop_task = asyncio.create_task(self._loop(), name="barge-engine")

    async def stop(self, grace: float) -> None:
        """Stop taking work, give in-flight requests ``grace`` seconds, record what
        finished; whatever did not finish resumes at the next start."""
        self._stopping = True
        self._wake.set()
        for run in self._runs.values():
            run.stop("shutdown")
        if self._loop_task is not None:
            await self._loop_task
        drivers = list(self._drivers.values())
        if drivers:
            _, late = await asyncio.wait(drivers, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._pool.close()
        if self._budget is not None:
            await self._budget.stop()

    async def refresh_weights(self) -> None:
        """Read the accounts' weights and limits now (the loop also does every few
        seconds)."""
        self._pool.set_settings(await self._store.account_settings())

    def poke(self, batch_id: str | None = None, *, cancel: bool = False) -> None:
        """Look for work now; with ``cancel``, stop dispatching ``batch_id`` at once."""
        if cancel and batch_id in self._runs:
            self._runs[batch_id].stop("cancel")
        self._wake.set()

    async def _loop(self) -> None:
        try:  # deletions a crash interrupted
            for b in await self._store.deleting_batches():
                if await purge_batch(self._store, self._blobs, self._settings.work_dir, b):
                    batch_event(log, "batch.deleted", b, "batch %s deleted", b.id)
        except Exception:
            log.exception("cannot finish deleting batches")
        next_reap = next_weights = time.monotonic()
        while not self._stopping:
            if time.monotonic() >= next_weights:
                next_weights = time.monotonic() + WEIGHTS_INTERVAL
                with contextlib.suppress(Exception):  # unchanged until the next look
                    await self.refresh_weights()
            if time.monotonic() >= next_reap:
                next_reap = time.monotonic() + REAP_INTERVAL
                try:
                    await reap_expired_files(self._store, self._blobs)
                except Exception:
                    log.exception("cannot delete expired files")
            try:
                batches = await self._store.unfinished_batches()
            except (StoreUnavailable, BlobsUnavailable) as e:
                self._say_waiting(e)
                batches = []
            except Exception:
                log.exception("cannot list unfinished batches")
                batches = []
            self._wake.clear()
            for b in self._admit(batches):
                task = asyncio.create_task(self._drive(b.id), name=f"drive-{b.id}")
                self._drivers[b.id] = task
                task.add_done_callback(functools.partial(self._forget_driver, b.id))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.poll_interval)

    def _say_waiting(self, e: BargeError, batch_id: str | None = None) -> None:
        """One line, at most every few seconds, while the store or the blob store cannot
        be reached: the engine waits and tries again, it does not give up."""
        now = time.monotonic()
        if now - self._last_waiting >= WAITING_LOG_INTERVAL:
            self._last_waiting = now
            what = f"batch {batch_id}: " if batch_id else ""
            log.warning("%swaiting for storage to come back: %s", what, e)

    def _admit(self, batches: list[BatchRecord]) -> list[BatchRecord]:
        """Which of the unfinished ``batches`` (oldest first) to start driving now.

        A batch that may still send requests (its window open, not past processing)
        needs a slot: at most ``max_active_batches_per_account`` of one account hold one,
        and at most ``max_active_batches`` in all — except that an account with none
        running may always start one, so a new account never waits for the others'
        batches. Free slots go to the account with the fewest running, then to the one
        whose waiting batch is oldest; within an account, batches start in creation
        order. Everything else (writing results, a cancel, a window that has ended) only
        ends a batch, and starts at once."""
        s = self._settings
        now = time.time()
        chosen: list[BatchRecord] = []
        waiting: dict[str, list[BatchRecord]] = {}
        for b in batches:
            if b.id in self._drivers:
                continue
            if b.status in _EXPIRABLE and now < b.expires_at:
                waiting.setdefault(b.account, []).append(b)
            else:
                chosen.append(b)
        if not waiting:
            return chosen
        free = s.max_active_batches - len(self._slots)
        running = Counter(self._slots.values())
        cap = s.max_active_batches_per_account
        order = {b.id: n for n, b in enumerate(batches)}
        turns = [(running[a], order[bs[0].id], a) for a, bs in waiting.items()
                 if running[a] < cap]
        heapq.heapify(turns)
        taken = dict.fromkeys(waiting, 0)
        while turns:
            count, _, account = heapq.heappop(turns)
            if free <= 0 and count > 0:
                break  # at the global cap only accounts with none running start one
            b = waiting[account][taken[account]]
            taken[account] += 1
            self._slots[b.id] = account
            chosen.append(b)
            free -= 1
            if count + 1 < cap and taken[account] < len(waiting[account]):
                nxt = waiting[account][taken[account]]
                heapq.heappush(turns, (count + 1, order[nxt.id], account))
        return chosen

    def _forget_driver(self, batch_id: str, _: asyncio.Task[None]) -> None:
        self._drivers.pop(batch_id, None)
        self._starting.discard(batch_id)
        if self._slots.pop(batch_id, None) is not None:
            self._wake.set()  # a slot is free: let a waiting batch have it now

    # -- one batch ---------------------------------------------------------------

    async def _drive(self, batch_id: str) -> None:
        failures = 0
        while not self._stopping:
            try:
                b = await self._store.get_batch(None, batch_id)
                if b.status in TERMINAL or b.status is Status.DELETING:
                    return
                reason = await self._step(b)
                if reason == "shutdown":
                    return
                if reason == "error":
                    raise RuntimeError("recording results failed")
                failures = 0
            except Conflict:
                continue  # raced with a cancel or another move: look again
            except (StoreUnavailable, BlobsUnavailable) as e:
                failures += 1
                self._say_waiting(e, batch_id)
                await asyncio.sleep(min(5.0, 0.25 * 2**failures))
            except Exception:
                failures += 1
                log.exception("batch %s: step failed (attempt %d); retrying", batch_id, failures,
                              extra={"batch_id": batch_id})
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))

    async def _step(self, b: BatchRecord) -> str | None:
        # A window that ends before processing (queued, copying, validating, or while
        # the server was down) lets validation run on: only it tells the requests, each
        # of which must then be in the error file once. A bad file still fails; a good
        # one expires right after validation, sending nothing (see ``_validate``).
        if b.status is Status.PROCESSING and time.time() >= b.expires_at:
            await self._finish(b, Status.EXPIRED, expire_rest=True)
        elif b.status is Status.NEW:
            path: tuple[Status, ...] = (Status.COPYING,)
            if b.hash is None:
                path = (Status.COPYING, Status.COPIED, Status.VALIDATING)
            await self._store.advance(b.id, path)
        elif b.status in _SIMPLE_MOVES:
            await self._store.advance(b.id, _SIMPLE_MOVES[b.status])
        elif b.status is Status.COPYING:
            await self._copy(b)
        elif b.status is Status.VALIDATING:
            await self._validate(b)
        elif b.status is Status.PROCESSING:
            started = time.monotonic()
            reason = await self._process(b)
            log.info("batch %s: dispatch ran %.2fs (%s)", b.id, time.monotonic() - started,
                     reason, extra={"batch_id": b.id, "account": b.account})
            if reason == "done":
                await self._store.advance(b.id, (Status.PROCESSED, Status.WRITING_RESULTS))
            return reason
        elif b.status is Status.WRITING_RESULTS:
            await self._finish(b, Status.COMPLETED, expire_rest=False)
        elif b.status is Status.CANCELLING:
            await self._finish(b, Status.CANCELLED, expire_rest=False)
        return None

    async def _copy(self, b: BatchRecord) -> None:
        """Check the integrity hash given at create, before anything is sent."""
        if b.hash is not None:
            try:
                path = await self._blobs.local_path(b.input_file_id)
            except NotFound:
                path = None  # validation reports the missing file
            if path is not None:
                digest = await asyncio.to_thread(sha256_file, path)
                if digest != b.hash:
                    mismatch = LineError(
                        LineCodes.HASH_MISMATCH,
                        f"The input file's SHA-256 is {digest}, not the hash given at create.",
                        param="hash",
                    )
                    ended = await self._store.transition(
                        b.id, Status.HASH_MISMATCH, only_from=(Status.COPYING,),
                        errors=[mismatch])
                    self._log_invalid(ended, 1, "its SHA-256 is not the hash given")
                    return
        await self._store.transition(b.id, Status.COPIED, only_from=(Status.COPYING,))

    async def _validate(self, b: BatchRecord) -> None:
        s = self._settings
        shutil.rmtree(s.work_dir / b.id, ignore_errors=True)
        try:
            path = await self._blobs.local_path(b.input_file_id)
        except NotFound:
            missing = LineError(LineCodes.INPUT_FILE_MISSING, "The input file is gone.")
            ended = await self._store.fail_validation(b.id, errors=[missing], total=0)
            self._log_invalid(ended, 1, "the input file is gone")
            return
        started = time.monotonic()
        scan = await asyncio.to_thread(
            scan_input,
            path,
            batch_id=b.id,
            endpoint=b.endpoint,
            max_requests=s.max_requests,
            max_bytes=s.max_file_bytes,
            slice_lines=s.slice_lines,
            serves=functools.partial(serves_any, s.upstream_specs),
            scratch=s.work_dir / b.id,
        )
        await asyncio.to_thread(release_free_memory)  # what the scan freed, for the run
        took = round(time.monotonic() - started, 3)
        if scan.errors:
            ended = await self._store.fail_validation(b.id, errors=scan.errors,
                                                      total=scan.total)
            self._log_invalid(ended, scan.error_count, f"{scan.error_count} bad lines",
                              lines=scan.total, seconds=took)
        elif time.time() >= b.expires_at:
            # The window ended before any request was sent: every request of the file
            # goes to the error file as batch_expired, and nothing is sent.
            self._log_validated(b, scan, took)
            await self._finish(b, Status.EXPIRED, expire_rest=True, scan=scan)
        else:
            await self._store.start_processing(
                b.id, slices=scan.slices, total=scan.total, model=scan.model
            )
            self._log_validated(b, scan, took)
            self._starting.add(b.id)

    @staticmethod
    def _log_validated(b: BatchRecord, scan: ScanResult, took: float) -> None:
        batch_event(log, "batch.validated", b, "batch %s: %d requests validated in %.2fs",
                    b.id, scan.total, took, valid=True, lines=scan.total, model=scan.model,
                    seconds=took)

    def _log_invalid(self, ended: BatchRecord, errors: int, why: str,
                     **fields: object) -> None:
        """``ended`` failed before any request was sent: one line says why, one that
        it ended."""
        batch_event(log, "batch.validated", ended, "batch %s: validation failed: %s",
                    ended.id, why, valid=False, errors=errors, **fields)
        self._log_finished(ended)

    @staticmethod
    def _log_finished(ended: BatchRecord, writing: float | None = None) -> None:
        """``ended`` reached its final status, on this node; ``writing``: seconds its
        result files took."""
        status = project(ended.status).value
        duration = seconds_since_created(ended, time.time())
        extra: dict[str, object] = {} if writing is None else {"writing_seconds": writing}
        batch_event(log, "batch.finished", ended,
                    "batch %s: %s (%d ok, %d failed) %.3fs after it was created", ended.id,
                    ended.status.value, ended.completed, ended.failed, duration,
                    status=status, barge_status=ended.status.value, total=ended.total,
                    completed=ended.completed, failed=ended.failed, duration=duration,
                    **extra)

    def _log_started(self, b: BatchRecord) -> None:
        """The first dispatch of ``b`` begins, on the node that moved it to processing:
        one line, and its wait since creation goes to ``barge_batch_queue_seconds``."""
        self._starting.discard(b.id)
        waited = seconds_since_created(b, time.time())
        if self._metrics is not None:
            self._metrics.batch_queued(waited)
        batch_event(log, "batch.started", b, "batch %s: processing %d requests, %.3fs after "
                    "it was created", b.id, b.total, waited, total=b.total, model=b.model,
                    queue_seconds=waited)

    async def _process(self, b: BatchRecord) -> str:
        """Dispatch every request without a durable result; returns why it stopped:
        done, cancel, expire, shutdown or error."""
        run = BatchRun(b, self._store, self._pool)
        if self._stopping:
            return "shutdown"
        if b.id in self._starting:
            self._log_started(b)
        if self._node is not None:
            return await self._process_leased(run, self._node)
        self._runs[b.id] = run
        input_path = await self._blobs.local_path(b.input_file_id)
        todo = [s for s in await self._store.list_slices(b.id) if not s.done]
        dispatch_done = asyncio.Event()
        watcher = asyncio.create_task(self._watch(run, dispatch_done))
        try:
            async with asyncio.TaskGroup() as group:
                for s in todo:
                    if run.stopping():
                        break
                    writer, tracker = await self._enqueue_slice(run, s, input_path)
                    group.create_task(self._close_slice(run, writer, tracker))
        finally:
            # The watcher is never cancelled mid-flush: a flush cut between its fsync and
            # its Store commit would leave counts behind the parts.
            dispatch_done.set()
            await asyncio.shield(watcher)
            self._runs.pop(b.id, None)
            await asyncio.shield(run.flush())
        return run.stop_reason or "done"

    async def _process_leased(self, run: BatchRun, node: str) -> str:
        """Work on this node's share of the batch, on leases, until every slice is done
        (on whichever node) or the run stops."""
        s = self._settings
        self._runs[run.batch.id] = run
        dispatch_done = asyncio.Event()
        watcher = asyncio.create_task(self._watch(run, dispatch_done))
        try:
            input_path = await self._blobs.local_path(run.batch.input_file_id)
            leased = LeasedRun(
                run.batch, store=self._store, pool=self._pool, lane=run.lane, node=node,
                lease_seconds=s.lease_seconds, flush_interval=s.shared_flush_interval,
                poll_interval=s.poll_interval, max_slices=self._slices_per_batch(),
                stopping=run.stopping,
            )
            await leased.run(input_path)
        finally:
            dispatch_done.set()
            await asyncio.shield(watcher)
            self._runs.pop(run.batch.id, None)
        return run.stop_reason or "done"

    def _slices_per_batch(self) -> int:
        """Slices one node holds of one batch at once: enough to keep its share of the
        upstream busy, few enough to leave the rest to other nodes."""
        s = self._settings
        return max(2, -(-s.upstream_concurrency // s.slice_lines) + 1)

    async def _watch(self, run: BatchRun, dispatch_done: asyncio.Event) -> None:
        """Flush results every interval; notice a cancel or the end of the window."""
        s = self._settings
        last_look = time.monotonic()
        try:
            while not dispatch_done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(dispatch_done.wait(), s.flush_interval)
                await run.flush()
                if time.time() >= run.batch.expires_at:
                    run.stop("expire")
                if time.monotonic() - last_look >= s.poll_interval:
                    last_look = time.monotonic()
                    try:
                        current = await self._store.get_batch(None, run.batch.id)
                    except StoreUnavailable as e:
                        if self._node is None:
                            raise
                        # Many nodes: the leases decide whether this run may go on.
                        self._say_waiting(e, run.batch.id)
                        continue
                    if current.status is not Status.PROCESSING:
                        run.stop("cancel")
        except Exception:
            log.exception("batch %s: cannot record results; resuming from the store",
                          run.batch.id)
            run.stop("error")

    async def _enqueue_slice(
        self, run: BatchRun, s: Slice, input_path: Path
    ) -> tuple[PartWriter, SliceTracker]:
        """Queue every line of a slice that has no durable result yet."""
        part = part_path(self._settings.work_dir, s.batch_id, s.no)
        done = await asyncio.to_thread(done_map, part, s.committed_bytes, s.n_lines)
        writer = PartWriter(part, s.no, s.committed_bytes)
        run.writers[s.no] = writer
        tracker = SliceTracker(writer)
        with open(input_path, "rb") as fh:
            fh.seek(s.start_offset)
            for i in range(s.n_lines):
                raw = fh.readline()
                if done[i] or is_blank(raw):
                    continue
                if run.stopping():
                    break
                await self._pool.submit(run.lane, Job(run.stopping, tracker, i, raw))
        return writer, tracker

    @staticmethod
    async def _close_slice(run: BatchRun, writer: PartWriter, tracker: SliceTracker) -> None:
        """Once a slice's last request has its result, mark it done (unless stopped)."""
        await tracker.drained()
        if not run.stopping():
            writer.mark_done()

    async def _finish(
        self, b: BatchRecord, to: Status, *, expire_rest: bool, scan: ScanResult | None = None
    ) -> None:
        """Write the output and error files, publish them, and end the batch, at once.
        With ``scan``, the batch has just been validated and has no slices in the store:
        its slices (and request count) are the scan's, none with a result."""
        s = self._settings
        started = time.monotonic()
        fin_token: int | None = None
        if self._node is not None and scan is None:
            # Many nodes: one of them writes the files. The claim also fences off every
            # slice commit from here on, so whoever writes them writes the same bytes.
            fin_token = await self._store.claim_finalize(b.id, self._node,
                                                         lease_seconds=s.lease_seconds)
            if fin_token is None:  # another node writes them (or, for a cancel, its
                await asyncio.sleep(s.poll_interval)  # slices are being given back)
                return
        # What dispatch freed goes back first: the files' transfers come on top of it.
        await asyncio.to_thread(release_free_memory)
        merged = await self._merge(b, expire_rest=expire_rest, scan=scan,
                                   stored=fin_token is not None)
        now = int(time.time())
        files: list[FileRecord] = []
        fields: dict[str, object] = {"completed": merged.completed, "failed": merged.failed}
        if fin_token is not None:
            fields["fin_token"] = fin_token
        if scan is not None:
            fields |= {"total": scan.total, "model": scan.model}
        for kind, written, field in (
            ("output", merged.output, "output_file_id"),
            ("errors", merged.errors, "error_file_id"),
        ):
            if written.lines == 0:
                continue
            file_id = result_file_id(b.id, kind, fin_token)
            await self._blobs.publish(file_id, written.path)
            files.append(
                FileRecord(
                    id=file_id,
                    account=b.account,
                    filename=f"{b.id}_{kind}.jsonl",
                    purpose=OUTPUT_PURPOSE,
                    bytes=written.bytes,
                    sha256=written.sha256,
                    created_at=now,
                    expires_at=now + (b.output_expiry_seconds or s.file_expiry_seconds),
                    lines=written.lines,
                )
            )
            fields[field] = file_id
        try:
            ended = await self._store.finish(b.id, to, files=files, expired=merged.expired,
                                             **fields)
        except Fenced:
            # Another node claimed the batch after this one's claim ran out, and writes
            # the files under ids of its own: these belong to no record.
            log.warning("batch %s: another node took over writing its results", b.id)
            await self._unpublish(b.id, files)
            return
        except Conflict:
            # Raced with a cancel (the batch moved on): the files published above belong
            # to no record, so they go; the next step ends the batch as it now is.
            await self._unpublish(b.id, files)
            raise
        shutil.rmtree(s.work_dir / b.id, ignore_errors=True)
        self._log_finished(ended, writing=round(time.monotonic() - started, 3))

    async def _merge(
        self, b: BatchRecord, *, expire_rest: bool, scan: ScanResult | None, stored: bool
    ) -> Merged:
        """The batch's output and error files, written in its work folder: from the
        results stored with its progress (``stored``, many nodes), else from its parts."""
        s = self._settings
        slices = scan.slices if scan is not None else await self._store.list_slices(b.id)
        try:
            input_path = await self._blobs.local_path(b.input_file_id)
        except NotFound:
            input_path, expire_rest = Path("/dev/null"), False
        if stored:
            return await merge_stored(self._store, batch_id=b.id, slices=slices,
                                      input_path=input_path, folder=s.work_dir / b.id,
                                      expire_rest=expire_rest)
        return await asyncio.to_thread(
            merge_results,
            batch_id=b.id,
            slices=slices,
            input_path=input_path,
            work_dir=s.work_dir,
            expire_rest=expire_rest,
        )

    async def _unpublish(self, batch_id: str, files: list[FileRecord]) -> None:
        current = await self._store.get_batch(None, batch_id)
        for f in files:
            if f.id not in (current.output_file_id, current.error_file_id):
                try:
                    await self._blobs.delete(f.id)
                except Exception:
                    log.exception("batch %s: cannot delete unused result file %s", batch_id,
                                  f.id)
