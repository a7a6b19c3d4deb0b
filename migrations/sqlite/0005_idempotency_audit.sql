-- Idempotency keys and the audit log: PostgreSQL's
-- migrations/postgres/0008_idempotency_audit.sql in SQLite's types
-- (timestamps INTEGER microseconds since the epoch, UUIDs hyphenated
-- lowercase TEXT, which sorts as the UUID's bytes do: a UUIDv7 id sorts by
-- time; headers JSON TEXT).
CREATE TABLE idempotency_keys (
    caller          TEXT NOT NULL,
    method          TEXT NOT NULL,
    route           TEXT NOT NULL,
    key             TEXT NOT NULL,
    claim           TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    status          INTEGER,
    headers         TEXT,
    body            BLOB,
    completed_at    INTEGER,
    PRIMARY KEY (caller, method, route, key)
) STRICT;

CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

CREATE TABLE audit_log (
    id              TEXT PRIMARY KEY,
    at              INTEGER NOT NULL,
    actor           TEXT NOT NULL,
    token_id        TEXT,
    method          TEXT NOT NULL,
    path            TEXT NOT NULL,
    job_id          TEXT,
    run_id          TEXT,
    status          INTEGER NOT NULL,
    reason          TEXT
) STRICT;

CREATE INDEX audit_log_job_idx ON audit_log (job_id, id) WHERE job_id IS NOT NULL;
CREATE INDEX audit_log_at_idx ON audit_log (at);
