"""The PostgreSQL verbs on batches: create, read, list, move along the lifecycle,
delete."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from barge.domain.models import BatchRecord, LineError, Slice
from barge.domain.status import CANCELLABLE, Status
from barge.exceptions import Conflict, NotFound
from barge.store.postgres.base import Verbs
from barge.store.postgres.moves import _Move
from barge.store.protocol import Page
from barge.store.rows import _BATCH_COLUMNS, _CREATED_MS, _UNFINISHED, _batch, _clamp


class BatchVerbs(Verbs):
    # -- batches --------------------------------------------------------------

    async def create_batch(self, b: BatchRecord) -> None:
        await self._fetchrow(
            "INSERT INTO batches (id, account, endpoint, completion_window, input_file_id,"
            " status, created_at, updated_at, expires_at, metadata, total,"
            " output_expiry_seconds, hash, created_ms, metadata_json, result_commits)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10::json,$11,$12,$13,$14,$15,$16)",
            b.id, b.account, b.endpoint, b.completion_window, b.input_file_id,
            b.status.value, b.created_at, b.updated_at, b.expires_at,
            orjson.dumps(b.metadata).decode() if b.metadata is not None else None,
            b.total, b.output_expiry_seconds, b.hash, b.created_ms, b.metadata_json,
            b.result_commits, read=False,
        )

    async def get_batch(self, account: str | None, batch_id: str) -> BatchRecord:
        if account is None:
            row = await self._fetchrow(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id=$1", batch_id)
        else:
            row = await self._fetchrow(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id=$1 AND account=$2"
                " AND status <> 'deleting'", batch_id, account)
        if row is None:
            raise NotFound(f"No such batch: {batch_id}", param="batch_id")
        return _batch(row)

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
        where, args = ["status <> 'deleting'"], []
        bounds = (("created_at >=", created_after), ("created_at <=", created_before),
                  (f"{_CREATED_MS} >=", created_after_ms),
                  (f"{_CREATED_MS} <=", created_before_ms))
        for clause, bound in bounds:
            if bound is not None:
                args.append(_clamp(bound))
                where.append(f"{clause} ${len(args) + 1}")
        rows, more = await self._page(
            "batches", _BATCH_COLUMNS, where, args, account=account, after=after,
            ascending=oldest_first, limit=limit, param="after", what="batch",
        )
        return Page([_batch(r) for r in rows], more)

    async def transition(
        self, batch_id: str, to: Status, *, only_from: Iterable[Status] | None = None,
        **fields: Any,
    ) -> BatchRecord:
        return await self._transition(batch_id, _Move([to], only_from, fields))

    async def advance(self, batch_id: str, path: Sequence[Status]) -> BatchRecord:
        if not path:
            return await self.get_batch(None, batch_id)
        return await self._transition(batch_id, _Move(path, None, {}))

    async def request_cancel(self, account: str, batch_id: str) -> BatchRecord:
        move = _Move([Status.CANCEL], CANCELLABLE, {}, account=account)
        moved, b = await self._move(batch_id, move)
        if moved or b.status in (Status.CANCEL, Status.CANCELLING):
            return b
        raise Conflict(
            f"Batch {batch_id} is {b.status.value} and can no longer be cancelled.",
            param="batch_id",
            code="invalid_status",
        )

    async def start_processing(
        self, batch_id: str, *, slices: Sequence[Slice], total: int, model: str | None
    ) -> BatchRecord:
        if len({s.no for s in slices}) != len(slices):
            raise ValueError("two slices share a number")
        move = _Move([Status.PROCESSING], (Status.VALIDATING,), {"total": total, "model": model})
        n = len(move.args)
        # Slices left from an earlier start (none, by the lifecycle) give way to these.
        return await self._transition(
            batch_id, move,
            f"cleared AS (DELETE FROM slices WHERE batch_id = $1"
            f" AND EXISTS (SELECT 1 FROM moved) AND no <> ALL(${n + 1}::bigint[]))",
            f"cut AS (INSERT INTO slices (batch_id, no, start_line, n_lines, start_offset,"
            f" end_offset) SELECT $1, * FROM unnest(${n + 1}::bigint[], ${n + 2}::bigint[],"
            f" ${n + 3}::bigint[], ${n + 4}::bigint[], ${n + 5}::bigint[])"
            f" WHERE EXISTS (SELECT 1 FROM moved)"
            f" ON CONFLICT (batch_id, no) DO UPDATE SET start_line = excluded.start_line,"
            f" n_lines = excluded.n_lines, start_offset = excluded.start_offset,"
            f" end_offset = excluded.end_offset, committed_bytes = 0, completed = 0,"
            f" failed = 0, done = FALSE)",
            extra_args=[[s.no for s in slices], [s.start_line for s in slices],
                        [s.n_lines for s in slices], [s.start_offset for s in slices],
                        [s.end_offset for s in slices]],
        )

    async def fail_validation(
        self, batch_id: str, *, errors: Sequence[LineError], total: int
    ) -> BatchRecord:
        return await self.transition(batch_id, Status.VALIDATION_FAILED,
                                     only_from=(Status.VALIDATING,), total=total,
                                     errors=list(errors))

    async def deleting_batches(self) -> list[BatchRecord]:
        rows = await self._fetch(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE status = 'deleting' ORDER BY seq")
        return [_batch(r) for r in rows]

    async def delete_batch(self, batch_id: str) -> None:
        row = await self._fetchrow(
            "WITH b AS (SELECT id, status, output_file_id, error_file_id FROM batches"
            "  WHERE id = $1 FOR UPDATE),"
            " dropped_files AS (DELETE FROM files WHERE id IN"
            "  (SELECT output_file_id FROM b WHERE status = 'deleting'"
            "   UNION ALL SELECT error_file_id FROM b WHERE status = 'deleting')),"
            " dropped_results AS (DELETE FROM results WHERE batch_id IN"
            "  (SELECT id FROM b WHERE status = 'deleting')),"
            " dropped_log AS (DELETE FROM result_log WHERE batch_id IN"
            "  (SELECT id FROM b WHERE status = 'deleting')),"
            " dropped_batch AS (DELETE FROM batches WHERE id IN"
            "  (SELECT id FROM b WHERE status = 'deleting'))"
            " SELECT status FROM b",
            batch_id, read=False,
        )
        if row is None:
            raise NotFound(f"No such batch: {batch_id}", param="batch_id")
        if row["status"] != Status.DELETING:
            raise Conflict(f"Batch {batch_id} is not being deleted.", param="batch_id")

    async def unfinished_batches(self) -> list[BatchRecord]:
        rows = await self._fetch(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE {_UNFINISHED} ORDER BY seq")
        return [_batch(r) for r in rows]
