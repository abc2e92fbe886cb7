"""The one statement that moves a batch along its lifecycle."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from barge.domain.status import STAMPS, Status, can_transition
from barge.domain.webhooks import EVENT_FOR_STATUS, new_event_id
from barge.exceptions import Conflict
from barge.store.postgres.rows import _NOW, _NOW_S, _SETTABLE
from barge.store.rows import _BATCH_COLUMNS


class _Move:
    """One statement that moves a batch along ``path`` (each step checked as by
    ``transition``) and returns either the moved record (``moved`` true) or, when the
    move was not allowed, the record as it stands (``moved`` false); no row: no such
    batch. ``extra`` CTEs may follow, each seeing the CTE ``moved``. With ``fin_token``,
    the move is also fenced: only while that is the batch's finalisation token (the row
    returned carries ``fin_token`` either way). A move into a status that sends a
    webhook event also inserts, in the CTE ``webhooks``, one delivery of one new event
    per live endpoint of the batch's account that wants it."""

    def __init__(
        self,
        path: Sequence[Status],
        only_from: Iterable[Status] | None,
        fields: dict[str, Any],
        *,
        account: str | None = None,
        fin_token: int | None = None,
    ) -> None:
        unknown = set(fields) - set(_SETTABLE)
        if unknown:
            raise ValueError(f"not settable: {sorted(unknown)}")
        self.path = list(path)
        self.only_from = None if only_from is None else set(only_from)
        allowed = {s for s in Status if can_transition(s, self.path[0])}
        if self.only_from is not None:
            allowed &= self.only_from
        if any(not can_transition(a, b) for a, b in zip(self.path, self.path[1:], strict=False)):
            allowed = set()
        self.allowed = allowed
        self.args: list[Any] = []
        batch_id = self.arg(None)  # $1, filled in by ``sql``
        sets = [f"status = {self.arg(self.path[-1].value)}", f"updated_at = {_NOW}"]
        for stamp in dict.fromkeys(STAMPS[s] for s in self.path if s in STAMPS):
            sets.append(f"{stamp} = COALESCE({stamp}, {_NOW_S})")
        for name, value in fields.items():
            if name == "errors":
                value = orjson.dumps([e.as_dict() for e in value]).decode()
            sets.append(f"{name} = {self.arg(value)}::{_SETTABLE[name]}")
        where = f"id = {batch_id}"
        if account is not None:
            where += f" AND account = {self.arg(account)} AND status <> 'deleting'"
        self.fin_token = fin_token
        fence = "" if fin_token is None else f" AND fin_token = {self.arg(fin_token)}::bigint"
        self._update = (
            f"UPDATE batches SET {', '.join(sets)}"
            f" WHERE {where} AND status = ANY({self.arg(sorted(s.value for s in allowed))}::text[])"
            f"{fence} RETURNING {_BATCH_COLUMNS}, fin_token"
        )
        self._current = f"SELECT FALSE, {_BATCH_COLUMNS}, fin_token FROM batches WHERE {where}"
        self._outbox: str | None = None
        event = EVENT_FOR_STATUS.get(self.path[-1])
        if event is not None:
            kind = self.arg(event.value)
            self._outbox = (
                "webhooks AS (INSERT INTO webhook_deliveries (event_id, endpoint_id, account,"
                " batch_id, type, created_at, status, next_attempt_at)"
                f" SELECT {self.arg(new_event_id())}, e.id, e.account, m.id, {kind}::text,"
                f" {_NOW_S}, 'pending', {_NOW} FROM moved AS m JOIN webhook_endpoints AS e"
                " ON e.account = m.account AND e.deleted_at IS NULL"
                f" AND e.events ? {kind}::text ORDER BY e.seq)"
            )

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def sql(self, batch_id: str, *extra: str) -> tuple[str, list[Any]]:
        outbox = [] if self._outbox is None else [self._outbox]
        ctes = ",\n".join([f"moved AS ({self._update})", *outbox, *extra])
        return (
            f"WITH {ctes}\n"
            f"SELECT TRUE AS moved, {_BATCH_COLUMNS}, fin_token FROM moved UNION ALL"
            f" {self._current} AND NOT EXISTS (SELECT 1 FROM moved)",
            [batch_id, *self.args[1:]],
        )

    def refusal(self, batch_id: str, current: Status) -> Conflict:
        """The Conflict a refused move raises: the first step that cannot be taken."""
        status = current
        for i, step in enumerate(self.path):
            refused = not can_transition(status, step) or (
                i == 0 and self.only_from is not None and current not in self.only_from
            )
            if refused:
                return Conflict(
                    f"Batch {batch_id} is {status.value}; it cannot become {step.value}.",
                    param="batch_id", code="invalid_status",
                )
            status = step
        return Conflict(f"Batch {batch_id} changed while it was being moved.",
                        param="batch_id", code="invalid_status")
