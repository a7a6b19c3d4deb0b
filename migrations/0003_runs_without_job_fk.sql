-- Runs no longer reference jobs by a foreign key. The key's check took a
-- row lock on the job for every run inserted (a third of the cost of an
-- insert, and contention with the scheduler). Its two duties are kept by
-- the store instead: every statement that inserts a run holds the job's
-- row lock (or inserts the job itself), and deleting a job deletes its runs
-- in the same transaction, after the job row is gone.
ALTER TABLE runs DROP CONSTRAINT runs_job_id_fkey;
