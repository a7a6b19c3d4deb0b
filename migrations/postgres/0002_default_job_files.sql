-- Default jobs (YAML files): the `state` a job's file declared when it was
-- last applied, 'running' or 'paused'; NULL when no file backs the job (an
-- API job, or one whose file was removed). It lets a restart tell "the
-- operator paused or resumed this job through the API" (keep that) from
-- "the file's own state changed" (apply the file).
ALTER TABLE jobs ADD COLUMN file_state text CHECK (file_state IN ('running', 'paused'));

-- Jobs still backed by a file, by file (`source` holds the file's path).
CREATE INDEX jobs_file_source_idx ON jobs (source) WHERE file_state IS NOT NULL;
