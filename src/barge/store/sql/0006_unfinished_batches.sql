-- Barge schema, version 6: the engine lists unfinished batches at every poll and every
-- time an active slot frees up; this partial index holds only those, so the listing
-- does not read every finished batch ever kept. The WHERE clause must stay identical to
-- the one ``SQLiteStore.unfinished_batches`` sends (SQLite only uses a partial index
-- whose condition the query repeats).
CREATE INDEX batches_unfinished ON batches (seq)
    WHERE status NOT IN ('hash_mismatch', 'validation_failed', 'cancelled', 'expired',
                         'completed', 'deleting');
