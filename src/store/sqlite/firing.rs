//! The scheduler's statements on the embedded store: due jobs are read in
//! a write transaction (so nothing changes them until the batch commits),
//! and their runs inserted with the unique (job, scheduled time) index
//! behind them, as on PostgreSQL.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use tokio::sync::broadcast;

use super::execution::{active_counts, claimed_history, id_list};
use super::rows::{
    from_micros, history_text, micros, opt_json_text, run_from_row, statement_chunks, RUN_COLUMNS,
};
use super::{
    now, ClaimSlots, DueBatch, DueJob, FiredRun, JobAdvance, NextDue, Notice, RunRow, SqliteStore,
    StoreResult,
};
use crate::domain::RunState;
use crate::store::firing::DueTx;

/// The open firing transaction of a [`DueBatch`] on the embedded store.
pub(crate) struct SqliteDueTx {
    pub(crate) tx: Transaction<'static, Sqlite>,
    pub(crate) wake: broadcast::Sender<Notice>,
}

impl SqliteStore {
    /// Reads up to `limit` due jobs with their run counts, in a write
    /// transaction held until [`DueBatch::commit`]. None while the service
    /// is paused.
    pub async fn due_jobs_claim(&self, limit: i64) -> StoreResult<DueBatch> {
        let at = now();
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "SELECT job_id, schedule_kind, interval_ms, cron, timezone, start_at, misfire_grace_ms, \
             \"coalesce\", max_instances, next_run_at FROM jobs \
             WHERE next_run_at <= ? AND NOT (SELECT paused FROM service_state WHERE id = 1) \
             ORDER BY next_run_at LIMIT ?",
        )
        .bind(micros(at))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            jobs.push(DueJob {
                job_id: row.try_get("job_id")?,
                schedule_kind: row.try_get("schedule_kind")?,
                interval_ms: row.try_get("interval_ms")?,
                cron: row.try_get("cron")?,
                timezone: row.try_get("timezone")?,
                start_at: from_micros(row.try_get("start_at")?),
                misfire_grace_ms: row.try_get("misfire_grace_ms")?,
                coalesce: row.try_get("coalesce")?,
                max_instances: row.try_get("max_instances")?,
                runs: Default::default(),
                next_run_at: from_micros(row.try_get("next_run_at")?),
                db_now: at,
            });
        }
        if !jobs.is_empty() {
            let ids: Vec<String> = jobs.iter().map(|j| j.job_id.clone()).collect();
            let counts = active_counts(&mut tx, &ids).await?;
            for job in &mut jobs {
                if let Some(c) = counts.iter().find(|c| c.job_id == job.job_id) {
                    job.runs = c.clone();
                }
            }
        }
        Ok(DueBatch {
            jobs,
            tx: DueTx::Sqlite(SqliteDueTx {
                tx,
                wake: self.wake().clone(),
            }),
        })
    }

    /// The next due time and how long until it; `None` when nothing is
    /// scheduled or the service is paused.
    pub async fn due_jobs_next(&self) -> StoreResult<Option<NextDue>> {
        // The due index's first entry (only a running job has a time).
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT next_run_at FROM jobs WHERE next_run_at IS NOT NULL \
             AND NOT (SELECT paused FROM service_state WHERE id = 1) \
             ORDER BY next_run_at LIMIT 1",
        )
        .fetch_optional(&self.readers)
        .await?;
        Ok(next.map(|us| NextDue {
            at: from_micros(us),
            wait: std::time::Duration::from_micros((us - micros(now())).max(0) as u64),
        }))
    }
}

/// What a fired run copies from its job.
struct JobDefaults {
    handler: String,
    kwargs: String,
    max_retries: i32,
    retry_backoff_ms: i64,
    timeout_ms: Option<i64>,
    misfire_grace_ms: Option<i64>,
    lock_key: Option<String>,
}

