-- Barge schema, version 12: webhooks for batch events (``barge.domain.webhooks``; see
-- README.md, "Webhooks").

-- The endpoints accounts registered: where their batches' events go, the events each
-- wants (a JSON array of names such as "batch.completed") and the secret that signs
-- them. A deleted endpoint keeps its row, so that its deliveries still name its url,
-- with ``deleted_at`` set and its secret wiped.
CREATE TABLE webhook_endpoints (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    account     TEXT NOT NULL,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    deleted_at  INTEGER
);
CREATE INDEX webhook_endpoints_account ON webhook_endpoints (account, seq);

-- The outbox: one row per event and endpoint, inserted in the transaction that moves
-- the batch into the status the event tells of, so that no event is lost and none is
-- made twice. ``status`` is pending, failing, delivered or given_up; the sender claims
-- a due row (``next_attempt_at`` past, no live claim) for one attempt under its
-- ``claimed_by`` until ``claimed_until`` (Unix seconds), and records the outcome under
-- that claim only. ``created_at`` is the event's time.
CREATE TABLE webhook_deliveries (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id          TEXT NOT NULL,
    endpoint_id       TEXT NOT NULL,
    account           TEXT NOT NULL,
    batch_id          TEXT NOT NULL,
    type              TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    status            TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   REAL,
    last_attempt_at   REAL,
    last_status_code  INTEGER,
    last_error        TEXT,
    delivered_at      REAL,
    claimed_by        TEXT,
    claimed_until     REAL,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_batch ON webhook_deliveries (batch_id, seq);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id);
-- What the sender looks for, and the pending gauge counts.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'failing');
