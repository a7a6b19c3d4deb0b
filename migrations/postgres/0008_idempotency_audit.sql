-- Idempotency keys (issue #12 §6): one row per caller, method, route and
-- `Idempotency-Key`. A row is written pending (`status` NULL) before the
-- handler runs, so the primary key decides which of two concurrent requests
-- runs it; the answer (status, the headers replayed, body) is stored after.
-- `claim` is the attempt that owns a pending row, so a late completion
-- never overwrites a newer attempt's row. Rows older than 24 h are pruned
-- by the maintenance loop (`idempotency_keys_created_idx`).
CREATE TABLE idempotency_keys (
    caller          text NOT NULL,
    method          text NOT NULL,
    route           text NOT NULL,
    key             text NOT NULL,
    claim           uuid NOT NULL,
    request_hash    text NOT NULL,
    created_at      timestamptz NOT NULL,
    status          integer,
    headers         jsonb,
    body            bytea,
    completed_at    timestamptz,
    PRIMARY KEY (caller, method, route, key)
);

CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- The audit log (issue #12 §7): every mutating API call, with who made it
-- (the token's name, or 'anonymous') and how it was answered. `id` is a
-- UUIDv7, so ordering by it is ordering by time (newest first is
-- `ORDER BY id DESC`, and an id is the cursor of the next page).
CREATE TABLE audit_log (
    id              uuid PRIMARY KEY,
    at              timestamptz NOT NULL,
    actor           text NOT NULL,
    token_id        uuid,
    method          text NOT NULL,
    path            text NOT NULL,
    job_id          text,
    run_id          uuid,
    status          integer NOT NULL,
    reason          text
);

CREATE INDEX audit_log_job_idx ON audit_log (job_id, id) WHERE job_id IS NOT NULL;
CREATE INDEX audit_log_at_idx ON audit_log (at);
