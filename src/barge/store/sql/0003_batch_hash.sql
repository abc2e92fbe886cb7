-- Barge schema, version 3: the integrity hash a batch was created with.
ALTER TABLE batches ADD COLUMN hash TEXT;
