-- Alerts (issue #13 §3; README "Alerts"). A job's own alert settings, as
-- JSON (src/alerts/settings.rs, `JobAlerts`: only what it sets; the rest
-- comes from the service's `--alert-*` flags).
--
-- (0012 is left to batches, built on a branch beside this.)
ALTER TABLE jobs ADD COLUMN alerts jsonb NOT NULL DEFAULT '{}';
-- The clock checks read the jobs that set their own alerts, not all jobs.
CREATE INDEX jobs_own_alerts_idx ON jobs (job_id) WHERE alerts <> '{}';

-- Each job's alert state while it holds something (a failure count, an
-- open alert, a throttle still running): src/alerts/rules.rs `AlertState`
-- as JSON (the job's view reads its `open`). No
-- foreign key: the feed removes a deleted job's row when it reads the
-- deletion, and jobs' writes stay free of it.
CREATE TABLE job_alerts (
    job_id      text PRIMARY KEY,
    state       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The feed that turns events into alerts: the last event read (NULL: none
-- yet), a version every advance bumps (an advance is written only if the
-- version is still the one it read: replicas race, one wins), and the last
-- clock check (dead man, max_duration). It starts after the newest event
-- there is: alerts are for what happens from now on, not for a history
-- written before alerts existed.
CREATE TABLE alert_feed (
    id          int PRIMARY KEY CHECK (id = 1),
    tx          bigint,
    seq         bigint,
    ord         bigint,
    version     bigint NOT NULL DEFAULT 0,
    checked_at  timestamptz
);
INSERT INTO alert_feed (id, tx, seq, ord) VALUES (1, 0, 0, 0);
UPDATE alert_feed f SET tx = e.tx, seq = e.seq, ord = jsonb_array_length(e.entries)
FROM (SELECT tx, seq, entries FROM events ORDER BY tx DESC, seq DESC LIMIT 1) e;
