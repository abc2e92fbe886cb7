"""The SQLite verbs on webhooks: the endpoints accounts register, and the outbox of
their batches' events (filled by ``base._transition``), which the sender claims,
records and purges."""

from __future__ import annotations

import sqlite3
import time

import orjson

from barge.domain.webhooks import (
    ENDPOINT_DELETED,
    OPEN_DELIVERY,
    WebhookAttempt,
    WebhookClaim,
    WebhookDelivery,
    WebhookEndpoint,
    clip_error,
)
from barge.exceptions import NotFound
from barge.store.rows import (
    _WEBHOOK_CLAIM_COLUMNS,
    _WEBHOOK_DELIVERY_COLUMNS,
    _WEBHOOK_ENDPOINT_COLUMNS,
    _attempt_outcome,
    _webhook_claim,
    _webhook_delivery,
    _webhook_endpoint,
)
from barge.store.sqlite.base import Verbs

_OPEN = "('pending', 'failing')"  # OPEN_DELIVERY, as spelled in the due index
assert set(_OPEN[1:-1].replace("'", "").split(", ")) == set(OPEN_DELIVERY)

# Due deliveries of live endpoints, soonest first; parameters: now, now.
_DUE = (
    "FROM webhook_deliveries AS d JOIN webhook_endpoints AS e ON e.id = d.endpoint_id"
    f" WHERE d.status IN {_OPEN} AND d.next_attempt_at <= ?"
    " AND (d.claimed_until IS NULL OR d.claimed_until <= ?) AND e.deleted_at IS NULL"
)


