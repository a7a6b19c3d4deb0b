-- Webhooks: see migrations/postgres/0011_webhooks.sql. Lists are JSON
-- arrays of texts; times are microseconds since the epoch.
-- A job's `notify` (a JSON array of webhook names).
ALTER TABLE jobs ADD COLUMN notify TEXT NOT NULL DEFAULT '[]';

CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    url             TEXT NOT NULL,
    event_types     TEXT NOT NULL DEFAULT '[]',
    job_ids         TEXT NOT NULL DEFAULT '[]',
    tags            TEXT NOT NULL DEFAULT '[]',
    handler         TEXT,
    paused          INTEGER NOT NULL DEFAULT 0,
    secret          TEXT NOT NULL,
    previous_secret TEXT,
    previous_until  INTEGER,
    disabled_at     INTEGER,
    disabled_reason TEXT,
    failing_since   INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;

-- The events are turned into deliveries up to `seq` (NULL: none yet).
CREATE TABLE webhook_feed (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER
) STRICT;
INSERT INTO webhook_feed (id) VALUES (1);

CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    message_id       TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    event_id         TEXT,
    payload          TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'pending',
    attempt          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at INTEGER,
    last_status      INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) STRICT;

CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_leased_idx ON webhook_deliveries (lease_expires_at)
    WHERE state = 'delivering';
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, created_at);

CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    status       INTEGER,
    latency_ms   INTEGER NOT NULL,
    response     TEXT,
    error        TEXT,
    PRIMARY KEY (delivery_id, at, attempt)
) STRICT;
