-- Per-job `keep_runs`: the job keeps its newest N finished runs whatever
-- their age, instead of `--retention`'s age rule (NULL: the age rule).
-- Expand only: a nullable column, no rewrite.
ALTER TABLE jobs ADD COLUMN keep_runs integer CHECK (keep_runs IS NULL OR keep_runs >= 1);

-- The jobs each maintenance pass applies `keep_runs` to (few, usually).
CREATE INDEX jobs_keep_runs_idx ON jobs (job_id) WHERE keep_runs IS NOT NULL;
