-- Barge schema, version 13: results while a batch runs (see ARCHITECTURE.md, "Results
-- while running").

-- How many ``record_progress`` transactions have counted results of the batch: each one
-- takes the next number for the groups it logs. ``create_batch`` writes 0; NULL for a
-- batch stored before this was kept, whose results were never logged (they can only be
-- read from its output and error files once it has ended).
ALTER TABLE batches ADD COLUMN result_commits INTEGER;

-- The results log: one row per commit (``commit_no``, numbered per batch) and slice it
-- added results to, written in the transaction that counts them, and kept until the
-- batch is deleted. ``n_ok`` lines of ``ok_bytes`` for the output file and ``n_err``
-- lines of ``err_bytes`` for the error file (newlines included); on one machine the
-- records are in the slice's part at ``[part_start, part_end)``, with many nodes they are
-- the ``results`` rows of that commit. ``finish`` adds the batch_expired lines as one
-- more commit's groups and sets ``ok_offset`` / ``err_offset``: where each group's lines
-- start in the published files, which hold the groups in (slice, commit) order.
CREATE TABLE result_log (
    batch_id    TEXT NOT NULL,
    commit_no   INTEGER NOT NULL,
    slice_no    INTEGER NOT NULL,
    n_ok        INTEGER NOT NULL,
    n_err       INTEGER NOT NULL,
    ok_bytes    INTEGER NOT NULL,
    err_bytes   INTEGER NOT NULL,
    part_start  INTEGER NOT NULL,
    part_end    INTEGER NOT NULL,
    ok_offset   INTEGER,
    err_offset  INTEGER,
    PRIMARY KEY (batch_id, commit_no, slice_no)
);

-- The commit that stored each result record (0: stored before this was kept).
ALTER TABLE results ADD COLUMN commit_no INTEGER NOT NULL DEFAULT 0;
