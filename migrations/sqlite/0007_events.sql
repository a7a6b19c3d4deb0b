-- Events (issue #13 §1): the outbox of migrations/postgres/0010_events.sql
-- on the embedded store. Triggers write one row per change in the writing
-- transaction: each entry appended to a run's history, a new progress, a
-- job created, changed by a person, paused, resumed, completed or deleted,
-- and the service paused or resumed.
--
-- The cursor is `seq` alone: the store has one writer, so events commit in
-- `seq` order and a reader never sees a later `seq` before an earlier one.
-- `at` is microseconds since the epoch, as every timestamp here; a history
-- entry's `at` is RFC 3339 text with 0, 3 or 6 fractional digits (see
-- `rows::history_text`), converted below.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    type        TEXT NOT NULL,
    at          INTEGER NOT NULL,
    job_id      TEXT,
    run_id      TEXT,
    instance    TEXT,
    attempt     INTEGER,
    from_state  TEXT,
    reason      TEXT
) STRICT;

CREATE INDEX events_job_idx ON events (job_id, seq);
CREATE INDEX events_run_idx ON events (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX events_at_idx ON events (at);

CREATE TRIGGER runs_events_inserted AFTER INSERT ON runs BEGIN
    INSERT INTO events (type, at, job_id, run_id, instance, attempt, from_state, reason)
    SELECT 'run.' || json_extract(h.value, '$.to'),
           unixepoch(substr(json_extract(h.value, '$.at'), 1, 19)) * 1000000
             + CAST(substr(rtrim(substr(json_extract(h.value, '$.at'), 21), 'Z') || '000000', 1, 6) AS INTEGER),
           NEW.job_id, NEW.run_id, json_extract(h.value, '$.instance'), NEW.attempt,
           json_extract(h.value, '$.from'), json_extract(h.value, '$.reason')
    FROM json_each(NEW.history) h ORDER BY h.key;
END;

-- A run going back to `queued` from `running` or `dead` is retried, unless
-- its attempt went back (handed back at shutdown: queued again). A step
-- within `running` (a callback run accepted) is no transition.
CREATE TRIGGER runs_events_history AFTER UPDATE OF history ON runs
    WHEN json_array_length(NEW.history) > json_array_length(OLD.history)
BEGIN
    INSERT INTO events (type, at, job_id, run_id, instance, attempt, from_state, reason)
    SELECT 'run.' || CASE
             WHEN json_extract(h.value, '$.to') = 'queued'
                  AND json_extract(h.value, '$.from') IN ('running', 'dead')
                  AND NEW.attempt >= OLD.attempt THEN 'retried'
             ELSE json_extract(h.value, '$.to') END,
           unixepoch(substr(json_extract(h.value, '$.at'), 1, 19)) * 1000000
             + CAST(substr(rtrim(substr(json_extract(h.value, '$.at'), 21), 'Z') || '000000', 1, 6) AS INTEGER),
           NEW.job_id, NEW.run_id, json_extract(h.value, '$.instance'), NEW.attempt,
           json_extract(h.value, '$.from'), json_extract(h.value, '$.reason')
    FROM json_each(NEW.history) h
    WHERE h.key >= json_array_length(OLD.history)
      AND json_extract(h.value, '$.from') IS NOT json_extract(h.value, '$.to')
    ORDER BY h.key;
END;

CREATE TRIGGER runs_events_progress AFTER UPDATE OF progress_updated_at ON runs
    WHEN NEW.progress_updated_at IS NOT OLD.progress_updated_at AND NEW.progress_updated_at IS NOT NULL
BEGIN
    INSERT INTO events (type, at, job_id, run_id, instance, attempt)
    VALUES ('run.progress', NEW.progress_updated_at, NEW.job_id, NEW.run_id, NEW.instance, NEW.attempt);
END;

CREATE TRIGGER jobs_events_inserted AFTER INSERT ON jobs BEGIN
    INSERT INTO events (type, at, job_id) VALUES ('job.created', NEW.created_at, NEW.job_id);
END;

CREATE TRIGGER jobs_events_updated AFTER UPDATE ON jobs
    WHEN NEW.state IS NOT OLD.state OR NEW.updated_at IS NOT OLD.updated_at
BEGIN
    INSERT INTO events (type, at, job_id, from_state)
    VALUES ('job.' || CASE
              WHEN NEW.state = OLD.state THEN 'updated'
              WHEN NEW.state = 'paused' THEN 'paused'
              WHEN NEW.state = 'completed' THEN 'completed'
              ELSE 'resumed' END,
            CASE WHEN NEW.state = 'completed' AND NEW.updated_at = OLD.updated_at
              THEN CAST(unixepoch('subsec') * 1000000 AS INTEGER) ELSE NEW.updated_at END,
            NEW.job_id, OLD.state);
END;

CREATE TRIGGER jobs_events_deleted AFTER DELETE ON jobs BEGIN
    INSERT INTO events (type, at, job_id)
    VALUES ('job.deleted', CAST(unixepoch('subsec') * 1000000 AS INTEGER), OLD.job_id);
END;

CREATE TRIGGER service_state_events AFTER UPDATE ON service_state
    WHEN NEW.paused IS NOT OLD.paused
BEGIN
    INSERT INTO events (type, at)
    VALUES (CASE WHEN NEW.paused THEN 'service.paused' ELSE 'service.resumed' END, NEW.updated_at);
END;

-- Stream tickets: see migrations/postgres/0010_events.sql.
CREATE TABLE event_tickets (
    hash        TEXT PRIMARY KEY,
    token_id    TEXT,
    query       TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX event_tickets_expires_idx ON event_tickets (expires_at);
