-- Remote completion callbacks and progress (issue #14 §4, §5); see
-- migrations/postgres/0009_callbacks.sql for what each column means.
ALTER TABLE runs ADD COLUMN progress_updated_at INTEGER;
ALTER TABLE runs ADD COLUMN callback_attempt INTEGER;
ALTER TABLE runs ADD COLUMN callback_deadline INTEGER;

CREATE INDEX runs_callback_deadline_idx ON runs (callback_deadline)
    WHERE state = 'running' AND callback_deadline IS NOT NULL;

CREATE TABLE callback_tokens (
    token_hash  TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX callback_tokens_run_idx ON callback_tokens (run_id);
