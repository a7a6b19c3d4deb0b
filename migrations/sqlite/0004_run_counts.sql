-- Run counters (see the PostgreSQL migration 0007): the stored runs of each
-- job by state. SQLite has one writer, so there is no contention to spread:
-- every count is shard 0 (the column is kept so both schemas read alike).
-- Row-level triggers keep them (SQLite has no statement-level ones); each
-- costs one upsert into this small table, only when a run's state changes.
CREATE TABLE run_counts (
    job_id      TEXT NOT NULL,
    state       TEXT NOT NULL,
    shard       INTEGER NOT NULL CHECK (shard BETWEEN 0 AND 7),
    n           INTEGER NOT NULL,
    PRIMARY KEY (job_id, state, shard)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER runs_count_inserted AFTER INSERT ON runs BEGIN
    INSERT INTO run_counts (job_id, state, shard, n) VALUES (new.job_id, new.state, 0, 1)
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER runs_count_updated AFTER UPDATE OF state, job_id ON runs
WHEN old.state IS NOT new.state OR old.job_id IS NOT new.job_id BEGIN
    INSERT INTO run_counts (job_id, state, shard, n) VALUES (old.job_id, old.state, 0, -1)
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = n - 1;
    INSERT INTO run_counts (job_id, state, shard, n) VALUES (new.job_id, new.state, 0, 1)
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = n + 1;
END;

-- A job's counter rows go once the job and all its runs are gone
-- (whichever goes last removes them), so rows are bounded by the jobs.
CREATE TRIGGER runs_count_deleted AFTER DELETE ON runs BEGIN
    INSERT INTO run_counts (job_id, state, shard, n) VALUES (old.job_id, old.state, 0, -1)
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = n - 1;
    DELETE FROM run_counts WHERE job_id = old.job_id
      AND NOT EXISTS (SELECT 1 FROM jobs WHERE job_id = old.job_id)
      AND NOT EXISTS (SELECT 1 FROM runs WHERE job_id = old.job_id);
END;

CREATE TRIGGER jobs_count_deleted AFTER DELETE ON jobs BEGIN
    DELETE FROM run_counts WHERE job_id = old.job_id
      AND NOT EXISTS (SELECT 1 FROM runs WHERE job_id = old.job_id);
END;

INSERT INTO run_counts (job_id, state, shard, n)
SELECT job_id, state, 0, count(*) FROM runs WHERE true GROUP BY job_id, state;
