-- Webhooks (issue #13 §2, Standard Webhooks v1): the subscriptions, the
-- deliveries queued for them, and each delivery attempt.
--
-- `webhook_feed` is the one cursor in the events (src/store/events.rs's
-- position, NULL: before the first event) up to which events have been
-- turned into deliveries. A replica's deliverer reads events after it,
-- and writes their deliveries and the cursor's new position in one
-- transaction, only if the cursor is still where it read it (so of two
-- replicas racing, one writes and the other reads again): no event is
-- skipped, none is queued twice.
-- A job's `notify`: the names of webhooks that get every event of the job,
-- whatever their own filters say.
ALTER TABLE jobs ADD COLUMN notify text[] NOT NULL DEFAULT '{}';

CREATE TABLE webhooks (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    url             text NOT NULL,
    -- The type filter, as `GET /api/v1/events` takes it (types and
    -- groups, `run.` ...); empty: every type.
    event_types     text[] NOT NULL DEFAULT '{}',
    -- Job filters; all empty: every event.
    job_ids         text[] NOT NULL DEFAULT '{}',
    tags            text[] NOT NULL DEFAULT '{}',
    handler         text,
    paused          boolean NOT NULL DEFAULT false,
    -- `whsec_...`; during a rotation the one rotated out signs too, until
    -- `previous_until`.
    secret          text NOT NULL,
    previous_secret text,
    previous_until  timestamptz,
    disabled_at     timestamptz,
    disabled_reason text,
    -- When its current run of failed attempts began (NULL: the last one
    -- succeeded).
    failing_since   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhooks_name_key UNIQUE (name)
);

CREATE TABLE webhook_feed (
    id   integer PRIMARY KEY CHECK (id = 1),
    tx   bigint,
    seq  bigint,
    ord  bigint
);
INSERT INTO webhook_feed (id) VALUES (1);

-- One message to one webhook. `message_id` is the `webhook-id` header,
-- the same on every attempt. `payload` is the body sent. A delivery is
-- `pending` (due at `next_attempt_at`), `delivering` (claimed by
-- `lease_owner` under `lease_token` until `lease_expires_at`; an expired
-- lease makes it claimable again), `delivered` or `failed`.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    webhook_id       uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    message_id       text NOT NULL,
    event_type       text NOT NULL,
    -- The event's cursor (NULL for a test delivery).
    event_id         text,
    payload          jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'pending',
    attempt          integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_token      uuid,
    lease_expires_at timestamptz,
    last_status      integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_leased_idx ON webhook_deliveries (lease_expires_at)
    WHERE state = 'delivering';
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, created_at);

-- Each attempt: the answer's status (NULL: none came), how long it took,
-- and the first bytes of the answer or the error.
CREATE TABLE webhook_attempts (
    delivery_id  uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    at           timestamptz NOT NULL,
    status       integer,
    latency_ms   integer NOT NULL,
    response     text,
    error        text,
    PRIMARY KEY (delivery_id, at, attempt)
);
