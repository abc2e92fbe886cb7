-- Barge schema for PostgreSQL, version 7 (SQLite's version 13): results while a batch
-- runs (see ARCHITECTURE.md, "Results while running").

-- How many ``record_progress`` statements have counted results of the batch: each one
-- takes the next number for the groups it logs (the batch's row is locked by it, so
-- the numbers follow the commits). ``create_batch`` writes 0; NULL for a batch stored
-- before this was kept, whose results were never logged.
ALTER TABLE batches ADD COLUMN result_commits BIGINT;

-- The results log (see SQLite's version 13): one row per commit and slice it added
-- results to, kept until the batch is deleted; the records themselves are the
-- ``results`` rows of that commit until ``finish``, which adds the batch_expired lines
-- as one more commit's groups and sets where each group starts in the published files.
CREATE TABLE result_log (
    batch_id    TEXT NOT NULL,
    commit_no   BIGINT NOT NULL,
    slice_no    BIGINT NOT NULL,
    n_ok        BIGINT NOT NULL,
    n_err       BIGINT NOT NULL,
    ok_bytes    BIGINT NOT NULL,
    err_bytes   BIGINT NOT NULL,
    part_start  BIGINT NOT NULL,
    part_end    BIGINT NOT NULL,
    ok_offset   BIGINT,
    err_offset  BIGINT,
    PRIMARY KEY (batch_id, commit_no, slice_no)
);

-- The commit that stored each result record (0: stored before this was kept).
ALTER TABLE results ADD COLUMN commit_no BIGINT NOT NULL DEFAULT 0;
