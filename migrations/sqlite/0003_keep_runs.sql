-- Per-job `keep_runs` (see the PostgreSQL migration 0006).
ALTER TABLE jobs ADD COLUMN keep_runs INTEGER CHECK (keep_runs IS NULL OR keep_runs >= 1);