/// A run to insert, with its first history (and a claim, if claimed).
pub(crate) struct RunInsert<'a> {
    pub job_id: &'a str,
    pub handler: &'a str,
    pub kwargs: &'a str,
    pub trigger: crate::domain::Trigger,
    pub scheduled_for: DateTime<Utc>,
    pub state: RunState,
    pub reason: &'a str,
    pub history_instance: Option<&'a str>,
    pub result: Option<&'a serde_json::Value>,
    pub max_retries: i32,
    pub retry_backoff_ms: i64,
    pub timeout_ms: Option<i64>,
    pub misfire_grace_ms: Option<i64>,
    pub lock_key: Option<&'a str>,
    /// Claimed at insertion by this instance for this lease (ms).
    pub claim: Option<(&'a str, i64)>,
}

/// A run's column values, as [`insert_runs`] binds them.
struct RunValues<'a> {
    run: &'a RunInsert<'a>,
    run_id: String,
    state: RunState,
    attempt: i32,
    started_at: Option<i64>,
    instance: Option<&'a str>,
    lease_expires_at: Option<i64>,
    result: Option<String>,
    error: Option<&'a str>,
    finished_at: Option<i64>,
    history: String,
}

impl<'a> RunInsert<'a> {
    /// The row's values, with its first history (and claim).
    fn values(&'a self, at: DateTime<Utc>) -> RunValues<'a> {
        let mut history = vec![history_text(
            at,
            None,
            self.state,
            self.history_instance,
            self.reason,
        )];
        let (state, attempt, started_at, instance, lease_expires_at) = match self.claim {
            Some((instance, lease_ms)) => {
                history.push(claimed_history(at, instance, 1));
                (
                    RunState::Running,
                    1,
                    Some(micros(at)),
                    Some(instance),
                    Some(micros(at + Duration::milliseconds(lease_ms))),
                )
            }
            None => (self.state, 0, None, None, None),
        };
        let missed = self.state == RunState::Missed;
        RunValues {
            run: self,
            run_id: uuid::Uuid::now_v7().to_string(),
            state,
            attempt,
            started_at,
            instance,
            lease_expires_at,
            result: opt_json_text(self.result),
            error: missed.then_some(self.reason),
            finished_at: missed.then(|| micros(at)),
            history: format!("[{}]", history.join(",")),
        }
    }
}

/// Inserts runs, a [`statement_chunks`] chunk a statement (`queued`, `waiting`,
/// `missed`, or `running` when claimed at once, exactly as a claim would
/// leave it). A second scheduled run for the same (job, time) is dropped.
/// Returns the runs inserted, decoded when `decode` says so of their state.
pub(crate) async fn insert_runs(
    tx: &mut Transaction<'static, Sqlite>,
    runs: &[RunInsert<'_>],
    at: DateTime<Utc>,
    decode: impl Fn(RunState) -> bool,
) -> StoreResult<Inserted> {
    let mut inserted = Inserted::default();
    let values: Vec<RunValues<'_>> = runs.iter().map(|r| r.values(at)).collect();
    for chunk in statement_chunks(&values) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after, \
             created_at, state, attempt, started_at, instance, lease_expires_at, max_retries, \
             retry_backoff_ms, timeout_ms, misfire_grace_ms, lock_key, result, error, finished_at, \
             history) ",
        );
        insert.push_values(chunk, |mut row, v| {
            row.push_bind(&v.run_id)
                .push_bind(v.run.job_id)
                .push_bind(v.run.handler)
                .push_bind(v.run.kwargs)
                .push_bind(v.run.trigger)
                .push_bind(micros(v.run.scheduled_for))
                .push_bind(micros(at))
                .push_bind(micros(at))
                .push_bind(v.state)
                .push_bind(v.attempt)
                .push_bind(v.started_at)
                .push_bind(v.instance)
                .push_bind(v.lease_expires_at)
                .push_bind(v.run.max_retries)
                .push_bind(v.run.retry_backoff_ms)
                .push_bind(v.run.timeout_ms)
                .push_bind(v.run.misfire_grace_ms)
                .push_bind(v.run.lock_key)
                .push_bind(&v.result)
                .push_bind(v.error)
                .push_bind(v.finished_at)
                .push_bind(&v.history);
        });
        insert.push(format!(
            " ON CONFLICT (job_id, scheduled_for) WHERE trigger <> 'manual' DO NOTHING \
             RETURNING {RUN_COLUMNS}"
        ));
        let written = insert.build().fetch_all(&mut **tx).await?;
        for row in &written {
            let state: RunState = row.try_get("state")?;
            inserted.count += 1;
            inserted.queued |= state == RunState::Queued;
            if decode(state) {
                inserted.rows.push(run_from_row(row)?);
            }
        }
    }
    Ok(inserted)
}

