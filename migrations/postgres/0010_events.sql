-- Events (issue #13 §1, SPEC §11): an outbox. Triggers on `runs`, `jobs`
-- and `service_state` write one row per change in the transaction that
-- makes it, so an event exists if and only if its change committed, and no
-- writer (this version's, an older replica's, an operator's SQL) can forget
-- one.
--
-- A run's event is its transition and ids, not the run: each entry its
-- write appends to `runs.history` (`from`, `to`, `at`, `instance`,
-- `reason`) is one event, and so is a new `progress`. The API assembles
-- `data` from the run as it is when read.
--
-- Order and cursor. `tx` is the writing transaction's id, `seq` a sequence
-- value taken as the row is written. Readers see only events whose `tx` is
-- below `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction
-- still running: every transaction below it has committed or rolled back,
-- and any transaction that writes later gets a larger id. So the events
-- below the horizon, in `(tx, seq)` order, only ever grow at the end: a
-- cursor `(tx, seq)` never skips an event that commits later, nor repeats
-- one. (A sequence or a timestamp alone would not do: both are taken
-- before commit, so a transaction that commits later can write a smaller
-- one behind a reader's cursor.)
--
-- `SET jobsd.events = 'off'` on a session turns the triggers off for it:
-- `jobsd --no-events`, to measure what events cost, nothing else.
--
-- Each transaction that writes events also sends one payload-free
-- notification on `jobsd_events` (PostgreSQL folds repeats within a
-- transaction into one); readers then read the table.
CREATE SEQUENCE events_seq CACHE 64;

CREATE TABLE events (
    tx          bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint,
    seq         bigint NOT NULL DEFAULT nextval('events_seq'),
    type        text NOT NULL,
    at          timestamptz NOT NULL,
    job_id      text,
    run_id      uuid,
    instance    text,
    attempt     integer,
    from_state  text,
    reason      text,
    PRIMARY KEY (tx, seq)
);

CREATE INDEX events_job_idx ON events (job_id, tx, seq);
CREATE INDEX events_run_idx ON events (run_id) WHERE run_id IS NOT NULL;
-- Pruning by age (retention); BRIN: `at` grows with the table.
CREATE INDEX events_at_idx ON events USING brin (at);

CREATE FUNCTION events_enabled() RETURNS boolean LANGUAGE sql STABLE AS
$$ SELECT current_setting('jobsd.events', true) IS DISTINCT FROM 'off' $$;

-- The type of a run's transition to `to_state`. A run going back to
-- `queued` from `running` or `dead` is retried, unless its attempt went
-- back (a replica handing it back at shutdown: queued again).
CREATE FUNCTION events_run_type(from_state text, to_state text, old_attempt integer, new_attempt integer)
RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT 'run.' || CASE
     WHEN to_state = 'queued' AND from_state IN ('running', 'dead')
          AND new_attempt >= old_attempt THEN 'retried'
     ELSE to_state END $$;

CREATE FUNCTION events_runs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT events_enabled() THEN RETURN NULL; END IF;
    INSERT INTO events (type, at, job_id, run_id, instance, attempt, from_state, reason)
    SELECT 'run.' || (h.e ->> 'to'), (h.e ->> 'at')::timestamptz, n.job_id, n.run_id,
           h.e ->> 'instance', n.attempt, h.e ->> 'from', h.e ->> 'reason'
    FROM new_runs n, jsonb_array_elements(n.history) WITH ORDINALITY AS h(e, i)
    ORDER BY n.run_id, h.i;
    IF FOUND THEN PERFORM pg_notify('jobsd_events', ''); END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION events_runs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT events_enabled() THEN RETURN NULL; END IF;
    INSERT INTO events (type, at, job_id, run_id, instance, attempt, from_state, reason)
    SELECT e.type, e.at, e.job_id, e.run_id, e.instance, e.attempt, e.from_state, e.reason
    FROM (
        SELECT events_run_type(h.e ->> 'from', h.e ->> 'to', o.attempt, n.attempt) AS type,
               (h.e ->> 'at')::timestamptz AS at, n.job_id, n.run_id, h.e ->> 'instance' AS instance,
               n.attempt, h.e ->> 'from' AS from_state, h.e ->> 'reason' AS reason,
               n.run_id AS k, h.i AS i
        FROM new_runs n JOIN old_runs o ON o.run_id = n.run_id,
             jsonb_array_elements(n.history) WITH ORDINALITY AS h(e, i)
        WHERE jsonb_array_length(n.history) > jsonb_array_length(o.history)
          AND h.i > jsonb_array_length(o.history)
          -- A step within `running` (a callback run accepted) is no transition.
          AND (h.e ->> 'from') IS DISTINCT FROM (h.e ->> 'to')
        UNION ALL
        SELECT 'run.progress', n.progress_updated_at, n.job_id, n.run_id, n.instance, n.attempt,
               NULL, NULL, n.run_id, 2147483647
        FROM new_runs n JOIN old_runs o ON o.run_id = n.run_id
        WHERE n.progress_updated_at IS DISTINCT FROM o.progress_updated_at
          AND n.progress_updated_at IS NOT NULL
    ) e
    ORDER BY e.k, e.i;
    IF FOUND THEN PERFORM pg_notify('jobsd_events', ''); END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER runs_events_inserted AFTER INSERT ON runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION events_runs_inserted();
CREATE TRIGGER runs_events_updated AFTER UPDATE ON runs
    REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION events_runs_updated();

-- Jobs: created, deleted, and of the updates those a person makes (the
-- definition or the state; the scheduler's `next_run_at` is none).
CREATE FUNCTION events_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT events_enabled() THEN RETURN NULL; END IF;
    INSERT INTO events (type, at, job_id)
    SELECT 'job.created', n.created_at, n.job_id FROM new_jobs n ORDER BY n.job_id;
    IF FOUND THEN PERFORM pg_notify('jobsd_events', ''); END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION events_jobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT events_enabled() THEN RETURN NULL; END IF;
    INSERT INTO events (type, at, job_id, from_state)
    SELECT 'job.' || CASE
             WHEN n.state = o.state THEN 'updated'
             WHEN n.state = 'paused' THEN 'paused'
             WHEN n.state = 'completed' THEN 'completed'
             ELSE 'resumed' END,
           CASE WHEN n.state = 'completed' AND n.updated_at = o.updated_at THEN now() ELSE n.updated_at END,
           n.job_id, o.state
    FROM new_jobs n JOIN old_jobs o ON o.job_id = n.job_id
    WHERE n.state <> o.state OR n.updated_at <> o.updated_at
    ORDER BY n.job_id;
    IF FOUND THEN PERFORM pg_notify('jobsd_events', ''); END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION events_jobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT events_enabled() THEN RETURN NULL; END IF;
    INSERT INTO events (type, at, job_id)
    SELECT 'job.deleted', statement_timestamp(), o.job_id FROM old_jobs o ORDER BY o.job_id;
    IF FOUND THEN PERFORM pg_notify('jobsd_events', ''); END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_events_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION events_jobs_inserted();
CREATE TRIGGER jobs_events_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION events_jobs_updated();
CREATE TRIGGER jobs_events_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION events_jobs_deleted();

CREATE FUNCTION events_service_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT events_enabled() THEN RETURN NULL; END IF;
    IF (TG_OP = 'INSERT' AND NEW.paused)
       OR (TG_OP = 'UPDATE' AND NEW.paused IS DISTINCT FROM OLD.paused) THEN
        INSERT INTO events (type, at)
        VALUES (CASE WHEN NEW.paused THEN 'service.paused' ELSE 'service.resumed' END, NEW.updated_at);
        PERFORM pg_notify('jobsd_events', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER service_state_events AFTER INSERT OR UPDATE ON service_state
    FOR EACH ROW EXECUTE FUNCTION events_service_changed();

-- Stream tickets (`POST /api/v1/events/tickets`): a browser's EventSource
-- cannot send a header, so it presents a ticket in the URL instead: valid
-- for reconnects of the one stream (its filters, `query`) it was made for,
-- until `expires_at` (10 minutes), and only while the token that made it
-- (`token_id`, NULL with auth off) is not revoked. Stored as the SHA-256 of
-- the secret.
CREATE TABLE event_tickets (
    hash        text PRIMARY KEY,
    token_id    uuid,
    query       text NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX event_tickets_expires_idx ON event_tickets (expires_at);
