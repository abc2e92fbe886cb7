-- Barge schema, version 7.
-- A batch's creation time in Unix milliseconds (the compact dialect's created_ts has
-- three decimals; NULL for batches from before, which have only created_at), and whether
-- its metadata values are JSON texts (1: the compact dialect's batch_dict) or plain
-- strings (0: OpenAI metadata); NULL for batches from before, where nobody knows.
ALTER TABLE batches ADD COLUMN created_ms INTEGER;
ALTER TABLE batches ADD COLUMN metadata_json INTEGER;

-- Where each deleted file and batch stood in its list (its seq), so that a cursor naming
-- one still pages on from its place; kept 30 days after the deletion.
CREATE TABLE files_gone (
    id       TEXT PRIMARY KEY,
    account  TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    gone_at  INTEGER NOT NULL
);
CREATE INDEX files_gone_at ON files_gone (gone_at);

CREATE TABLE batches_gone (
    id       TEXT PRIMARY KEY,
    account  TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    gone_at  INTEGER NOT NULL
);
CREATE INDEX batches_gone_at ON batches_gone (gone_at);

CREATE TRIGGER files_keep_place AFTER DELETE ON files
BEGIN
    INSERT OR REPLACE INTO files_gone (id, account, seq, gone_at)
        VALUES (old.id, old.account, old.seq, CAST(strftime('%s', 'now') AS INTEGER));
    DELETE FROM files_gone WHERE gone_at < CAST(strftime('%s', 'now') AS INTEGER) - 2592000;
END;

CREATE TRIGGER batches_keep_place AFTER DELETE ON batches
BEGIN
    INSERT OR REPLACE INTO batches_gone (id, account, seq, gone_at)
        VALUES (old.id, old.account, old.seq, CAST(strftime('%s', 'now') AS INTEGER));
    DELETE FROM batches_gone WHERE gone_at < CAST(strftime('%s', 'now') AS INTEGER) - 2592000;
END;
