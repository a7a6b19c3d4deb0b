-- Alerts: see migrations/postgres/0013_alerts.sql. JSON as text; times are
-- microseconds since the epoch. (0009 is left to batches.)
ALTER TABLE jobs ADD COLUMN alerts TEXT NOT NULL DEFAULT '{}';
CREATE INDEX jobs_own_alerts_idx ON jobs (job_id) WHERE alerts <> '{}';

CREATE TABLE job_alerts (
    job_id      TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE alert_feed (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         INTEGER,
    version     INTEGER NOT NULL DEFAULT 0,
    checked_at  INTEGER
) STRICT;
INSERT INTO alert_feed (id, seq) VALUES (1, COALESCE((SELECT max(seq) FROM events), 0));
