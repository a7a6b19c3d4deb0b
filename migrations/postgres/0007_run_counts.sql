-- Run counters (issue #12 §4): the stored runs of each job by state, so a
-- job's `run_counts` and GET /api/v1/stats read a few counter rows instead
-- of counting the job's run history.
--
-- Each job's count per state is the sum of up to 8 shard rows. A writing
-- transaction adds to shard `txid % 8`: transactions running together have
-- near-consecutive ids, so concurrent writers of one job's runs (workers
-- finishing its runs, the scheduler firing it) each update a row of their
-- own instead of all queueing on one.
--
-- The counters are kept by statement-level triggers on `runs`, not by each
-- statement of the store: every statement that inserts, changes the state
-- of, or deletes runs is counted, including those of a replica of an older
-- version running beside this one during a rolling upgrade, and those added
-- later. A trigger runs once per statement with all its rows (transition
-- tables), so a batch of runs costs one counter statement, and rows whose
-- state did not change (heartbeats) cost none.
--
-- No foreign key to `jobs` (see 0003: its check would lock the job's row
-- on every counter insert). A deleted job's counters drop to zero when its
-- runs are deleted; `jobsd maintenance`'s pass removes the zero rows of
-- jobs that no longer exist.
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
    GROUP BY job_id, state ORDER BY job_id, state
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = run_counts.n + excluded.n;
    RETURN NULL;
END $$;

CREATE FUNCTION run_counts_after_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_counts (job_id, state, shard, n)
    SELECT d.job_id, d.state, run_counts_shard(), sum(d.n) FROM (
        SELECT job_id, state, 1 AS n FROM new_runs
        UNION ALL SELECT job_id, state, -1 FROM old_runs) d
    GROUP BY d.job_id, d.state HAVING sum(d.n) <> 0 ORDER BY d.job_id, d.state
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = run_counts.n + excluded.n;
    RETURN NULL;
END $$;

CREATE FUNCTION run_counts_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_counts (job_id, state, shard, n)
    SELECT job_id, state, run_counts_shard(), -count(*) FROM deleted_runs
    GROUP BY job_id, state ORDER BY job_id, state
    ON CONFLICT (job_id, state, shard) DO UPDATE SET n = run_counts.n + excluded.n;
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

INSERT INTO run_counts (job_id, state, shard, n)
SELECT job_id, state, 0, count(*) FROM runs GROUP BY job_id, state;
