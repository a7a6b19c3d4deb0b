-- Batch output files: see migrations/postgres/0014_batch_files.sql. A
-- row's lines as JSON text (NULL without files). Foreign keys are off on
-- the embedded store: deleting or pruning a batch deletes its names itself
-- (src/store/sqlite/batches.rs), as it does its rows and counters.
ALTER TABLE batch_rows ADD COLUMN files TEXT;

CREATE TABLE batch_files (
    batch_id    TEXT NOT NULL,
    name        TEXT NOT NULL,
    PRIMARY KEY (batch_id, name)
) STRICT, WITHOUT ROWID;
