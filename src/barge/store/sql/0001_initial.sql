-- Barge schema, version 1.
CREATE TABLE files (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    account     TEXT NOT NULL,
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    lines       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX files_account ON files (account, seq);

CREATE TABLE batches (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    id                 TEXT NOT NULL UNIQUE,
    account            TEXT NOT NULL,
    endpoint           TEXT NOT NULL,
    completion_window  TEXT NOT NULL,
    input_file_id      TEXT NOT NULL,
    status             TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         REAL NOT NULL,
    expires_at         INTEGER NOT NULL,
    metadata           TEXT,
    model              TEXT,
    total              INTEGER NOT NULL DEFAULT 0,
    completed          INTEGER NOT NULL DEFAULT 0,
    failed             INTEGER NOT NULL DEFAULT 0,
    errors             TEXT,
    output_file_id     TEXT,
    error_file_id      TEXT,
    in_progress_at     INTEGER,
    finalizing_at      INTEGER,
    completed_at       INTEGER,
    failed_at          INTEGER,
    expired_at         INTEGER,
    cancelling_at      INTEGER,
    cancelled_at       INTEGER,
    output_expiry_seconds INTEGER
);
CREATE INDEX batches_account ON batches (account, seq);
CREATE INDEX batches_status ON batches (status);

CREATE TABLE slices (
    batch_id         TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    no               INTEGER NOT NULL,
    start_line       INTEGER NOT NULL,
    n_lines          INTEGER NOT NULL,
    start_offset     INTEGER NOT NULL,
    end_offset       INTEGER NOT NULL,
    committed_bytes  INTEGER NOT NULL DEFAULT 0,
    completed        INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0,
    done             INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, no)
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    account     TEXT NOT NULL,
    role        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
