-- Cheaper writes per run (measured with `jobsd bench`; docs/benchmarks.md).

-- Runs no longer reference jobs by a foreign key. The key's check took a
-- row lock on the job for every run inserted (a third of the cost of an
-- insert, and contention with the scheduler). Its two duties are kept by
-- the store instead: every statement that inserts a run holds the job's
-- row lock (or inserts the job itself), and deleting a job deletes its runs
-- in the same transaction, after the job row is gone.
ALTER TABLE runs DROP CONSTRAINT runs_job_id_fkey;

-- Only a running job has a next fire time (pausing and completing clear
-- it; the constraint keeps it so), so the due index need not name `state`.
-- Then completing a one-shot job, or pausing one, changes no indexed column
-- and is a HOT update (no new index entries) when the page has room: half
-- of each page is kept free for that.
UPDATE jobs SET next_run_at = NULL WHERE state <> 'running' AND next_run_at IS NOT NULL;
ALTER TABLE jobs ADD CONSTRAINT jobs_next_run_only_when_running
    CHECK (next_run_at IS NULL OR state = 'running');
DROP INDEX jobs_due_idx;
CREATE INDEX jobs_due_idx ON jobs (next_run_at) WHERE next_run_at IS NOT NULL;
ALTER TABLE jobs SET (fillfactor = 50);
