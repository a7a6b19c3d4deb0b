-- Run counters (issue #12 §4): the ended runs of each job by state, so a
-- job's `run_counts` and GET /api/v1/stats read a few counter rows instead
-- of counting the job's run history.
--
-- Only ended runs (every state but queued, waiting and running) are
-- counted here. The live ones are few (bounded by the queue and the
-- workers, not by history) and each has an entry in a partial index
-- (`runs_active_job_idx`, `runs_waiting_job_idx`, `runs_queue_idx`,
-- `runs_running_idx`), so they are counted from those when read. Counting
-- them here too cost every run three new counter rows (created, claimed,
-- ended) and the drain a fifth of its speed; ended-only costs one, and a
-- periodic job's run an in-place update (docs/benchmarks.md, "run
-- counters").
--
-- Each job's count per state is the sum of up to 8 shard rows. A writing
-- transaction adds to shard `txid % 8`: transactions running together have
-- near-consecutive ids, so concurrent writers of one job's runs (workers
-- finishing its runs) each update a row of their own instead of all
-- queueing on one.
--
-- The counters are kept by statement-level triggers on `runs`, not by each
-- statement of the store: every statement that inserts, ends, re-queues or
-- deletes runs is counted, including those of a replica of an older
-- version running beside this one during a rolling upgrade, and those added
-- later. A trigger runs once per statement with all its rows (transition
-- tables), so a batch of runs costs one counter statement, and rows that
-- neither are nor were ended (claims, heartbeats) cost none.
--
-- No foreign key to `jobs` (see 0003: its check would lock the job's row
-- on every counter insert). A job's counter rows go once the job and all
-- its runs are gone (whichever goes last removes them), so rows are
-- bounded by the jobs, not the history.
CREATE TABLE run_counts (
    job_id      text NOT NULL,
    state       text NOT NULL,
    shard       smallint NOT NULL CHECK (shard BETWEEN 0 AND 7),
    n           bigint NOT NULL,
    PRIMARY KEY (job_id, state, shard)
) WITH (fillfactor = 50); -- room on each page for HOT updates of `n`

-- The shard a transaction writes its counter changes to.
CREATE FUNCTION run_counts_shard() RETURNS smallint LANGUAGE sql VOLATILE AS
    $$ SELECT (txid_current() % 8)::smallint $$;

-- Keys are applied in (job_id, state) order, so two statements never
-- wait for each other's rows in opposite orders.
CREATE FUNCTION run_counts_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_counts (job_id, state, shard, n)
    SELECT job_id, state, run_counts_shard(), count(*) FROM inserted_runs
    WHERE state NOT IN ('queued', 'waiting', 'running')
    GROUP BY job_id, state ORDER BY job_id, state
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = run_counts.n + excluded.n;
    RETURN NULL;
END $$;

CREATE FUNCTION run_counts_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_counts (job_id, state, shard, n)
    SELECT d.job_id, d.state, run_counts_shard(), sum(d.n) FROM (
        SELECT job_id, state, 1 AS n FROM new_runs WHERE state NOT IN ('queued', 'waiting', 'running')
        UNION ALL SELECT job_id, state, -1 FROM old_runs WHERE state NOT IN ('queued', 'waiting', 'running')) d
    GROUP BY d.job_id, d.state HAVING sum(d.n) <> 0 ORDER BY d.job_id, d.state
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = run_counts.n + excluded.n;
    RETURN NULL;
END $$;

CREATE FUNCTION run_counts_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_counts (job_id, state, shard, n)
    SELECT job_id, state, run_counts_shard(), -count(*) FROM deleted_runs
    WHERE state NOT IN ('queued', 'waiting', 'running')
    GROUP BY job_id, state ORDER BY job_id, state
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = run_counts.n + excluded.n;
    -- The last runs of a deleted job (a job is deleted before its runs).
    DELETE FROM run_counts c
    WHERE c.job_id IN (SELECT DISTINCT job_id FROM deleted_runs)
      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = c.job_id)
      AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.job_id = c.job_id);
    RETURN NULL;
END $$;

-- A job deleted when it has no runs left (pruned one-shot jobs).
CREATE FUNCTION run_counts_after_job_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM run_counts c
    WHERE c.job_id IN (SELECT job_id FROM deleted_jobs)
      AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.job_id = c.job_id);
    RETURN NULL;
END $$;

-- Creating the triggers locks `runs` against writes until this migration
-- commits, so the backfill below counts exactly the runs the triggers did
-- not see.
CREATE TRIGGER runs_count_inserted AFTER INSERT ON runs
    REFERENCING NEW TABLE AS inserted_runs
    FOR EACH STATEMENT EXECUTE FUNCTION run_counts_after_insert();
CREATE TRIGGER runs_count_updated AFTER UPDATE ON runs
    REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION run_counts_after_update();
CREATE TRIGGER runs_count_deleted AFTER DELETE ON runs
    REFERENCING OLD TABLE AS deleted_runs
    FOR EACH STATEMENT EXECUTE FUNCTION run_counts_after_delete();
CREATE TRIGGER jobs_count_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS deleted_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION run_counts_after_job_delete();

INSERT INTO run_counts (job_id, state, shard, n)
SELECT job_id, state, 0, count(*) FROM runs WHERE state NOT IN ('queued', 'waiting', 'running') GROUP BY job_id, state;
