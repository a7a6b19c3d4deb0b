-- Batches (issue #15, SPEC §10): rows processed by one handler, appended
-- until wait-off, claimed in chunks by every replica's workers.
--
-- Counts. A batch's counts are not a `count(*)` over its rows and not
-- columns of its `batches` row (one row lock every claim and row end of
-- the batch would queue on). They are `batch_counts` rows, sharded by
-- `slot`: each transaction that changes row states adds its deltas, in the
-- same transaction, to one slot (chosen at random), so concurrent claims
-- and row ends on several replicas lock different counter rows. A read
-- sums the batch's few slots. Every delta is the number of rows the
-- transaction's own statements changed, so the sum is exact:
-- total = queued + inprog + success + failed + aborted.
--
-- Lock order, everywhere: `batches` row, then `batch_rows` (by batch_id,
-- idx), then `batch_counts` (by batch_id, slot).
CREATE TABLE batches (
    id              uuid PRIMARY KEY,
    handler         text NOT NULL,
    context         jsonb NOT NULL DEFAULT 'null',
    max_retries     integer NOT NULL DEFAULT 0,
    retry_backoff_ms bigint NOT NULL DEFAULT 1000,
    timeout_ms      bigint,
    -- Rows of this batch running at once across all replicas; NULL: no bound.
    max_parallel    integer,
    -- The next row's index (rows are numbered in the order they came).
    next_idx        bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- When a worker first claimed a row.
    started_at      timestamptz,
    waitoff_at      timestamptz,
    aborted_at      timestamptz,
    -- Decided by abort (aborted) or by completion (success, partial,
    -- failed); NULL while queued or in progress.
    outcome         text,
    -- When the batch became final: wait-off (or abort) and no row queued
    -- or running.
    finished_at     timestamptz
);

CREATE INDEX batches_open_idx ON batches (created_at) WHERE finished_at IS NULL;
CREATE INDEX batches_finished_idx ON batches (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE batch_counts (
    batch_id    uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    slot        integer NOT NULL,
    total       bigint NOT NULL DEFAULT 0,
    queued      bigint NOT NULL DEFAULT 0,
    inprog      bigint NOT NULL DEFAULT 0,
    success     bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0,
    aborted     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, slot)
);

-- One row of a batch: its input, state and outcome; no history beyond its
-- times and attempt (rows need less bookkeeping than runs).
CREATE TABLE batch_rows (
    batch_id        uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    idx             bigint NOT NULL,
    input           jsonb NOT NULL,
    -- queued, inprog, success, failed, aborted
    state           text NOT NULL DEFAULT 'queued',
    attempt         integer NOT NULL DEFAULT 0,
    -- A retried row waits for its backoff.
    available_at    timestamptz NOT NULL DEFAULT now(),
    instance        text,
    lease_expires_at timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    result          jsonb,
    error           text,
    started_at      timestamptz,
    finished_at     timestamptz,
    PRIMARY KEY (batch_id, idx)
) WITH (fillfactor = 80);

CREATE INDEX batch_rows_queued_idx ON batch_rows (batch_id, idx) WHERE state = 'queued';
CREATE INDEX batch_rows_leases_idx ON batch_rows (lease_expires_at) WHERE state = 'inprog';

-- Large uploads (NDJSON) are staged here in chunks, then published into
-- `batch_rows` in one statement, so an upload is visible all at once or
-- not at all. Unlogged: an upload in flight when the server crashes was
-- never acknowledged.
CREATE TABLE batch_uploads (
    id          uuid PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE UNLOGGED TABLE batch_staged_rows (
    upload_id   uuid NOT NULL,
    n           bigint NOT NULL,
    input       jsonb NOT NULL,
    PRIMARY KEY (upload_id, n)
);
