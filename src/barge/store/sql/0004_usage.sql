-- Barge schema, version 4: token usage summed per batch.
ALTER TABLE batches ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
