-- Barge schema for PostgreSQL, version 2 (SQLite's version 8): leases, fencing tokens and
-- live nodes, for many nodes sharing the work (see ARCHITECTURE.md, "Many machines").
-- Every new column is NULL until a node uses it (adding them rewrites no table): existing
-- rows and the single-node engine, which takes no leases, are as before. Times are Unix
-- seconds on the database's clock.

-- A slice's lease: its current token, the node holding it, and until when. NULL token:
-- never leased, or given back.
ALTER TABLE slices
    ADD COLUMN lease_token    BIGINT,
    ADD COLUMN lease_owner    TEXT,
    ADD COLUMN lease_expires  DOUBLE PRECISION;

-- A batch's finalisation claim: the one node writing its result files.
ALTER TABLE batches
    ADD COLUMN fin_token    BIGINT,
    ADD COLUMN fin_owner    TEXT,
    ADD COLUMN fin_expires  DOUBLE PRECISION;

-- Every token, for slices and finalisations alike: one sequence for the whole cluster, so
-- a later claim always has a higher token (CACHE 1: strictly increasing across sessions,
-- not only unique). SQLite keeps the last one in its table lease_tokens instead.
CREATE SEQUENCE lease_tokens AS BIGINT CACHE 1;

-- Nodes alive, each until its row expires; expired rows are deleted by later heartbeats.
CREATE TABLE nodes (
    node        TEXT PRIMARY KEY,
    started_at  DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);
