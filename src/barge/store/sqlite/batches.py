"""The SQLite verbs on batches: create, read, list, move along the lifecycle, delete."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from barge.domain.models import BatchRecord, LineError, Slice
from barge.domain.status import CANCELLABLE, Status
from barge.exceptions import Conflict, NotFound
from barge.store.protocol import Page
from barge.store.rows import _BATCH_COLUMNS, _CREATED_MS, _UNFINISHED, _batch, _clamp
from barge.store.sqlite.base import Verbs, _position


class BatchVerbs(Verbs):
    # -- batches --------------------------------------------------------------

    async def create_batch(self, b: BatchRecord) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO batches (id, account, endpoint, completion_window, input_file_id,"
                " status, created_at, updated_at, expires_at, metadata, total,"
                " output_expiry_seconds, hash, created_ms, metadata_json, result_commits)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (b.id, b.account, b.endpoint, b.completion_window, b.input_file_id,
                 b.status.value, b.created_at, b.updated_at, b.expires_at,
                 orjson.dumps(b.metadata).decode() if b.metadata is not None else None,
                 b.total, b.output_expiry_seconds, b.hash, b.created_ms,
                 None if b.metadata_json is None else int(b.metadata_json),
                 b.result_commits),
            )

        await self._run(q)

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
            db.execute("DELETE FROM results WHERE batch_id=?", (batch_id,))
            db.execute("DELETE FROM result_log WHERE batch_id=?", (batch_id,))
            db.execute("DELETE FROM batches WHERE id=?", (batch_id,))

        await self._run(q)

    async def unfinished_batches(self) -> list[BatchRecord]:
        def q(db: sqlite3.Connection) -> list[BatchRecord]:
            rows = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE {_UNFINISHED} ORDER BY seq"
            ).fetchall()
            return [_batch(r) for r in rows]

        return await self._read(q)
