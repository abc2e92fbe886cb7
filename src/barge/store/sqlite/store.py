"""``SQLiteStore``: its two connections, the writer thread that commits writes in
groups, and the translation of driver errors; the verbs come from its mixins."""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barge.exceptions import StorageError, StoreUnavailable
from barge.store.protocol import PING_TIMEOUT, Store
from barge.store.sqlite.access import AccessVerbs
from barge.store.sqlite.base import R
from barge.store.sqlite.batches import BatchVerbs
from barge.store.sqlite.files import FileVerbs
from barge.store.sqlite.migrations import migrations, split_statements
from barge.store.sqlite.webhooks import WebhookVerbs
from barge.store.sqlite.work import WorkVerbs

_Job = tuple[Callable[[sqlite3.Connection], Any], "Future[Any]"]
MAX_GROUP = 256  # writes that may share one commit


class SQLiteStore(FileVerbs, BatchVerbs, WorkVerbs, AccessVerbs, WebhookVerbs):
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

    async def ping(self, timeout: float = PING_TIMEOUT) -> None:
        """A read of the schema table on the reader connection (it never waits for a
        writer for long), and a look that the writer thread still runs."""
        if self._writer is None or not self._writer.is_alive():
            raise StoreUnavailable("The store is closed.")
        await self._read(lambda db: db.execute("SELECT 1 FROM sqlite_master LIMIT 1")
                         .fetchall())

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


def _translate(e: BaseException) -> BaseException:
    """A driver error as Barge's own; Barge's own errors pass as they are."""
    if isinstance(e, sqlite3.OperationalError):
        if "full" in str(e):
            return StorageError("The disk holding the database is full.")
        return StoreUnavailable(f"The database failed: {e}")
    return e


if TYPE_CHECKING:  # mypy checks that SQLiteStore is a Store, method for method

    def _is_a_store(s: SQLiteStore) -> Store:
        return s