/// What [`insert_runs`] stored.
#[derive(Default)]
pub(crate) struct Inserted {
    pub count: usize,
    /// One of them was left queued.
    pub queued: bool,
    pub rows: Vec<RunRow>,
}

/// [`DueBatch::commit`] on the embedded store: inserts the runs (up to
/// `claim.limit` queued ones without a lock key claimed at once), advances
/// the jobs, commits, and wakes the workers if runs were left queued.
pub(crate) async fn commit(
    due: SqliteDueTx,
    runs: &[FiredRun],
    advances: &[JobAdvance],
    claim: &ClaimSlots,
) -> StoreResult<Vec<RunRow>> {
    let SqliteDueTx { mut tx, wake } = due;
    // Stamped at the commit, as on PostgreSQL (see `CLAIM_AT` there).
    let at = now();
    let mut defaults: HashMap<String, JobDefaults> = HashMap::new();
    if !runs.is_empty() {
        let ids: Vec<&str> = runs.iter().map(|r| r.job_id.as_str()).collect();
        let rows = sqlx::query(
            "SELECT job_id, handler, kwargs, max_retries, retry_backoff_ms, timeout_ms, \
             misfire_grace_ms, lock_key FROM jobs WHERE job_id IN (SELECT value FROM json_each(?))",
        )
        .bind(id_list(ids))
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            defaults.insert(
                row.try_get("job_id")?,
                JobDefaults {
                    handler: row.try_get("handler")?,
                    kwargs: row.try_get("kwargs")?,
                    max_retries: row.try_get("max_retries")?,
                    retry_backoff_ms: row.try_get("retry_backoff_ms")?,
                    timeout_ms: row.try_get("timeout_ms")?,
                    misfire_grace_ms: row.try_get("misfire_grace_ms")?,
                    lock_key: row.try_get("lock_key")?,
                },
            );
        }
    }
    let mut claims = 0;
    let mut inserts = Vec::with_capacity(runs.len());
    for run in runs {
        let Some(job) = defaults.get(&run.job_id) else {
            continue;
        };
        // Decided before the insert, as on PostgreSQL: a time dropped as a
        // duplicate only leaves a slot unused until the next claim.
        let claim_it =
            run.state == RunState::Queued && job.lock_key.is_none() && claims < claim.limit;
        claims += i64::from(claim_it);
        inserts.push(RunInsert {
            job_id: &run.job_id,
            handler: &job.handler,
            kwargs: &job.kwargs,
            trigger: run.trigger,
            scheduled_for: run.scheduled_for,
            state: run.state,
            reason: &run.reason,
            history_instance: Some(&claim.instance),
            result: run.result.as_ref(),
            max_retries: job.max_retries,
            retry_backoff_ms: job.retry_backoff_ms,
            timeout_ms: job.timeout_ms,
            misfire_grace_ms: job.misfire_grace_ms,
            lock_key: job.lock_key.as_deref(),
            claim: claim_it.then_some((claim.instance.as_str(), claim.lease_ms)),
        });
    }
    let inserted = insert_runs(&mut tx, &inserts, at, |s| s == RunState::Running).await?;
    let (claimed, left_queued) = (inserted.rows, inserted.queued);
    if !advances.is_empty() {
        let rows: Vec<serde_json::Value> = advances
            .iter()
            .map(|a| {
                serde_json::json!({"job_id": a.job_id, "next": a.next_run_at.map(micros),
                                   "complete": a.complete})
            })
            .collect();
        sqlx::query(
            "UPDATE jobs SET next_run_at = a.next, \
             state = CASE WHEN a.complete THEN 'completed' ELSE jobs.state END, \
             version = jobs.version + 1 \
             FROM (SELECT value ->> 'job_id' AS job_id, value ->> 'next' AS next, \
                   value ->> 'complete' AS complete FROM json_each(?)) AS a \
             WHERE jobs.job_id = a.job_id",
        )
        .bind(serde_json::Value::from(rows).to_string())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if left_queued {
        super::send(&wake, &Notice::runs_queued());
    }
    Ok(claimed)
}
