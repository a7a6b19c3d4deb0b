-- Batches (issue #15): see migrations/postgres/0012_batches.sql. One
-- writer, so the counts need no sharding: every transaction adds its
-- deltas to slot 0. Times are microseconds since the epoch, ids text.
CREATE TABLE batches (
    id              TEXT PRIMARY KEY,
    handler         TEXT NOT NULL,
    context         TEXT NOT NULL DEFAULT 'null',
    max_retries     INTEGER NOT NULL DEFAULT 0,
    retry_backoff_ms INTEGER NOT NULL DEFAULT 1000,
    timeout_ms      INTEGER,
    max_parallel    INTEGER,
    next_idx        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    waitoff_at      INTEGER,
    aborted_at      INTEGER,
    outcome         TEXT,
    finished_at     INTEGER
) STRICT;

CREATE INDEX batches_open_idx ON batches (created_at) WHERE finished_at IS NULL;
CREATE INDEX batches_finished_idx ON batches (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE batch_counts (
    batch_id    TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    total       INTEGER NOT NULL DEFAULT 0,
    queued      INTEGER NOT NULL DEFAULT 0,
    inprog      INTEGER NOT NULL DEFAULT 0,
    success     INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    aborted     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, slot)
) STRICT;

CREATE TABLE batch_rows (
    batch_id        TEXT NOT NULL,
    idx             INTEGER NOT NULL,
    input           TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'queued',
    attempt         INTEGER NOT NULL DEFAULT 0,
    available_at    INTEGER NOT NULL,
    instance        TEXT,
    lease_expires_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result          TEXT,
    error           TEXT,
    started_at      INTEGER,
    finished_at     INTEGER,
    PRIMARY KEY (batch_id, idx)
) STRICT, WITHOUT ROWID;

CREATE INDEX batch_rows_queued_idx ON batch_rows (batch_id, idx) WHERE state = 'queued';
CREATE INDEX batch_rows_leases_idx ON batch_rows (lease_expires_at) WHERE state = 'inprog';

CREATE TABLE batch_uploads (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE batch_staged_rows (
    upload_id   TEXT NOT NULL,
    n           INTEGER NOT NULL,
    input       TEXT NOT NULL,
    PRIMARY KEY (upload_id, n)
) STRICT, WITHOUT ROWID;

-- Batch events carry their data (a completed batch's summary).
ALTER TABLE events ADD COLUMN data TEXT;
