//! The scheduler's statements: claim due jobs, insert their runs and
//! advance `next_run_at`, all in one transaction.
//!
//! Exactly once per (job, scheduled time): due jobs are locked with
//! `FOR UPDATE SKIP LOCKED`, so two replicas never process the same job at
//! once, and the unique index `runs_job_scheduled_once` rejects a second run
//! for the same scheduled time should anything slip through.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::events::{event_columns, events_cte, job_entries, run_entries, Appended};
use super::execution::{claimed_on_insert, inserted_claim_values, CLAIM_AT};
use super::notify::{self, Notice};
use super::runs::{history_entry_at, run_counts_active, RUN_COLUMNS};
use super::{
    ClaimSlots, DueBatch, DueJob, FiredRun, JobAdvance, NextDue, PgStore, RunRow, StoreResult,
};
use crate::domain::RunState;
use crate::store::firing::DueTx;

impl PgStore {
    /// Locks up to `limit` due jobs (skipping those another replica holds),
    /// then counts their runs. Returns none while the service is paused.
    ///
    /// The counts are read by a second statement, after the row locks are
    /// held: every writer that adds a run to a job (firing, manual triggers,
    /// operator re-queues) holds that job's row lock, so a fresh snapshot
    /// taken under the lock sees all of them, and `max_instances` is exact
    /// across replicas. (Counted in the locking statement, its snapshot
    /// would predate the lock and could miss a trigger committed between.)
    pub async fn due_jobs_claim(&self, limit: i64) -> StoreResult<DueBatch> {
        let mut tx = self.pool.begin().await?;
        // Firing batches reach jobs by primary key (hundreds at a time):
        // never by a scan of the table, which a small or freshly grown table
        // can make look cheaper. The plan test checks this with the setting.
        sqlx::query(FIRING_SETTINGS).execute(&mut *tx).await?;
        let mut jobs = sqlx::query_as::<_, DueJob>(DUE_JOBS_LOCK_SQL)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        if !jobs.is_empty() {
            let ids: Vec<String> = jobs.iter().map(|j| j.job_id.clone()).collect();
            let counts = run_counts_active(&mut tx, &ids).await?;
            for job in &mut jobs {
                if let Some(c) = counts.iter().find(|c| c.job_id == job.job_id) {
                    job.runs = c.clone();
                }
            }
        }
        Ok(DueBatch {
            jobs,
            tx: DueTx::Postgres(tx),
        })
    }

    /// The next due time and how long until it (zero if it has passed), by
    /// database time; `None` when nothing is scheduled or the service is
    /// paused.
    pub async fn due_jobs_next(&self) -> StoreResult<Option<NextDue>> {
        // min() of no rows is NULL: None, never "due now".
        let row: Option<(DateTime<Utc>, f64)> = sqlx::query_as(DUE_JOBS_NEXT_SQL)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(at, ms)| NextDue {
            at,
            wait: std::time::Duration::from_micros((ms.max(0.0) * 1000.0) as u64),
        }))
    }
}

