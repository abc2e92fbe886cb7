"""The default Store: one SQLite file in WAL mode, driven from one worker thread."""

from __future__ import annotations

import asyncio
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from barge.domain.models import BatchRecord, FileRecord, KeyRecord, LineError, Principal, Slice
from barge.domain.permissions import Role, make_role
from barge.domain.status import CANCELLABLE, STAMPS, TERMINAL, Status, can_transition
from barge.domain.usage import MAX_TOKENS, NO_USAGE, Usage
from barge.exceptions import Conflict, Fenced, NotFound, StorageError, StoreUnavailable
from barge.store.protocol import FINALIZING, Lease, Page, SliceProgress, Store

R = TypeVar("R")
_Job = tuple[Callable[[sqlite3.Connection], Any], "Future[Any]"]
MAX_GROUP = 256  # writes that may share one commit

_BATCH_COLUMNS = (
    "id, account, endpoint, completion_window, input_file_id, status, created_at, updated_at,"
    " expires_at, metadata, model, total, completed, failed, errors, output_file_id,"
    " error_file_id, in_progress_at, finalizing_at, completed_at, failed_at, expired_at,"
    " cancelling_at, cancelled_at, output_expiry_seconds, hash, input_tokens, output_tokens,"
    " cached_tokens, reasoning_tokens, created_ms, metadata_json"
)
_FILE_COLUMNS = "id, account, filename, purpose, bytes, sha256, created_at, expires_at, lines"
# Columns ``transition``/``finish`` may set besides status and timestamps.
_SETTABLE = frozenset(
    {"output_file_id", "error_file_id", "total", "completed", "failed", "model", "errors"}
)


# Unfinished batches: the condition of the partial index ``batches_unfinished``
# (migration 6), spelled as there so that SQLite uses the index.
_UNFINISHED = (
    "status NOT IN ('hash_mismatch', 'validation_failed', 'cancelled', 'expired',"
    " 'completed', 'deleting')"
)
assert set(_UNFINISHED[15:-1].replace("'", "").split(", ")) == {*TERMINAL, Status.DELETING}


