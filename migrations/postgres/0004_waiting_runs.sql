-- A run may wait for a slot: a scheduled time that finds every
-- `max_instances` slot of its job taken by a *running* run is stored as
-- `waiting`. When one of those runs ends, the waiting run is queued if that
-- run's handler had returned by the waiting run's scheduled time (it was
-- only its outcome that had not been written yet), and recorded `missed`
-- (skipped) otherwise. Expand only: the set of states grows.
ALTER TABLE runs DROP CONSTRAINT runs_state_check;
ALTER TABLE runs ADD CONSTRAINT runs_state_check CHECK (state IN ('queued', 'running', 'succeeded',
    'failed', 'cancelled', 'timed_out', 'missed', 'dead', 'waiting')) NOT VALID;
ALTER TABLE runs VALIDATE CONSTRAINT runs_state_check;

-- Waiting runs by job: looked up whenever a run of the job ends (nearly
-- always empty, so it costs next to nothing).
CREATE INDEX runs_waiting_job_idx ON runs (job_id) WHERE state = 'waiting';