/// [`DueBatch::commit`] on PostgreSQL.
/// Inserts the runs, advances the jobs and commits. Up to `claim.limit`
/// of the queued runs (without a `lock_key`, whose check needs the claim
/// lock) are inserted claimed by `claim.instance`, as
/// [`PgStore::run_claim`] would claim them, and returned to be started;
/// when others are left queued, the workers of every replica are woken.
pub(crate) async fn commit(
    mut tx: Transaction<'static, Postgres>,
    runs: &[FiredRun],
    advances: &[JobAdvance],
    claim: &ClaimSlots,
) -> StoreResult<Vec<RunRow>> {
    fn col<T, U>(items: &[T], f: impl Fn(&T) -> U) -> Vec<U> {
        items.iter().map(f).collect()
    }
    // One statement (one round trip): insert the runs and advance the
    // jobs; the runs inserted claimed are returned.
    let claimed = sqlx::query_as::<_, RunRow>(&fire_commit_sql())
        .bind(col(runs, |_| Uuid::now_v7()))
        .bind(col(runs, |r| r.job_id.clone()))
        .bind(col(runs, |r| r.scheduled_for))
        .bind(col(runs, |r| r.trigger.as_str()))
        .bind(col(runs, |r| r.state.as_str()))
        .bind(col(runs, |r| r.reason.clone()))
        .bind(col(runs, |r| r.result.clone()))
        .bind(&claim.instance)
        .bind(col(advances, |a| a.job_id.clone()))
        .bind(col(advances, |a| a.next_run_at))
        .bind(col(advances, |a| a.complete))
        .bind(claim.limit)
        .bind(claim.lease_ms)
        .fetch_all(&mut *tx)
        .await?;
    // Runs planned queued that were not claimed here are left for the
    // workers of every replica (one dropped as a duplicate time only
    // costs a spurious wake-up).
    let planned = runs.iter().filter(|r| r.state == RunState::Queued).count();
    if planned > claimed.len() {
        notify::send(&mut *tx, &Notice::runs_queued()).await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Planner settings of the firing transaction.
pub const FIRING_SETTINGS: &str = "SET LOCAL enable_seqscan = off";

/// The locking statement of [`PgStore::due_jobs_claim`]: `$1` limit.
pub(crate) const DUE_JOBS_LOCK_SQL: &str =
    "SELECT j.job_id, j.schedule_kind, j.interval_ms, j.cron, j.timezone, j.start_at, \
     j.misfire_grace_ms, j.coalesce, j.max_instances, \
     j.next_run_at, now() AS db_now FROM jobs j \
     WHERE next_run_at <= now() \
       AND NOT (SELECT paused FROM service_state WHERE id = 1) \
     ORDER BY next_run_at LIMIT $1 FOR UPDATE SKIP LOCKED";

/// The statement of [`PgStore::due_jobs_next`].
pub(crate) const DUE_JOBS_NEXT_SQL: &str =
    "SELECT min(next_run_at), (EXTRACT(EPOCH FROM (min(next_run_at) - now())) * 1000)::float8 \
     FROM jobs WHERE state = 'running' AND next_run_at IS NOT NULL \
       AND NOT (SELECT paused FROM service_state WHERE id = 1) \
     HAVING min(next_run_at) IS NOT NULL";

/// The statement of [`DueBatch::commit`] (its parameters are bound there).
pub(crate) fn fire_commit_sql() -> String {
    format!(
        "WITH firing AS ( \
           SELECT u.*, j.handler, j.kwargs, j.max_retries, j.retry_backoff_ms, j.timeout_ms, \
             j.misfire_grace_ms, j.lock_key, {claim} AS claim \
           FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], \
             $7::jsonb[]) WITH ORDINALITY AS u(run_id, job_id, scheduled_for, trigger, state, reason, result, ord) \
           JOIN jobs j ON j.job_id = u.job_id AND j.job_id = ANY($2) \
         ), inserted AS ( \
           INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after, state, \
             attempt, started_at, instance, lease_expires_at, history, \
             max_retries, retry_backoff_ms, timeout_ms, misfire_grace_ms, lock_key, result, error, \
             finished_at) \
           SELECT f.run_id, f.job_id, f.handler, f.kwargs, f.trigger, f.scheduled_for, {CLAIM_AT}, \
             {claimed_values}, \
             f.max_retries, f.retry_backoff_ms, f.timeout_ms, f.misfire_grace_ms, f.lock_key, f.result, \
             CASE WHEN f.state = 'missed' THEN f.reason END, \
             CASE WHEN f.state = 'missed' THEN {CLAIM_AT} END \
           FROM firing f \
           ON CONFLICT (job_id, scheduled_for) WHERE trigger <> 'manual' DO NOTHING \
           RETURNING {columns}, {event_columns} \
         ), advanced AS ( \
           UPDATE jobs j SET next_run_at = a.next_run_at, \
             state = CASE WHEN a.complete THEN 'completed' ELSE j.state END \
           FROM UNNEST($9::text[], $10::timestamptz[], $11::bool[]) AS a(job_id, next_run_at, complete) \
           WHERE j.job_id = a.job_id AND j.job_id = ANY($9) \
           RETURNING j.job_id, a.complete \
         ), {events} \
         SELECT {columns} FROM inserted WHERE state = 'running'",
        claim = claimed_on_insert("u.state = 'queued' AND j.lock_key IS NULL", "u.ord", "$12"),
        claimed_values = inserted_claim_values(
            "f.claim",
            "f.state",
            "$8::text",
            "$13",
            &history_entry_at(CLAIM_AT, "NULL", "f.state", "$8::text", "f.reason")
        ),
        columns = RUN_COLUMNS,
        event_columns = event_columns("runs"),
        // A due job is running (only a running job has a next fire time),
        // so completing it is its state's only change here.
        events = events_cte(
            "fired_events",
            &[
                run_entries(0, "inserted", Appended::All, false),
                job_entries(
                    1,
                    "advanced",
                    "'job.completed'",
                    CLAIM_AT,
                    "'running'",
                    "c.complete"
                ),
            ]
        ),
    )
}
