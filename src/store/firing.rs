//! The scheduler's statements: claim due jobs, insert their runs and
//! advance `next_run_at`, all in one transaction.
//!
//! Exactly once per (job, scheduled time): due jobs are locked with
//! `FOR UPDATE SKIP LOCKED`, so two replicas never process the same job at
//! once, and the unique index `runs_job_scheduled_once` rejects a second run
//! for the same scheduled time should anything slip through.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

use super::notify::Channel;
use super::{Store, StoreResult};

/// A job whose `next_run_at` has come, locked for this transaction.
#[derive(Debug, Clone, FromRow)]
pub struct DueJob {
    pub job_id: String,
    pub schedule_kind: String,
    pub interval_ms: Option<i64>,
    pub cron: Option<String>,
    pub timezone: String,
    pub start_at: DateTime<Utc>,
    pub misfire_grace_ms: Option<i64>,
    pub coalesce: bool,
    pub max_instances: i32,
    /// Runs of this job queued or running now.
    pub active_runs: i64,
    pub next_run_at: DateTime<Utc>,
    /// Database time of the claim.
    pub db_now: DateTime<Utc>,
}

/// A run the scheduler creates: `queued`, or `missed` (recorded, never run).
#[derive(Debug, Clone, PartialEq)]
pub struct FiredRun {
    pub job_id: String,
    pub scheduled_for: DateTime<Utc>,
    /// `schedule` or `catch-up`.
    pub trigger: String,
    /// `queued` or `missed`.
    pub state: String,
    pub reason: String,
    /// For missed runs: how many times were missed, and when.
    pub result: Option<Value>,
}

/// Where a fired job goes next.
#[derive(Debug, Clone, PartialEq)]
pub struct JobAdvance {
    pub job_id: String,
    pub next_run_at: Option<DateTime<Utc>>,
    /// A one-shot job whose only run was missed is completed at once.
    pub complete: bool,
}

/// When the scheduler should look next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextDue {
    /// The earliest `next_run_at` (database time).
    pub at: DateTime<Utc>,
    /// How long until then, from the database's now.
    pub wait: std::time::Duration,
}

/// Due jobs held locked until [`DueBatch::commit`].
pub struct DueBatch {
    tx: Transaction<'static, Postgres>,
    pub jobs: Vec<DueJob>,
}

impl Store {
    /// Locks up to `limit` due jobs (skipping those another replica holds).
    /// Returns none while the service is paused.
    pub async fn due_jobs_claim(&self, limit: i64) -> StoreResult<DueBatch> {
        let mut tx = self.pool.begin().await?;
        let jobs = sqlx::query_as::<_, DueJob>(
            "SELECT j.job_id, j.schedule_kind, j.interval_ms, j.cron, j.timezone, j.start_at, \
             j.misfire_grace_ms, j.coalesce, j.max_instances, \
             (SELECT count(*) FROM runs r WHERE r.job_id = j.job_id AND r.state IN ('queued', 'running')) \
               AS active_runs, \
             j.next_run_at, now() AS db_now FROM jobs j \
             WHERE state = 'running' AND next_run_at <= now() \
               AND NOT (SELECT paused FROM service_state WHERE id = 1) \
             ORDER BY next_run_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        Ok(DueBatch { tx, jobs })
    }

    /// The next due time and how long until it (zero if it has passed), by
    /// database time; `None` when nothing is scheduled or the service is
    /// paused.
    pub async fn due_jobs_next(&self) -> StoreResult<Option<NextDue>> {
        // min() of no rows is NULL: None, never "due now".
        let row: Option<(DateTime<Utc>, f64)> = sqlx::query_as(
            "SELECT min(next_run_at), (EXTRACT(EPOCH FROM (min(next_run_at) - now())) * 1000)::float8 \
             FROM jobs WHERE state = 'running' AND next_run_at IS NOT NULL \
               AND NOT (SELECT paused FROM service_state WHERE id = 1) \
             HAVING min(next_run_at) IS NOT NULL",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(at, ms)| NextDue {
            at,
            wait: std::time::Duration::from_micros((ms.max(0.0) * 1000.0) as u64),
        }))
    }
}

impl DueBatch {
    /// Inserts the runs, advances the jobs and commits; wakes the workers
    /// of every replica when runs were queued, and says whether any were.
    pub async fn commit(
        mut self,
        instance: &str,
        runs: &[FiredRun],
        advances: &[JobAdvance],
    ) -> StoreResult<bool> {
        fn col<T, U>(items: &[T], f: impl Fn(&T) -> U) -> Vec<U> {
            items.iter().map(f).collect()
        }
        let queued = runs.iter().any(|r| r.state == "queued");
        // One statement (one round trip): insert the runs, advance the jobs,
        // and notify the workers when something was queued.
        sqlx::query(
            "WITH inserted AS ( \
               INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after, state, \
                 max_retries, retry_backoff_ms, timeout_ms, misfire_grace_ms, lock_key, result, error, \
                 finished_at, history) \
               SELECT u.run_id, j.job_id, j.handler, j.kwargs, u.trigger, u.scheduled_for, now(), u.state, \
                 j.max_retries, j.retry_backoff_ms, j.timeout_ms, j.misfire_grace_ms, j.lock_key, u.result, \
                 CASE WHEN u.state = 'missed' THEN u.reason END, \
                 CASE WHEN u.state = 'missed' THEN now() END, \
                 jsonb_build_array(jsonb_build_object('at', now(), 'from', NULL, 'to', u.state, \
                    'instance', $8::text, 'reason', u.reason)) \
               FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], \
                 $7::jsonb[]) AS u(run_id, job_id, scheduled_for, trigger, state, reason, result) \
               JOIN jobs j ON j.job_id = u.job_id \
               ON CONFLICT (job_id, scheduled_for) WHERE trigger <> 'manual' DO NOTHING \
             ), advanced AS ( \
               UPDATE jobs j SET next_run_at = a.next_run_at, \
                 state = CASE WHEN a.complete THEN 'completed' ELSE j.state END \
               FROM UNNEST($9::text[], $10::timestamptz[], $11::bool[]) AS a(job_id, next_run_at, complete) \
               WHERE j.job_id = a.job_id \
             ) \
             SELECT pg_notify($12, '') WHERE $13",
        )
        .bind(col(runs, |_| Uuid::new_v4()))
        .bind(col(runs, |r| r.job_id.clone()))
        .bind(col(runs, |r| r.scheduled_for))
        .bind(col(runs, |r| r.trigger.clone()))
        .bind(col(runs, |r| r.state.clone()))
        .bind(col(runs, |r| r.reason.clone()))
        .bind(col(runs, |r| r.result.clone()))
        .bind(instance)
        .bind(col(advances, |a| a.job_id.clone()))
        .bind(col(advances, |a| a.next_run_at))
        .bind(col(advances, |a| a.complete))
        .bind(Channel::RunsQueued.name())
        .bind(queued)
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(queued)
    }
}
