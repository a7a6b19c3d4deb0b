-- The embedded store's schema: PostgreSQL's (migrations/postgres/, as of
-- 0004) in SQLite's types. Timestamps are INTEGER microseconds since the
-- Unix epoch, JSON is TEXT, UUIDs are their hyphenated TEXT (time-ordered
-- v7 ids sort as they were made), booleans are 0/1. STRICT tables refuse a
-- value of the wrong type instead of storing it.

CREATE TABLE jobs (
    job_id              TEXT PRIMARY KEY,
    handler             TEXT NOT NULL,
    kwargs              TEXT NOT NULL DEFAULT '{}',
    schedule_kind       TEXT NOT NULL CHECK (schedule_kind IN ('once', 'interval', 'cron', 'never')),
    interval_ms         INTEGER CHECK (interval_ms IS NULL OR interval_ms > 0),
    cron                TEXT,
    timezone            TEXT NOT NULL DEFAULT 'UTC',
    start_at            INTEGER NOT NULL,
    misfire_grace_ms    INTEGER CHECK (misfire_grace_ms IS NULL OR misfire_grace_ms >= 0),
    "coalesce"          INTEGER NOT NULL DEFAULT 1,
    max_instances       INTEGER NOT NULL DEFAULT 1 CHECK (max_instances >= 1),
    lock_key            TEXT,
    timeout_ms          INTEGER CHECK (timeout_ms IS NULL OR timeout_ms > 0),
    max_retries         INTEGER NOT NULL DEFAULT 0 CHECK (max_retries >= 0),
    retry_backoff_ms    INTEGER NOT NULL DEFAULT 1000 CHECK (retry_backoff_ms >= 0),
    state               TEXT NOT NULL CHECK (state IN ('running', 'paused', 'completed')),
    -- Only a running job has a next fire time.
    next_run_at         INTEGER CHECK (next_run_at IS NULL OR state = 'running'),
    description         TEXT,
    tags                TEXT NOT NULL DEFAULT '[]',
    source              TEXT NOT NULL DEFAULT 'api',
    failed_run_id       TEXT,
    -- The state a default-jobs file declared when last applied (see the
    -- PostgreSQL migration 0002); NULL when no file backs the job.
    file_state          TEXT CHECK (file_state IN ('running', 'paused')),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    -- Bumped by every write of the row: the version conditional writes
    -- compare (PostgreSQL uses the row's xmin).
    version             INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX jobs_due_idx ON jobs (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE INDEX jobs_handler_idx ON jobs (handler);
CREATE INDEX jobs_created_idx ON jobs (created_at, job_id);
CREATE INDEX jobs_file_source_idx ON jobs (source) WHERE file_state IS NOT NULL;

CREATE TABLE runs (
    run_id              TEXT PRIMARY KEY,
    job_id              TEXT NOT NULL,
    handler             TEXT NOT NULL,
    kwargs              TEXT NOT NULL,
    trigger             TEXT NOT NULL,
    scheduled_for       INTEGER NOT NULL,
    run_after           INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    started_at          INTEGER,
    finished_at         INTEGER,
    state               TEXT NOT NULL CHECK (state IN ('queued', 'waiting', 'running', 'succeeded',
                            'failed', 'cancelled', 'timed_out', 'missed', 'dead')),
    attempt             INTEGER NOT NULL DEFAULT 0,
    max_retries         INTEGER NOT NULL DEFAULT 0,
    retry_backoff_ms    INTEGER NOT NULL DEFAULT 1000,
    timeout_ms          INTEGER,
    misfire_grace_ms    INTEGER,
    lock_key            TEXT,
    instance            TEXT,
    lease_expires_at    INTEGER,
    cancel_requested    INTEGER NOT NULL DEFAULT 0,
    result              TEXT,
    error               TEXT,
    traceback           TEXT,
    progress            TEXT,
    history             TEXT NOT NULL DEFAULT '[]'
) STRICT;

-- Exactly once per (job, scheduled time) for scheduled firings.
CREATE UNIQUE INDEX runs_job_scheduled_once ON runs (job_id, scheduled_for) WHERE trigger <> 'manual';
CREATE INDEX runs_queue_idx ON runs (run_after) WHERE state = 'queued';
CREATE INDEX runs_running_idx ON runs (lease_expires_at) WHERE state = 'running';
CREATE INDEX runs_running_lock_idx ON runs (lock_key) WHERE state = 'running' AND lock_key IS NOT NULL;
CREATE INDEX runs_active_job_idx ON runs (job_id, state) WHERE state IN ('queued', 'running', 'waiting');
-- Waiting runs by job: looked up whenever a run of the job ends (SQLite
-- proves `state = 'waiting'` implies only an index's own `state = ...`).
CREATE INDEX runs_waiting_job_idx ON runs (job_id) WHERE state = 'waiting';
CREATE INDEX runs_job_idx ON runs (job_id, created_at);
CREATE INDEX runs_created_idx ON runs (created_at, run_id);

CREATE TABLE service_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    paused      INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL
) STRICT;
INSERT INTO service_state (id, paused, updated_at) VALUES (1, 0, 0);

CREATE TABLE instances (
    name            TEXT PRIMARY KEY,
    version         TEXT NOT NULL,
    address         TEXT,
    started_at      INTEGER NOT NULL,
    heartbeat_at    INTEGER NOT NULL
) STRICT;