class WebhookVerbs(Verbs):
    # -- endpoints ------------------------------------------------------------

    async def create_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO webhook_endpoints ({_WEBHOOK_ENDPOINT_COLUMNS})"
                " VALUES (?,?,?,?,?,?)",
                (endpoint.id, endpoint.account, endpoint.url,
                 orjson.dumps(list(endpoint.events)).decode(), endpoint.secret,
                 endpoint.created_at),
            )

        await self._run(q)

    async def list_webhook_endpoints(self, account: str | None) -> list[WebhookEndpoint]:
        def q(db: sqlite3.Connection) -> list[WebhookEndpoint]:
            if account is None:
                rows = db.execute(
                    f"SELECT {_WEBHOOK_ENDPOINT_COLUMNS} FROM webhook_endpoints"
                    " WHERE deleted_at IS NULL ORDER BY seq")
            else:
                rows = db.execute(
                    f"SELECT {_WEBHOOK_ENDPOINT_COLUMNS} FROM webhook_endpoints"
                    " WHERE account=? AND deleted_at IS NULL ORDER BY seq", (account,))
            return [_webhook_endpoint(r) for r in rows.fetchall()]

        return await self._read(q)

    async def delete_webhook_endpoint(self, account: str | None, endpoint_id: str) -> None:
        def q(db: sqlite3.Connection) -> None:
            now = int(time.time())
            only = "" if account is None else " AND account=?"
            cur = db.execute(
                "UPDATE webhook_endpoints SET deleted_at=?, secret=''"
                f" WHERE id=? AND deleted_at IS NULL{only}",
                (now, endpoint_id, *(() if account is None else (account,))),
            )
            if cur.rowcount == 0:
                raise NotFound(f"No such webhook endpoint: {endpoint_id}",
                               param="webhook_id")
            db.execute(
                "UPDATE webhook_deliveries SET status='given_up', last_error=?,"
                " next_attempt_at=NULL, claimed_by=NULL, claimed_until=NULL"
                f" WHERE endpoint_id=? AND status IN {_OPEN}",
                (ENDPOINT_DELETED, endpoint_id),
            )

        await self._run(q)

    # -- the outbox -----------------------------------------------------------

    async def webhook_deliveries(self, batch_id: str) -> list[WebhookDelivery]:
        def q(db: sqlite3.Connection) -> list[WebhookDelivery]:
            rows = db.execute(
                f"SELECT {_WEBHOOK_DELIVERY_COLUMNS} FROM webhook_deliveries AS d"
                " JOIN webhook_endpoints AS e ON e.id = d.endpoint_id"
                " WHERE d.batch_id=? ORDER BY d.seq", (batch_id,)).fetchall()
            return [_webhook_delivery(r) for r in rows]

        return await self._read(q)

    async def claim_webhook_deliveries(
        self, claimer: str, *, limit: int, lease_seconds: float
    ) -> list[WebhookClaim]:
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive, not {lease_seconds!r}")
        if limit <= 0:
            return []
        # A look on the reader first: while nothing is due (nearly always), the writer
        # and its commits are left alone.
        now = time.time()
        if await self._read(lambda db: db.execute(f"SELECT 1 {_DUE} LIMIT 1",
                                                  (now, now)).fetchone()) is None:
            return []

        def q(db: sqlite3.Connection) -> list[WebhookClaim]:
            # One write job: no other claimer, of this store or another on the file,
            # comes between the look and the claim.
            now = time.time()
            due = [r[0] for r in db.execute(
                f"SELECT d.seq {_DUE} ORDER BY d.next_attempt_at, d.seq LIMIT ?",
                (now, now, limit)).fetchall()]
            if not due:
                return []
            marks = ",".join("?" * len(due))
            db.execute(
                "UPDATE webhook_deliveries SET claimed_by=?, claimed_until=?"
                f" WHERE seq IN ({marks})", (claimer, now + lease_seconds, *due))
            rows = db.execute(
                f"SELECT {_WEBHOOK_CLAIM_COLUMNS} FROM webhook_deliveries AS d"
                " JOIN webhook_endpoints AS e ON e.id = d.endpoint_id"
                f" WHERE d.seq IN ({marks}) ORDER BY d.next_attempt_at, d.seq", due).fetchall()
            return [_webhook_claim(r) for r in rows]

        return await self._run(q)

    async def record_webhook_attempt(self, claim: WebhookClaim,
                                     attempt: WebhookAttempt) -> bool:
        status = _attempt_outcome(attempt)
        error = None if attempt.error is None else clip_error(attempt.error)

        def q(db: sqlite3.Connection) -> bool:
            now = time.time()
            retry_at = None if attempt.retry_in is None or attempt.delivered \
                else now + max(0.0, attempt.retry_in)
            cur = db.execute(
                "UPDATE webhook_deliveries SET attempts=attempts+1, status=?,"
                " next_attempt_at=?, last_attempt_at=?, last_status_code=?, last_error=?,"
                " delivered_at=?, claimed_by=NULL, claimed_until=NULL"
                f" WHERE event_id=? AND endpoint_id=? AND claimed_by=? AND status IN {_OPEN}",
                (status, retry_at, now, attempt.status_code, error,
                 now if attempt.delivered else None, claim.event_id, claim.endpoint_id,
                 claim.claimer),
            )
            return cur.rowcount > 0

        return await self._run(q)

    async def release_webhook_claims(self, claimer: str) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute("UPDATE webhook_deliveries SET claimed_by=NULL, claimed_until=NULL"
                       " WHERE claimed_by=?", (claimer,))

        await self._run(q)

    async def pending_webhook_deliveries(self) -> int:
        def q(db: sqlite3.Connection) -> int:
            return int(db.execute("SELECT count(*) FROM webhook_deliveries"
                                  f" WHERE status IN {_OPEN}").fetchone()[0])

        return await self._read(q)

    async def purge_webhook_deliveries(self, *, older_than: float) -> int:
        def q(db: sqlite3.Connection) -> int:
            cutoff = time.time() - older_than
            gone = db.execute(
                f"DELETE FROM webhook_deliveries WHERE status NOT IN {_OPEN}"
                " AND created_at < ?", (cutoff,)).rowcount
            db.execute(
                "DELETE FROM webhook_endpoints WHERE deleted_at < ? AND NOT EXISTS"
                " (SELECT 1 FROM webhook_deliveries AS d WHERE d.endpoint_id ="
                " webhook_endpoints.id)", (cutoff,))
            return int(gone)

        return await self._run(q)
