-- Per-job `keep_runs` (see the PostgreSQL migration 0006).
ALTER TABLE jobs ADD COLUMN keep_runs INTEGER CHECK (keep_runs IS NULL OR keep_runs >= 1);

-- The jobs each maintenance pass applies `keep_runs` to (few, usually).
CREATE INDEX jobs_keep_runs_idx ON jobs (job_id) WHERE keep_runs IS NOT NULL;
