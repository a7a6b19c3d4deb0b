-- Jobs: persisted definitions. The scheduler fires a job when
-- state = 'running' and next_run_at <= now() (database time).
CREATE TABLE jobs (
    job_id              text PRIMARY KEY,
    handler             text NOT NULL,
    kwargs              jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- 'once' | 'interval' | 'cron'; the other schedule columns follow the kind.
    schedule_kind       text NOT NULL CHECK (schedule_kind IN ('once', 'interval', 'cron', 'never')),
    interval_ms         bigint CHECK (interval_ms IS NULL OR interval_ms > 0),
    cron                text,
    timezone            text NOT NULL DEFAULT 'UTC',
    -- `when`: the first run time, and the phase of an interval.
    start_at            timestamptz NOT NULL,
    misfire_grace_ms    bigint CHECK (misfire_grace_ms IS NULL OR misfire_grace_ms >= 0),
    coalesce            boolean NOT NULL DEFAULT true,
    max_instances       integer NOT NULL DEFAULT 1 CHECK (max_instances >= 1),
    lock_key            text,
    timeout_ms          bigint CHECK (timeout_ms IS NULL OR timeout_ms > 0),
    max_retries         integer NOT NULL DEFAULT 0 CHECK (max_retries >= 0),
    retry_backoff_ms    bigint NOT NULL DEFAULT 1000 CHECK (retry_backoff_ms >= 0),
    -- 'running' | 'paused' | 'completed' (a one-shot job after its run)
    state               text NOT NULL CHECK (state IN ('running', 'paused', 'completed')),
    next_run_at         timestamptz,
    description         text,
    tags                text[] NOT NULL DEFAULT '{}',
    -- 'api', or the default-jobs file the job came from
    source              text NOT NULL DEFAULT 'api',
    -- set on failure records (handler ErrorHandler): the run that failed
    failed_run_id       uuid,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX jobs_due_idx ON jobs (next_run_at) WHERE state = 'running' AND next_run_at IS NOT NULL;
CREATE INDEX jobs_handler_idx ON jobs (handler);
CREATE INDEX jobs_created_idx ON jobs (created_at, job_id);

-- Runs: one execution attempt chain of a job for one scheduled time (or a
-- manual trigger). Retries reuse the row and bump `attempt`.
CREATE TABLE runs (
    run_id              uuid PRIMARY KEY,
    job_id              text NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    handler             text NOT NULL,
    kwargs              jsonb NOT NULL,
    -- 'schedule' | 'manual' | 'retry' | 'catch-up'
    trigger             text NOT NULL,
    scheduled_for       timestamptz NOT NULL,
    -- a queued run is not claimed before this (retry backoff)
    run_after           timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    state               text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out', 'missed', 'dead')),
    attempt             integer NOT NULL DEFAULT 0,
    max_retries         integer NOT NULL DEFAULT 0,
    retry_backoff_ms    bigint NOT NULL DEFAULT 1000,
    timeout_ms          bigint,
    misfire_grace_ms    bigint,
    lock_key            text,
    instance            text,
    lease_expires_at    timestamptz,
    cancel_requested    boolean NOT NULL DEFAULT false,
    result              jsonb,
    error               text,
    traceback           text,
    progress            jsonb,
    -- every transition: [{"at", "from", "to", "instance", "reason"}, ...]
    history             jsonb NOT NULL DEFAULT '[]'::jsonb
);

-- Exactly once per (job, scheduled time) for scheduled firings, whatever the
-- number of replicas.
CREATE UNIQUE INDEX runs_job_scheduled_once ON runs (job_id, scheduled_for) WHERE trigger <> 'manual';
CREATE INDEX runs_queue_idx ON runs (run_after) WHERE state = 'queued';
CREATE INDEX runs_running_idx ON runs (lease_expires_at) WHERE state = 'running';
CREATE INDEX runs_running_lock_idx ON runs (lock_key) WHERE state = 'running' AND lock_key IS NOT NULL;
CREATE INDEX runs_active_job_idx ON runs (job_id) WHERE state IN ('queued', 'running');
CREATE INDEX runs_job_idx ON runs (job_id, created_at DESC);
CREATE INDEX runs_created_idx ON runs (created_at DESC, run_id);

-- One row: service-wide switches.
CREATE TABLE service_state (
    id          integer PRIMARY KEY CHECK (id = 1),
    paused      boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO service_state (id, paused) VALUES (1, false);

-- Replicas: each registers itself and heartbeats; stale rows are pruned.
CREATE TABLE instances (
    name            text PRIMARY KEY,
    version         text NOT NULL,
    address         text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now()
);
