-- Remote completion callbacks and progress (issue #14 §4, §5).
--
-- `progress_updated_at`: when `progress` was last written (a worker's
-- heartbeat that carried a new value, or a callback's progress report).
--
-- A callback run: an `http` run with `"callback": true` whose request was
-- accepted (a 2xx) waits, still `running`, for the called service to
-- report back. Its attempt is then recorded in `callback_attempt` and its
-- deadline in `callback_deadline`, and its lease is cleared: no replica's
-- handler holds it any more, so the lease-expiry rescue (which looks for
-- `lease_expires_at < now()`) passes it by, and the maintenance loop of any
-- replica ends it `timed_out` once the deadline passes. The marker names
-- the attempt, so a later attempt of the run (a retry) is never mistaken
-- for one waiting: nothing needs to clear it.
ALTER TABLE runs ADD COLUMN progress_updated_at timestamptz;
ALTER TABLE runs ADD COLUMN callback_attempt integer;
ALTER TABLE runs ADD COLUMN callback_deadline timestamptz;

-- Runs waiting for a callback, by deadline (the timeout sweep); tiny.
CREATE INDEX runs_callback_deadline_idx ON runs (callback_deadline)
    WHERE state = 'running' AND callback_deadline IS NOT NULL;

-- Callback tokens: one per attempt of a callback run, stored only as the
-- SHA-256 (hex) of the secret sent in `X-Jobsd-Callback-Token`. Kept for
-- every attempt, so that an earlier attempt's token is recognised (409)
-- rather than unknown (401); removed with their run (retention).
CREATE TABLE callback_tokens (
    token_hash  text PRIMARY KEY,
    run_id      uuid NOT NULL,
    attempt     integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX callback_tokens_run_idx ON callback_tokens (run_id);
