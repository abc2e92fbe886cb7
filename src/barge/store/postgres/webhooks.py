"""The PostgreSQL verbs on webhooks: the endpoints accounts register, and the outbox of
their batches' events (filled by the statement of each move, ``moves._Move``), which
the nodes' senders claim (FOR UPDATE SKIP LOCKED), record and purge."""

from __future__ import annotations

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
from barge.store.postgres.base import Verbs
from barge.store.postgres.rows import _NOW, _NOW_S
from barge.store.rows import (
    _WEBHOOK_CLAIM_COLUMNS,
    _WEBHOOK_DELIVERY_COLUMNS,
    _WEBHOOK_ENDPOINT_COLUMNS,
    _attempt_outcome,
    _webhook_claim,
    _webhook_delivery,
    _webhook_endpoint,
)

_OPEN = "('pending', 'failing')"  # OPEN_DELIVERY, as spelled in the due index
assert set(_OPEN[1:-1].replace("'", "").split(", ")) == set(OPEN_DELIVERY)


class WebhookVerbs(Verbs):
    # -- endpoints ------------------------------------------------------------

    async def create_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        await self._fetchrow(
            f"INSERT INTO webhook_endpoints ({_WEBHOOK_ENDPOINT_COLUMNS})"
            " VALUES ($1, $2, $3, $4::jsonb, $5, $6)",
            endpoint.id, endpoint.account, endpoint.url,
            orjson.dumps(list(endpoint.events)).decode(), endpoint.secret,
            endpoint.created_at, read=False,
        )

    async def list_webhook_endpoints(self, account: str | None) -> list[WebhookEndpoint]:
        if account is None:
            rows = await self._fetch(
                f"SELECT {_WEBHOOK_ENDPOINT_COLUMNS} FROM webhook_endpoints"
                " WHERE deleted_at IS NULL ORDER BY seq")
        else:
            rows = await self._fetch(
                f"SELECT {_WEBHOOK_ENDPOINT_COLUMNS} FROM webhook_endpoints"
                " WHERE account = $1 AND deleted_at IS NULL ORDER BY seq", account)
        return [_webhook_endpoint(r) for r in rows]

    async def delete_webhook_endpoint(self, account: str | None, endpoint_id: str) -> None:
        # One statement: the endpoint goes and its open deliveries are given up together.
        row = await self._fetchrow(
            "WITH gone AS (UPDATE webhook_endpoints SET deleted_at = "
            f"{_NOW_S}, secret = '' WHERE id = $1 AND deleted_at IS NULL"
            " AND ($2::text IS NULL OR account = $2) RETURNING id),"
            " stopped AS (UPDATE webhook_deliveries SET status = 'given_up', last_error = $3,"
            "  next_attempt_at = NULL, claimed_by = NULL, claimed_until = NULL"
            f"  WHERE endpoint_id IN (SELECT id FROM gone) AND status IN {_OPEN})"
            " SELECT count(*) AS n FROM gone",
            endpoint_id, account, ENDPOINT_DELETED, read=False,
        )
        if not row["n"]:
            raise NotFound(f"No such webhook endpoint: {endpoint_id}", param="webhook_id")

    # -- the outbox -----------------------------------------------------------

    async def webhook_deliveries(self, batch_id: str) -> list[WebhookDelivery]:
        rows = await self._fetch(
            f"SELECT {_WEBHOOK_DELIVERY_COLUMNS} FROM webhook_deliveries AS d"
            " JOIN webhook_endpoints AS e ON e.id = d.endpoint_id"
            " WHERE d.batch_id = $1 ORDER BY d.seq", batch_id)
        return [_webhook_delivery(r) for r in rows]

    async def claim_webhook_deliveries(
        self, claimer: str, *, limit: int, lease_seconds: float
    ) -> list[WebhookClaim]:
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive, not {lease_seconds!r}")
        if limit <= 0:
            return []
        # SKIP LOCKED: a delivery another node is claiming right now is passed over; one
        # claimed since this statement's snapshot fails the re-check of its row (its
        # claim is live) and is left out.
        rows = await self._fetch(
            "WITH due AS (SELECT d.seq FROM webhook_deliveries AS d"
            "  JOIN webhook_endpoints AS e ON e.id = d.endpoint_id"
            f"  WHERE d.status IN {_OPEN} AND d.next_attempt_at <= {_NOW}"
            f"  AND (d.claimed_until IS NULL OR d.claimed_until <= {_NOW})"
            "  AND e.deleted_at IS NULL"
            "  ORDER BY d.next_attempt_at, d.seq LIMIT $2 FOR UPDATE OF d SKIP LOCKED)"
            f" UPDATE webhook_deliveries AS d SET claimed_by = $1, claimed_until = {_NOW} + $3"
            " FROM due, webhook_endpoints AS e"
            " WHERE d.seq = due.seq AND e.id = d.endpoint_id"
            f" RETURNING d.next_attempt_at AS due_at, d.seq, {_WEBHOOK_CLAIM_COLUMNS}",
            claimer, limit, float(lease_seconds), read=False,
        )
        rows.sort(key=lambda r: (r["due_at"], r["seq"]))
        return [_webhook_claim(r) for r in rows]

    async def record_webhook_attempt(self, claim: WebhookClaim,
                                     attempt: WebhookAttempt) -> bool:
        retry_in = None if attempt.retry_in is None or attempt.delivered \
            else max(0.0, float(attempt.retry_in))
        row = await self._fetchrow(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, status = $1,"
            f" next_attempt_at = {_NOW} + $2::float8, last_attempt_at = {_NOW},"
            " last_status_code = $3, last_error = $4,"
            f" delivered_at = CASE WHEN $5::bool THEN {_NOW} END,"
            " claimed_by = NULL, claimed_until = NULL"
            f" WHERE event_id = $6 AND endpoint_id = $7 AND claimed_by = $8 AND status IN {_OPEN}"
            " RETURNING seq",
            _attempt_outcome(attempt), retry_in, attempt.status_code,
            None if attempt.error is None else clip_error(attempt.error), attempt.delivered,
            claim.event_id, claim.endpoint_id, claim.claimer, read=False,
        )
        return row is not None

    async def release_webhook_claims(self, claimer: str) -> None:
        await self._fetchrow(
            "UPDATE webhook_deliveries SET claimed_by = NULL, claimed_until = NULL"
            " WHERE claimed_by = $1", claimer, read=False)

    async def pending_webhook_deliveries(self) -> int:
        row = await self._fetchrow(
            f"SELECT count(*) AS n FROM webhook_deliveries WHERE status IN {_OPEN}")
        return int(row["n"])

    async def purge_webhook_deliveries(self, *, older_than: float) -> int:
        # Both deletes see the rows as they were: an endpoint whose last deliveries go
        # now goes at the next purge.
        row = await self._fetchrow(
            "WITH gone AS (DELETE FROM webhook_deliveries"
            f"  WHERE status NOT IN {_OPEN} AND created_at < {_NOW} - $1 RETURNING endpoint_id),"
            " ends AS (DELETE FROM webhook_endpoints AS e"
            f"  WHERE e.deleted_at < {_NOW} - $1 AND NOT EXISTS (SELECT 1 FROM"
            "  webhook_deliveries AS d WHERE d.endpoint_id = e.id))"
            " SELECT count(*) AS n FROM gone",
            float(older_than), read=False,
        )
        return int(row["n"])
