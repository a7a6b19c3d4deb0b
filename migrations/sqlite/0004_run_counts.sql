-- Run counters (see the PostgreSQL migration 0007): the ended runs of each
-- job by state; the live ones (queued, waiting, running) are counted from
-- their partial indexes when read. SQLite has one writer, so there is no
-- contention to spread: every count is shard 0 (the column is kept so both
-- schemas read alike). Row-level triggers keep them (SQLite has no
-- statement-level ones); each costs one upsert into this small table, only
-- when a run enters or leaves an ended state.
CREATE TABLE run_counts (
    job_id      TEXT NOT NULL,
    state       TEXT NOT NULL,
    shard       INTEGER NOT NULL CHECK (shard BETWEEN 0 AND 7),
    n           INTEGER NOT NULL,
    PRIMARY KEY (job_id, state, shard)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER runs_count_inserted AFTER INSERT ON runs
WHEN new.state NOT IN ('queued', 'waiting', 'running') BEGIN
    INSERT INTO run_counts (job_id, state, shard, n) VALUES (new.job_id, new.state, 0, 1)
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER runs_count_left AFTER UPDATE OF state, job_id ON runs
WHEN (old.state IS NOT new.state OR old.job_id IS NOT new.job_id)
  AND old.state NOT IN ('queued', 'waiting', 'running') BEGIN
    INSERT INTO run_counts (job_id, state, shard, n) VALUES (old.job_id, old.state, 0, -1)
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = n - 1;
END;

CREATE TRIGGER runs_count_entered AFTER UPDATE OF state, job_id ON runs
WHEN (old.state IS NOT new.state OR old.job_id IS NOT new.job_id)
  AND new.state NOT IN ('queued', 'waiting', 'running') BEGIN
    INSERT INTO run_counts (job_id, state, shard, n) VALUES (new.job_id, new.state, 0, 1)
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = n + 1;
END;

-- One trigger for both steps of a deleted run, in this order (SQLite does
-- not order separate triggers): its count goes, then, once the job and all
-- its runs are gone (whichever goes last removes them), the job's counter
-- rows, so rows are bounded by the jobs.
CREATE TRIGGER runs_count_deleted AFTER DELETE ON runs BEGIN
    INSERT INTO run_counts (job_id, state, shard, n)
    SELECT old.job_id, old.state, 0, -1 WHERE old.state NOT IN ('queued', 'waiting', 'running')
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
SELECT job_id, state, 0, count(*) FROM runs
WHERE state NOT IN ('queued', 'waiting', 'running') GROUP BY job_id, state;
