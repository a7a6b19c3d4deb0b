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

use super::notify::{self, Channel};
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

    /// How long until the next job is due (zero if one is due now), by
    /// database time; `None` when nothing is scheduled or the service is paused.
    pub async fn due_jobs_next_in(&self) -> StoreResult<Option<std::time::Duration>> {
        let ms: Option<f64> = sqlx::query_scalar(
            "SELECT GREATEST(0, EXTRACT(EPOCH FROM (min(next_run_at) - now())) * 1000)::float8 \
             FROM jobs WHERE state = 'running' AND next_run_at IS NOT NULL \
               AND NOT (SELECT paused FROM service_state WHERE id = 1)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(ms.map(|ms| std::time::Duration::from_micros((ms * 1000.0) as u64)))
    }
}

impl DueBatch {
    /// Inserts the runs, advances the jobs and commits; wakes the workers
    /// of every replica when runs were queued.
    pub async fn commit(
        mut self,
        instance: &str,
        runs: &[FiredRun],
        advances: &[JobAdvance],
    ) -> StoreResult<()> {
        if !runs.is_empty() {
            let run_ids: Vec<Uuid> = runs.iter().map(|_| Uuid::new_v4()).collect();
            let job_ids: Vec<&str> = runs.iter().map(|r| r.job_id.as_str()).collect();
            let scheduled: Vec<DateTime<Utc>> = runs.iter().map(|r| r.scheduled_for).collect();
            let triggers: Vec<&str> = runs.iter().map(|r| r.trigger.as_str()).collect();
            let states: Vec<&str> = runs.iter().map(|r| r.state.as_str()).collect();
            let reasons: Vec<&str> = runs.iter().map(|r| r.reason.as_str()).collect();
            let results: Vec<Option<Value>> = runs.iter().map(|r| r.result.clone()).collect();
            sqlx::query(
                "INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after, state, \
                 max_retries, retry_backoff_ms, timeout_ms, misfire_grace_ms, lock_key, result, error, \
                 finished_at, history) \
                 SELECT u.run_id, j.job_id, j.handler, j.kwargs, u.trigger, u.scheduled_for, now(), u.state, \
                 j.max_retries, j.retry_backoff_ms, j.timeout_ms, j.misfire_grace_ms, j.lock_key, u.result, \
                 CASE WHEN u.state = 'missed' THEN u.reason END, \
                 CASE WHEN u.state = 'missed' THEN now() END, \
                 jsonb_build_array(jsonb_build_object('at', now(), 'from', NULL, 'to', u.state, \
                    'instance', $8::text, 'reason', u.reason)) \
                 FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::jsonb[]) \
                    AS u(run_id, job_id, scheduled_for, trigger, state, reason, result) \
                 JOIN jobs j ON j.job_id = u.job_id \
                 ON CONFLICT (job_id, scheduled_for) WHERE trigger <> 'manual' DO NOTHING",
            )
            .bind(&run_ids)
            .bind(&job_ids)
            .bind(&scheduled)
            .bind(&triggers)
            .bind(&states)
            .bind(&reasons)
            .bind(&results)
            .bind(instance)
            .execute(&mut *self.tx)
            .await?;
        }
        if !advances.is_empty() {
            let job_ids: Vec<&str> = advances.iter().map(|a| a.job_id.as_str()).collect();
            let next: Vec<Option<DateTime<Utc>>> = advances.iter().map(|a| a.next_run_at).collect();
            let complete: Vec<bool> = advances.iter().map(|a| a.complete).collect();
            sqlx::query(
                "UPDATE jobs j SET next_run_at = u.next_run_at, \
                 state = CASE WHEN u.complete THEN 'completed' ELSE j.state END \
                 FROM UNNEST($1::text[], $2::timestamptz[], $3::bool[]) AS u(job_id, next_run_at, complete) \
                 WHERE j.job_id = u.job_id",
            )
            .bind(&job_ids)
            .bind(&next)
            .bind(&complete)
            .execute(&mut *self.tx)
            .await?;
        }
        if runs.iter().any(|r| r.state == "queued") {
            notify::send(&mut *self.tx, Channel::RunsQueued, "").await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}
