-- Events (issue #13 §1, SPEC §11): an outbox. Each statement's events are
-- written in the transaction that makes the change, so an event exists if
-- and only if its change committed: by the statement itself for runs and
-- jobs (see below), by a trigger on `service_state`.
--
-- One row per statement, not per event: a statement that claims or ends 500
-- runs writes one row whose `entries` holds their 500 events, so recording
-- events costs a few bytes per run, not a row and its index entries (the
-- drain ran at 0.56x with a row per event). An entry is compact, the
-- transition and its ids: `t` type, `at`, `j` job id, `r` run id, `a`
-- attempt, and for jobs `f` the state left; a run's entry is its history
-- entry (`from`, `to`, `instance`, `reason`) with those ids. Each entry
-- appended to a run's history is one event, and so is a new `progress`.
-- The API assembles `data` from the run or job as it is when read.
--
-- Order and cursor: `tx` is the writing transaction's id, `seq` a sequence
-- value per row, and an event's place is (`tx`, `seq`, its index in
-- `entries`). Readers see only rows whose `tx` is below
-- `pg_snapshot_xmin(pg_current_snapshot())`; src/store/postgres/events.rs
-- explains why that makes a cursor exact.
--
-- `keys` holds `j:<job id>` for each job its entries name (GIN): a page of
-- one job's (or one run's) events reads only the rows that hold some.
--
-- `SET jobsd.events = 'off'` on a session turns events off for it:
-- `jobsd --no-events`, to measure what events cost, nothing else.
--
-- Each transaction that writes events also sends one payload-free
-- notification on `jobsd_events` (a trigger on `events`; PostgreSQL folds
-- repeats within a transaction into one); readers then read the table.
CREATE SEQUENCE events_seq CACHE 64;

CREATE TABLE events (
    tx          bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint,
    seq         bigint NOT NULL DEFAULT nextval('events_seq'),
    -- When the row was written (pruning goes by it).
    at          timestamptz NOT NULL DEFAULT statement_timestamp(),
    keys        text[] NOT NULL,
    entries     jsonb NOT NULL,
    PRIMARY KEY (tx, seq)
);

CREATE INDEX events_keys_idx ON events USING gin (keys);
-- Pruning by age (retention); BRIN: `at` grows with the table.
CREATE INDEX events_at_idx ON events USING brin (at);

CREATE FUNCTION events_enabled() RETURNS boolean LANGUAGE sql STABLE AS
$$ SELECT current_setting('jobsd.events', true) IS DISTINCT FROM 'off' $$;

-- Writes one row of `entries` (a jsonb array, NULL for none), keyed by the
-- jobs they name.
CREATE FUNCTION events_write(entries jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF entries IS NULL OR jsonb_array_length(entries) = 0 THEN RETURN; END IF;
    INSERT INTO events (keys, entries)
    VALUES (ARRAY(SELECT DISTINCT 'j:' || (e ->> 'j') FROM jsonb_array_elements(entries) AS x(e)
                  WHERE e ->> 'j' IS NOT NULL),
            entries);
END $$;

-- Every statement that writes events notifies readers (folded into one
-- notification per transaction).
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobsd_events', '');
    RETURN NULL;
END $$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Runs and jobs write their events themselves, in the statement that
-- changes them (src/store/postgres/events.rs, `events_cte`): triggers
-- deriving them from the transition tables cost the drain 40 %
-- (docs/benchmarks.md). The service switch, written rarely, keeps a row
-- trigger.

CREATE FUNCTION events_service_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT events_enabled() THEN RETURN NULL; END IF;
    IF (TG_OP = 'INSERT' AND NEW.paused)
       OR (TG_OP = 'UPDATE' AND NEW.paused IS DISTINCT FROM OLD.paused) THEN
        PERFORM events_write(jsonb_build_array(jsonb_build_object(
            't', CASE WHEN NEW.paused THEN 'service.paused' ELSE 'service.resumed' END,
            'at', NEW.updated_at)));
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
