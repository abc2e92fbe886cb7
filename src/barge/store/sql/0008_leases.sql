-- Barge schema, version 8: leases, fencing tokens and live nodes, for many nodes sharing
-- the work (see ARCHITECTURE.md, "Many machines"). Every new column is NULL until a node
-- uses it: existing rows and the single-node engine, which takes no leases, are as before.

-- A slice's lease: its current token, the node holding it, and until when (Unix
-- seconds). NULL token: never leased, or given back.
ALTER TABLE slices ADD COLUMN lease_token INTEGER;
ALTER TABLE slices ADD COLUMN lease_owner TEXT;
ALTER TABLE slices ADD COLUMN lease_expires REAL;

-- A batch's finalisation claim: the one node writing its result files.
ALTER TABLE batches ADD COLUMN fin_token INTEGER;
ALTER TABLE batches ADD COLUMN fin_owner TEXT;
ALTER TABLE batches ADD COLUMN fin_expires REAL;

-- The last token handed out, for slices and finalisations alike (one row): tokens only
-- grow, whatever is deleted. PostgreSQL has a sequence of this name instead.
CREATE TABLE lease_tokens (
    last  INTEGER NOT NULL
);
INSERT INTO lease_tokens (last) VALUES (0);

-- Nodes alive, each until its row expires (Unix seconds); rows expired are deleted by
-- the next heartbeat.
CREATE TABLE nodes (
    node        TEXT PRIMARY KEY,
    started_at  REAL NOT NULL,
    expires_at  REAL NOT NULL
);
