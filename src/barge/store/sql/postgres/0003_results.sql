-- Barge schema for PostgreSQL, version 3 (SQLite's version 9): result records kept with
-- progress, secrets every node shares, and names used once (see ARCHITECTURE.md, "Many
-- machines").

-- The result lines of a batch's requests, each stored in the statement that counts it
-- (``record_progress``), so that whichever node finalises the batch reads them from
-- here: ``idx`` is the line's index within its slice, ``ok`` whether it goes to the
-- output file or the error file, ``line`` the result line without its newline.
-- ``finish`` deletes a batch's rows once its files hold them; ``delete_batch`` deletes
-- what is left. No foreign key: flushes insert thousands of rows at a time, and a
-- trigger per row would cost more than the deletes that keep the table clean.
CREATE TABLE results (
    batch_id  TEXT NOT NULL,
    slice_no  BIGINT NOT NULL,
    idx       BIGINT NOT NULL,
    ok        BOOLEAN NOT NULL,
    line      BYTEA NOT NULL,
    PRIMARY KEY (batch_id, slice_no, idx)
);

-- Values every node must agree on (a key to sign with, say): the first node to ask
-- stores its candidate, and every later one reads it (``shared_secret``).
CREATE TABLE secrets (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- The slots of the upstream budget each live node holds (``share_budget``): together never
-- more than the budget, so the cluster never has more requests in flight than it allows.
ALTER TABLE nodes ADD COLUMN slots BIGINT NOT NULL DEFAULT 0;

-- Names that may be used once (an upload link, the making of the first admin key): the
-- first caller inserts the row and wins, every later one finds it (``use_once``). A row
-- is kept until its ``expires_at`` (Unix seconds) is well past, when a later call may
-- delete it: by then what it guarded is refused for its age anyway.
CREATE TABLE used_once (
    name        TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX used_once_expiry ON used_once (expires_at);
