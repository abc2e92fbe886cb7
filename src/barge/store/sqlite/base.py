"""What the SQLite verbs share: the store's two ways to the database, a list's cursor,
and reading and moving a batch inside an open transaction."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from barge.domain.models import BatchRecord
from barge.domain.status import STAMPS, Status, can_transition
from barge.domain.webhooks import EVENT_FOR_STATUS, new_event_id
from barge.exceptions import Conflict, NotFound
from barge.store.rows import _BATCH_COLUMNS, _batch
from barge.store.sqlite.rows import _SETTABLE

R = TypeVar("R")


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


class Verbs:
    """The base of the mixins ``SQLiteStore`` is made of, one per domain; ``_run`` and
    ``_read`` are the store's own (``store.py``)."""

    if TYPE_CHECKING:

        async def _run(self, fn: Callable[[sqlite3.Connection], R]) -> R: ...

        async def _read(self, fn: Callable[[sqlite3.Connection], R]) -> R: ...

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

    @staticmethod
    def _transition(
        db: sqlite3.Connection,
        batch_id: str,
        to: Status,
        only_from: Iterable[Status] | None,
        fields: dict[str, Any],
    ) -> BatchRecord:
        """Inside an open transaction: check the move, write it, return the new record."""
        current = Verbs._get_batch(db, None, batch_id)
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
        event = EVENT_FOR_STATUS.get(to)
        if event is not None:
            _enqueue_webhooks(db, current.account, batch_id, event.value, now)
        return Verbs._get_batch(db, None, batch_id)


def _enqueue_webhooks(db: sqlite3.Connection, account: str, batch_id: str, event: str,
                      now: float) -> None:
    """Inside the transaction that moves the batch: one new event, and a pending
    delivery of it, due now, for each live endpoint of ``account`` that wants it."""
    db.execute(
        "INSERT INTO webhook_deliveries (event_id, endpoint_id, account, batch_id, type,"
        " created_at, status, next_attempt_at)"
        " SELECT ?, id, account, ?, ?, ?, 'pending', ? FROM webhook_endpoints"
        " WHERE account=? AND deleted_at IS NULL AND instr(events, ?) > 0 ORDER BY seq",
        (new_event_id(), batch_id, event, int(now), now, account, f'"{event}"'),
    )