def migrations() -> list[tuple[int, str]]:
    """Every migration as (version, SQL), in order."""
    folder = resources.files("barge.store") / "sql"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql"):
            found.append((int(name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def _batch(row: sqlite3.Row) -> BatchRecord:
    errors = [LineError(**e) for e in orjson.loads(row["errors"])] if row["errors"] else []
    return BatchRecord(
        id=row["id"],
        account=row["account"],
        endpoint=row["endpoint"],
        completion_window=row["completion_window"],
        input_file_id=row["input_file_id"],
        status=Status(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        metadata=orjson.loads(row["metadata"]) if row["metadata"] is not None else None,
        model=row["model"],
        total=row["total"],
        completed=row["completed"],
        failed=row["failed"],
        errors=errors,
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        in_progress_at=row["in_progress_at"],
        finalizing_at=row["finalizing_at"],
        completed_at=row["completed_at"],
        failed_at=row["failed_at"],
        expired_at=row["expired_at"],
        cancelling_at=row["cancelling_at"],
        cancelled_at=row["cancelled_at"],
        output_expiry_seconds=row["output_expiry_seconds"],
        hash=row["hash"],
        usage=Usage(row["input_tokens"], row["output_tokens"], row["cached_tokens"],
                    row["reasoning_tokens"]),
        created_ms=row["created_ms"],
        metadata_json=None if row["metadata_json"] is None else bool(row["metadata_json"]),
    )


# A batch's creation time in milliseconds; batches from before migration 7 have only
# whole seconds.
_CREATED_MS = "COALESCE(created_ms, created_at * 1000)"
_INT64 = (-(2**63), 2**63 - 1)


def _clamp(n: int) -> int:
    """A bound as a parameter SQLite takes: an int beyond int64 means the same as its
    end of the range (no creation time comes near either)."""
    return min(max(n, _INT64[0]), _INT64[1])


def _position(db: sqlite3.Connection, table: str, object_id: str, account: str) -> int | None:
    """Where ``object_id`` stands (or stood, before it was deleted) in ``table``'s list
    order: a cursor naming a deleted object pages on from its place. None: the account
    never had such an object."""
    row = db.execute(
        f"SELECT seq FROM {table} WHERE id=? AND account=?"
        f" UNION ALL SELECT seq FROM {table}_gone WHERE id=? AND account=? LIMIT 1",
        (object_id, account, object_id, account),
    ).fetchone()
    return None if row is None else int(row["seq"])


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118


def _tokens(n: int) -> int:
    """A token count as a parameter SQLite takes: within 0..MAX_TOKENS."""
    return min(max(n, 0), MAX_TOKENS)


def _slice(row: sqlite3.Row) -> Slice:
    return Slice(**{k: row[k] for k in row.keys()} | {"done": bool(row["done"])})  # noqa: SIM118


_SLICE_COLUMNS = (
    "batch_id, no, start_line, n_lines, start_offset, end_offset, committed_bytes, completed,"
    " failed, done"
)
_LEASE_COLUMNS = f"{_SLICE_COLUMNS}, lease_token, lease_owner, lease_expires"


def _lease(row: sqlite3.Row) -> Lease:
    return Lease(
        slice=Slice(row["batch_id"], row["no"], row["start_line"], row["n_lines"],
                    row["start_offset"], row["end_offset"], row["committed_bytes"],
                    row["completed"], row["failed"], bool(row["done"])),
        token=row["lease_token"], node=row["lease_owner"], expires_at=row["lease_expires"],
    )


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, not {value!r}")


def _next_tokens(db: sqlite3.Connection, n: int) -> range:
    """Take ``n`` new tokens from the counter (inside the caller's transaction)."""
    db.execute("UPDATE lease_tokens SET last = last + ?", (n,))
    last = int(db.execute("SELECT last FROM lease_tokens").fetchone()[0])
    return range(last - n + 1, last + 1)


def _check_fence(db: sqlite3.Connection, batch_id: str,
                 progress: Sequence[SliceProgress]) -> None:
    """Raise Fenced unless every token given in ``progress`` is its slice's current one."""
    wanted: dict[int, int] = {}
    for p in progress:
        if p.token is None:
            continue
        if wanted.setdefault(p.no, p.token) != p.token:
            raise Fenced(f"Slice {p.no} of batch {batch_id}: two tokens in one flush.",
                         param="token")
    if not wanted:
        return
    current = dict(db.execute(
        f"SELECT no, lease_token FROM slices WHERE batch_id=?"
        f" AND no IN ({','.join('?' * len(wanted))})",
        (batch_id, *wanted),
    ).fetchall())
    stale = sorted(no for no, token in wanted.items() if current.get(no) != token)
    if stale:
        raise Fenced(f"Batch {batch_id}: the lease on slice {stale[0]} is no longer held"
                     " under its token; nothing was recorded.", param="token")


class SQLiteStore:
    """Writes go through one connection on one writer thread, with group commit: the
    writes waiting when a transaction starts share it (each in a savepoint of its own, so
    each succeeds or fails alone) and one fsync makes them all durable; no caller hears of
    success before that commit. Reads go through a second, read-only connection on the
    event loop, so a client's GET never queues behind the engine's commits (WAL lets
    readers see the last commit while a write is under way)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="barge-sqlite")
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    # -- plumbing -------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``fn`` as one atomic write; returns once it is committed and durable."""
        if self._db is None or self._writer is None:
            raise StoreUnavailable("The store is closed.")
        done: Future[R] = Future()
        self._jobs.put((fn, done))
        return await asyncio.wrap_future(done)

    def _write_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            group = [job]
            while len(group) < MAX_GROUP:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)  # finish this group, then stop
                    break
                group.append(more)
            self._commit_group(group)

    def _commit_group(self, group: list[_Job]) -> None:
        db = self._db
        assert db is not None
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for fn, done in group:
                db.execute("SAVEPOINT job")
                try:
                    result = fn(db)
                except Exception as e:
                    db.execute("ROLLBACK TO job")
                    db.execute("RELEASE job")
                    outcomes.append((done, None, _translate(e)))
                else:
                    db.execute("RELEASE job")
                    outcomes.append((done, result, None))
            db.execute("COMMIT")
        except BaseException as e:  # the group as a whole failed: nothing of it stands
            if db.in_transaction:
                db.rollback()
            failure = _translate(e)
            for _, done in group:
                if not done.done():
                    done.set_exception(failure)
            return
        for done, result, error in outcomes:
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)

    async def _read(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        # Reads are short indexed lookups that never wait for a writer (WAL): running them
        # on the event loop costs less than the hop to a thread and back, which under
        # load is a whole turn of a busy loop.
        db = self._reader
        if db is None:
            raise StoreUnavailable("The store is closed.")
        try:
            return fn(db)
        except sqlite3.OperationalError as e:
            raise _translate(e) from e

    def _connect(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=10000")
        current = db.execute("PRAGMA user_version").fetchone()[0]
        for version, sql in migrations():
            if version > current:
                db.execute("BEGIN IMMEDIATE")
                for statement in split_statements(sql):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={version}")
                db.execute("COMMIT")
        reader = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        reader.row_factory = sqlite3.Row
        reader.execute("PRAGMA query_only=ON")
        reader.execute("PRAGMA busy_timeout=200")  # it runs on the event loop: never wait long
        self._db, self._reader = db, reader

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._connect)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"Cannot open the database at {self._path}: {e}") from e
        self._writer = threading.Thread(target=self._write_loop, name="barge-sqlite-writer",
                                        daemon=True)
        self._writer.start()

    async def close(self) -> None:
        if self._db is None:
            self._thread.shutdown(wait=False)
            return

        def _close() -> None:
            for db in (self._reader, self._db):
                if db is not None:
                    db.close()
            self._db = self._reader = None

        loop = asyncio.get_running_loop()
        if self._writer is not None:
            self._jobs.put(None)
            await loop.run_in_executor(self._thread, self._writer.join)
            self._writer = None
        await loop.run_in_executor(self._thread, _close)
        self._thread.shutdown(wait=True)

    # -- files ----------------------------------------------------------------

    async def create_file(self, f: FileRecord) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                (f.id, f.account, f.filename, f.purpose, f.bytes, f.sha256, f.created_at,
                 f.expires_at, f.lines),
            )

        await self._run(q)

    async def get_file(self, account: str, file_id: str) -> FileRecord:
        def q(db: sqlite3.Connection) -> FileRecord:
            row = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE id=? AND account=?", (file_id, account)
            ).fetchone()
            if row is None:
                raise NotFound(f"No such file: {file_id}", param="file_id")
            return _file(row)

        return await self._read(q)

    async def list_files(
        self, account: str, *, purpose: str | None, limit: int, order: str, after: str | None
    ) -> Page[FileRecord]:
        desc = order == "desc"

        def q(db: sqlite3.Connection) -> Page[FileRecord]:
            where: list[str] = ["account=?"]
            args: list[str | int] = [account]
            if purpose is not None:
                where.append("purpose=?")
                args.append(purpose)
            if after is not None:
                seq = _position(db, "files", after, account)
                if seq is None:
                    raise NotFound(f"No such file: {after}", param="after")
                where.append("seq < ?" if desc else "seq > ?")
                args.append(seq)
            rows = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE {' AND '.join(where)}"
                f" ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
            return Page([_file(r) for r in rows[:limit]], len(rows) > limit)

        return await self._read(q)

    async def delete_file(self, account: str, file_id: str) -> None:
        def q(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT 1 FROM files WHERE id=? AND account=?", (file_id, account)
            ).fetchone()
            if row is None:
                raise NotFound(f"No such file: {file_id}", param="file_id")
            placeholders = ",".join("?" * (len(TERMINAL) + 1))
            busy = db.execute(
                f"SELECT id FROM batches WHERE input_file_id=? AND status NOT IN ({placeholders})"
                " LIMIT 1",
                (file_id, *TERMINAL, Status.DELETING),
            ).fetchone()
            if busy is not None:
                raise Conflict(
                    f"The file is the input of batch {busy['id']}, which has not finished.",
                    param="file_id",
                )
            db.execute("DELETE FROM files WHERE id=?", (file_id,))

        await self._run(q)

    async def expired_files(self, now: int, *, limit: int) -> list[FileRecord]:
        def q(db: sqlite3.Connection) -> list[FileRecord]:
            rows = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE expires_at IS NOT NULL"
                " AND expires_at <= ? ORDER BY expires_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [_file(r) for r in rows]

        return await self._read(q)

    # -- batches --------------------------------------------------------------

    async def create_batch(self, b: BatchRecord) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO batches (id, account, endpoint, completion_window, input_file_id,"
                " status, created_at, updated_at, expires_at, metadata, total,"
                " output_expiry_seconds, hash, created_ms, metadata_json)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (b.id, b.account, b.endpoint, b.completion_window, b.input_file_id,
                 b.status.value, b.created_at, b.updated_at, b.expires_at,
                 orjson.dumps(b.metadata).decode() if b.metadata is not None else None,
                 b.total, b.output_expiry_seconds, b.hash, b.created_ms,
                 None if b.metadata_json is None else int(b.metadata_json)),
            )

        await self._run(q)

    @staticmethod
    def _get_batch(db: sqlite3.Connection, account: str | None, batch_id: str) -> BatchRecord:
        if account is None:
            row = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id=?", (batch_id,)
            ).fetchone()
        else:
            row = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id=? AND account=?"
                " AND status != 'deleting'",
                (batch_id, account),
            ).fetchone()
        if row is None:
            raise NotFound(f"No such batch: {batch_id}", param="batch_id")
        return _batch(row)

    async def get_batch(self, account: str | None, batch_id: str) -> BatchRecord:
        return await self._read(lambda db: self._get_batch(db, account, batch_id))

    async def list_batches(
        self,
        account: str,
        *,
        after: str | None,
        limit: int,
        created_after: int | None = None,
        created_before: int | None = None,
        oldest_first: bool = False,
        created_after_ms: int | None = None,
        created_before_ms: int | None = None,
    ) -> Page[BatchRecord]:
        def q(db: sqlite3.Connection) -> Page[BatchRecord]:
            where: list[str] = ["account=?", "status != 'deleting'"]
            args: list[str | int] = [account]
            bounds = (("created_at >= ?", created_after), ("created_at <= ?", created_before),
                      (f"{_CREATED_MS} >= ?", created_after_ms),
                      (f"{_CREATED_MS} <= ?", created_before_ms))
            for clause, bound in bounds:
                if bound is not None:
                    where.append(clause)
                    args.append(_clamp(bound))
            if after is not None:
                seq = _position(db, "batches", after, account)
                if seq is None:
                    raise NotFound(f"No such batch: {after}", param="after")
                where.append("seq > ?" if oldest_first else "seq < ?")
                args.append(seq)
            rows = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE {' AND '.join(where)}"
                f" ORDER BY seq {'ASC' if oldest_first else 'DESC'} LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
            return Page([_batch(r) for r in rows[:limit]], len(rows) > limit)

        return await self._read(q)

    @staticmethod
    def _transition(
        db: sqlite3.Connection,
        batch_id: str,
        to: Status,
        only_from: Iterable[Status] | None,
        fields: dict[str, Any],
    ) -> BatchRecord:
        """Inside an open transaction: check the move, write it, return the new record."""
        current = SQLiteStore._get_batch(db, None, batch_id)
        allowed = can_transition(current.status, to)
        if only_from is not None and current.status not in set(only_from):
            allowed = False
        if not allowed:
            raise Conflict(
                f"Batch {batch_id} is {current.status.value}; it cannot become {to.value}.",
                param="batch_id",
                code="invalid_status",
            )
        unknown = set(fields) - _SETTABLE
        if unknown:
            raise ValueError(f"not settable: {sorted(unknown)}")
        now = time.time()
        if "errors" in fields:
            fields = fields | {
                "errors": orjson.dumps([e.as_dict() for e in fields["errors"]]).decode()
            }
        sets = {"status": to.value, "updated_at": now, **fields}
        stamp = STAMPS.get(to)
        if stamp is not None and getattr(current, stamp) is None:
            sets[stamp] = int(now)
        db.execute(
            f"UPDATE batches SET {', '.join(f'{k}=?' for k in sets)} WHERE id=?",
            (*sets.values(), batch_id),
        )
        return SQLiteStore._get_batch(db, None, batch_id)

    async def transition(
        self, batch_id: str, to: Status, *, only_from: Iterable[Status] | None = None,
        **fields: Any,
    ) -> BatchRecord:
        def q(db: sqlite3.Connection) -> BatchRecord:
            b = self._transition(db, batch_id, to, only_from, fields)
            return b

        return await self._run(q)

    async def advance(self, batch_id: str, path: Sequence[Status]) -> BatchRecord:
        def q(db: sqlite3.Connection) -> BatchRecord:
            b = self._get_batch(db, None, batch_id)
            for status in path:
                b = self._transition(db, batch_id, status, None, {})
            return b

        return await self._run(q)

    async def request_cancel(self, account: str, batch_id: str) -> BatchRecord:
        def q(db: sqlite3.Connection) -> BatchRecord:
            b = self._get_batch(db, account, batch_id)
            if b.status in (Status.CANCEL, Status.CANCELLING):
                return b
            if b.status not in CANCELLABLE:
                raise Conflict(
                    f"Batch {batch_id} is {b.status.value} and can no longer be cancelled.",
                    param="batch_id",
                    code="invalid_status",
                )
            b = self._transition(db, batch_id, Status.CANCEL, None, {})
            return b

        return await self._run(q)

    async def start_processing(
        self, batch_id: str, *, slices: Sequence[Slice], total: int, model: str | None
    ) -> BatchRecord:
        def q(db: sqlite3.Connection) -> BatchRecord:
            b = self._transition(
                db, batch_id, Status.PROCESSING, (Status.VALIDATING,),
                {"total": total, "model": model},
            )
            db.execute("DELETE FROM slices WHERE batch_id=?", (batch_id,))
            db.executemany(
                "INSERT INTO slices (batch_id, no, start_line, n_lines, start_offset, end_offset)"
                " VALUES (?,?,?,?,?,?)",
                [(batch_id, s.no, s.start_line, s.n_lines, s.start_offset, s.end_offset)
                 for s in slices],
            )
            return b

        return await self._run(q)

    async def fail_validation(
        self, batch_id: str, *, errors: Sequence[LineError], total: int
    ) -> BatchRecord:
        return await self.transition(batch_id, Status.VALIDATION_FAILED,
                                     only_from=(Status.VALIDATING,), total=total,
                                     errors=list(errors))

    async def list_slices(self, batch_id: str) -> list[Slice]:
        def q(db: sqlite3.Connection) -> list[Slice]:
            rows = db.execute(
                f"SELECT {_SLICE_COLUMNS} FROM slices WHERE batch_id=? ORDER BY no",
                (batch_id,),
            ).fetchall()
            return [_slice(r) for r in rows]

        return await self._read(q)

    async def record_progress(self, batch_id: str, progress: Sequence[SliceProgress]) -> None:
        fenced = any(p.token is not None for p in progress)

        def q(db: sqlite3.Connection) -> None:
            if fenced:  # before anything is written: all or nothing
                _check_fence(db, batch_id, progress)
            db.executemany(
                "UPDATE slices SET committed_bytes=?, completed=completed+?, failed=failed+?,"
                " done=? WHERE batch_id=? AND no=?",
                [(p.committed_bytes, p.completed, p.failed, int(p.done), batch_id, p.no)
                 for p in progress],
            )
            usage = sum((p.usage for p in progress), NO_USAGE)
            # Token sums saturate at MAX_TOKENS (far inside SQLite's int64): what an
            # upstream reports can never make this statement fail and wedge the batch.
            add = [_tokens(n) for n in (usage.input_tokens, usage.output_tokens,
                                         usage.cached_tokens, usage.reasoning_tokens)]
            db.execute(
                "UPDATE batches SET completed=completed+?, failed=failed+?, updated_at=?,"
                " input_tokens=MIN(input_tokens+?, ?), output_tokens=MIN(output_tokens+?, ?),"
                " cached_tokens=MIN(cached_tokens+?, ?),"
                " reasoning_tokens=MIN(reasoning_tokens+?, ?) WHERE id=?",
                (sum(p.completed for p in progress), sum(p.failed for p in progress),
                 time.time(), add[0], MAX_TOKENS, add[1], MAX_TOKENS, add[2], MAX_TOKENS,
                 add[3], MAX_TOKENS, batch_id),
            )

        await self._run(q)

    async def finish(
        self, batch_id: str, to: Status, *, files: Sequence[FileRecord],
        fin_token: int | None = None, **fields: Any,
    ) -> BatchRecord:
        def q(db: sqlite3.Connection) -> BatchRecord:
            if fin_token is not None:
                row = db.execute("SELECT fin_token FROM batches WHERE id=?",
                                 (batch_id,)).fetchone()
                if row is not None and row["fin_token"] != fin_token:
                    raise Fenced(f"Batch {batch_id} is being finalised under another token.",
                                 param="fin_token")
            for f in files:
                db.execute(
                    f"INSERT OR REPLACE INTO files ({_FILE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                    (f.id, f.account, f.filename, f.purpose, f.bytes, f.sha256, f.created_at,
                     f.expires_at, f.lines),
                )
            b = self._transition(db, batch_id, to, None, fields)
            return b

        return await self._run(q)

    async def deleting_batches(self) -> list[BatchRecord]:
        def q(db: sqlite3.Connection) -> list[BatchRecord]:
            rows = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE status=? ORDER BY seq",
                (Status.DELETING,),
            ).fetchall()
            return [_batch(r) for r in rows]

        return await self._read(q)

    async def delete_batch(self, batch_id: str) -> None:
        def q(db: sqlite3.Connection) -> None:
            b = self._get_batch(db, None, batch_id)
            if b.status is not Status.DELETING:
                raise Conflict(f"Batch {batch_id} is not being deleted.", param="batch_id")
            for file_id in (b.output_file_id, b.error_file_id):
                if file_id is not None:
                    db.execute("DELETE FROM files WHERE id=?", (file_id,))
            db.execute("DELETE FROM batches WHERE id=?", (batch_id,))

        await self._run(q)

    async def unfinished_batches(self) -> list[BatchRecord]:
        def q(db: sqlite3.Connection) -> list[BatchRecord]:
            rows = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE {_UNFINISHED} ORDER BY seq"
            ).fetchall()
            return [_batch(r) for r in rows]

        return await self._read(q)

    # -- leases ---------------------------------------------------------------
    # Every verb is one write job: the writer's transaction (BEGIN IMMEDIATE) keeps out
    # every other writer, of this store or of another on the same file, so a check and
    # the write it guards see the same rows.

    async def claim_slices(
        self, node: str, *, limit: int, lease_seconds: float
    ) -> list[Lease]:
        _positive("lease_seconds", lease_seconds)
        if limit <= 0:
            return []

        def q(db: sqlite3.Connection) -> list[Lease]:
            now = time.time()
            free = db.execute(
                "SELECT s.batch_id, s.no FROM slices AS s JOIN batches AS b ON b.id = s.batch_id"
                " WHERE b.status = 'processing' AND s.done = 0"
                " AND (s.lease_expires IS NULL OR s.lease_expires <= ?)"
                " ORDER BY b.seq, s.no LIMIT ?",
                (now, limit),
            ).fetchall()
            if not free:
                return []
            tokens = _next_tokens(db, len(free))
            expires = now + lease_seconds
            db.executemany(
                "UPDATE slices SET lease_token=?, lease_owner=?, lease_expires=?"
                " WHERE batch_id=? AND no=?",
                [(token, node, expires, r["batch_id"], r["no"])
                 for token, r in zip(tokens, free, strict=True)],
            )
            return [_lease(db.execute(
                f"SELECT {_LEASE_COLUMNS} FROM slices WHERE batch_id=? AND no=?",
                (r["batch_id"], r["no"])).fetchone()) for r in free]

        return await self._run(q)

    async def renew_leases(
        self, leases: Sequence[Lease], *, lease_seconds: float
    ) -> list[Lease]:
        _positive("lease_seconds", lease_seconds)
        if not leases:
            return []

        def q(db: sqlite3.Connection) -> list[Lease]:
            expires = time.time() + lease_seconds
            renewed = []
            for lease in leases:
                cur = db.execute(
                    "UPDATE slices SET lease_expires=? WHERE batch_id=? AND no=?"
                    " AND lease_token=?",
                    (expires, lease.batch_id, lease.slice_no, lease.token),
                )
                if cur.rowcount:
                    renewed.append(_lease(db.execute(
                        f"SELECT {_LEASE_COLUMNS} FROM slices WHERE batch_id=? AND no=?",
                        (lease.batch_id, lease.slice_no)).fetchone()))
            return renewed

        return await self._run(q)

    async def release_leases(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return

        def q(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE slices SET lease_token=NULL, lease_owner=NULL, lease_expires=NULL"
                " WHERE batch_id=? AND no=? AND lease_token=?",
                [(lease.batch_id, lease.slice_no, lease.token) for lease in leases],
            )

        await self._run(q)

    async def claim_finalize(
        self, batch_id: str, node: str, *, lease_seconds: float
    ) -> int | None:
        _positive("lease_seconds", lease_seconds)

        def q(db: sqlite3.Connection) -> int | None:
            now = time.time()
            row = db.execute(
                "SELECT 1 FROM batches WHERE id=?"
                f" AND status IN ({','.join('?' * len(FINALIZING))})"
                " AND (fin_expires IS NULL OR fin_expires <= ?)",
                (batch_id, *sorted(FINALIZING), now),
            ).fetchone()
            if row is None:
                return None
            (token,) = _next_tokens(db, 1)
            db.execute("UPDATE batches SET fin_token=?, fin_owner=?, fin_expires=? WHERE id=?",
                       (token, node, now + lease_seconds, batch_id))
            return token

        return await self._run(q)

    # -- nodes ----------------------------------------------------------------

    async def heartbeat(self, node: str, *, ttl: float) -> int:
        _positive("ttl", ttl)

        def q(db: sqlite3.Connection) -> int:
            now = time.time()
            db.execute("DELETE FROM nodes WHERE expires_at <= ? AND node <> ?", (now, node))
            db.execute(
                "INSERT INTO nodes (node, started_at, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (node) DO UPDATE SET expires_at = excluded.expires_at,"
                " started_at = CASE WHEN nodes.expires_at <= excluded.started_at"
                "  THEN excluded.started_at ELSE nodes.started_at END",
                (node, now, now + ttl),
            )
            return int(db.execute("SELECT count(*) FROM nodes WHERE expires_at > ?",
                                  (now,)).fetchone()[0])

        return await self._run(q)

    async def leave(self, node: str) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM nodes WHERE node=?", (node,))

        await self._run(q)

    # -- keys -----------------------------------------------------------------

    async def create_key(self, key: KeyRecord, key_hash: str) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO api_keys (id, name, account, role, key_hash, created_at)"
                " VALUES (?,?,?,?,?,?)",
                (key.id, key.name, key.account, key.role, key_hash, key.created_at),
            )

        await self._run(q)

    async def principal_for(self, key_hash: str) -> Principal | None:
        def q(db: sqlite3.Connection) -> Principal | None:
            row = db.execute(
                "SELECT id, account, role FROM api_keys WHERE key_hash=? AND revoked_at IS NULL",
                (key_hash,),
            ).fetchone()
            return None if row is None else Principal(row["account"], row["id"], row["role"])

        return await self._read(q)

    async def list_keys(self) -> list[KeyRecord]:
        def q(db: sqlite3.Connection) -> list[KeyRecord]:
            rows = db.execute(
                "SELECT id, name, account, role, created_at, revoked_at FROM api_keys"
                " ORDER BY created_at, id"
            ).fetchall()
            return [KeyRecord(**{k: r[k] for k in r.keys()}) for r in rows]  # noqa: SIM118

        return await self._read(q)

    async def revoke_key(self, key_id: str) -> None:
        def q(db: sqlite3.Connection) -> None:
            cur = db.execute(
                "UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                (int(time.time()), key_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"No such live key: {key_id}", param="key_id")

        await self._run(q)

    # -- roles ----------------------------------------------------------------

    async def create_role(self, account: str, role: Role) -> None:
        def q(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    "INSERT INTO roles (account, name, actions, operations, created_at)"
                    " VALUES (?,?,?,?,?)",
                    (account, role.name, orjson.dumps(sorted(role.actions)).decode(),
                     orjson.dumps(sorted(role.operations)).decode(), int(time.time())),
                )
            except sqlite3.IntegrityError as e:
                raise Conflict(f"A role named {role.name!r} exists.", param="name") from e

        await self._run(q)

    async def get_role(self, account: str, name: str) -> Role | None:
        def q(db: sqlite3.Connection) -> Role | None:
            row = db.execute(
                "SELECT name, actions, operations FROM roles WHERE account=? AND name=?",
                (account, name),
            ).fetchone()
            return None if row is None else _role(row)

        return await self._read(q)

    async def list_roles(self, account: str | None) -> list[tuple[str, Role]]:
        def q(db: sqlite3.Connection) -> list[tuple[str, Role]]:
            if account is None:
                rows = db.execute("SELECT account, name, actions, operations FROM roles"
                                  " ORDER BY account, name")
            else:
                rows = db.execute("SELECT account, name, actions, operations FROM roles"
                                  " WHERE account=? ORDER BY name", (account,))
            return [(r["account"], _role(r)) for r in rows.fetchall()]

        return await self._read(q)


def _role(row: sqlite3.Row) -> Role:
    return make_role(row["name"], orjson.loads(row["actions"]), orjson.loads(row["operations"]))


def _translate(e: BaseException) -> BaseException:
    """A driver error as Barge's own; Barge's own errors pass as they are."""
    if isinstance(e, sqlite3.OperationalError):
        if "full" in str(e):
            return StorageError("The disk holding the database is full.")
        return StoreUnavailable(f"The database failed: {e}")
    return e


def split_statements(sql: str) -> list[str]:
    """Split a migration file into statements (no string in it holds a semicolon); a
    ``CREATE TRIGGER`` stays whole, the statements of its ``BEGIN … END`` body included."""
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    statements: list[str] = []
    pending = ""
    for part in "\n".join(lines).split(";"):
        pending = f"{pending};{part}" if pending else part
        text = pending.strip()
        if _TRIGGER.match(text) and not _TRIGGER_END.search(text):
            continue  # inside a trigger's body
        if text:
            statements.append(text)
        pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return statements


_TRIGGER = re.compile(r"CREATE\s+(TEMP\s+|TEMPORARY\s+)?TRIGGER\b", re.I)
_TRIGGER_END = re.compile(r"\bEND$", re.I)


if TYPE_CHECKING:  # mypy checks that SQLiteStore is a Store, method for method

    def _is_a_store(s: SQLiteStore) -> Store:
        return s
