//! The workers' statements: claim queued runs, renew leases, record
//! outcomes, retry, hand back at shutdown, and rescue runs whose instance
//! died.
//!
//! Fencing: every write about a running run demands `state = 'running'`, the
//! claiming `instance` and the claimed `attempt`, and reports whether it took
//! effect. A worker whose lease was taken over, or whose run an operator
//! ended, therefore cannot overwrite the newer state.

use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::notify::{self, Channel};
use super::runs::{history_entry, RunRow, RUN_COLUMNS};
use super::{Store, StoreResult};
use crate::handlers::ERROR_HANDLER;

/// Claims are serialized across replicas by this advisory lock, so the
/// `max_instances` and `lock_key` counts each claim sees are exact.
const CLAIM_LOCK: i64 = 0x6a6f_6273_645f_636c; // "jobsd_cl"

/// Whether the run in `r` starts later than its misfire grace allows (first
/// start only; retries and manual runs are never late).
const LATE: &str = "(r.started_at IS NULL AND r.misfire_grace_ms IS NOT NULL \
    AND now() > r.scheduled_for + r.misfire_grace_ms * interval '1 millisecond')";

/// Who claims runs, for how long, and how many at most (the worker slots
/// reserved for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSlots {
    pub instance: String,
    pub lease_ms: i64,
    pub limit: i64,
}

impl ClaimSlots {
    /// Claims nothing: for writers with no workers to hand runs to.
    pub fn none(instance: &str) -> Self {
        ClaimSlots {
            instance: instance.to_string(),
            lease_ms: 0,
            limit: 0,
        }
    }
}

/// The history reason of a claim; `attempt` is the SQL of the new attempt.
pub(crate) fn claimed_reason(attempt: &str) -> String {
    format!("'claimed (attempt ' || ({attempt}) || ')'")
}

/// Whether a run being inserted is claimed at once (SQL): it is `eligible`
/// (has no `lock_key`, whose check needs the claim lock) and among the
/// first `limit` eligible ones in `order`.
pub(crate) fn claimed_on_insert(eligible: &str, order: &str, limit: &str) -> String {
    format!(
        "({eligible} AND count(*) FILTER (WHERE {eligible}) OVER (ORDER BY {order}) <= {limit})"
    )
}

/// The values of `state, attempt, started_at, instance, lease_expires_at,
/// history` for a run inserted by a writer that may claim it (SQL): when
/// `claim` holds, it is `running`, claimed by `instance` for `lease_ms`,
/// exactly as [`Store::run_claim`] would leave it; otherwise it is `state`.
/// `history` is its first entry, written either way.
pub(crate) fn inserted_claim_values(
    claim: &str,
    state: &str,
    instance: &str,
    lease_ms: &str,
    history: &str,
) -> String {
    format!(
        "CASE WHEN {claim} THEN 'running' ELSE {state} END, CASE WHEN {claim} THEN 1 ELSE 0 END, \
         CASE WHEN {claim} THEN now() END, CASE WHEN {claim} THEN {instance} END, \
         CASE WHEN {claim} THEN now() + {lease_ms} * interval '1 millisecond' END, \
         CASE WHEN {claim} THEN {history} || {claimed} ELSE {history} END",
        claimed = history_entry("'queued'", "'running'", instance, &claimed_reason("1")),
    )
}

/// Fences a write to the run this worker claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunClaim {
    pub run_id: Uuid,
    pub attempt: i32,
    pub instance: String,
}

/// How an attempt ended, to record.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// `succeeded`, `failed`, `timed_out` or `cancelled`.
    pub state: String,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub traceback: Option<String>,
    pub reason: String,
}

/// A failed attempt to try again after `delay_ms`.
#[derive(Debug, Clone)]
pub struct RunRetry {
    pub delay_ms: i64,
    pub error: String,
    pub traceback: Option<String>,
    pub reason: String,
}

/// The latest state of a running run, as its heartbeat sees it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HeartbeatAck {
    pub run_id: Uuid,
    pub cancel_requested: bool,
}

impl Store {
    /// Claims up to `limit` due queued runs for `instance`, honouring every
    /// `lock_key` across all replicas. `max_instances` needs no check here:
    /// runs are only ever queued while the job has fewer than
    /// `max_instances` runs queued or running (the scheduler skips, manual
    /// triggers and overrides answer 409), and retries re-use their slot.
    /// Rows are not locked while choosing (the advisory lock serializes
    /// claimers); the update re-checks `state = 'queued'`, so a run cancelled
    /// meanwhile is skipped. A run
    /// started later than its misfire grace allows is marked `missed`
    /// instead (returned too, in that state, so the caller can log it).
    pub async fn run_claim(&self, slots: &ClaimSlots) -> StoreResult<Vec<RunRow>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK)
            .execute(&mut *tx)
            .await?;
        let sql = format!(
            "WITH due AS ( \
                SELECT r.run_id, r.lock_key, r.run_after FROM runs r \
                WHERE r.state = 'queued' AND r.run_after <= now() \
                ORDER BY r.run_after LIMIT $2 * 2 + 16 \
             ), free_of_lock AS ( \
                SELECT d.run_id, d.run_after FROM due d WHERE d.lock_key IS NULL \
                UNION ALL \
                SELECT * FROM (SELECT DISTINCT ON (d.lock_key) d.run_id, d.run_after FROM due d \
                  WHERE d.lock_key IS NOT NULL AND NOT EXISTS \
                    (SELECT 1 FROM runs y WHERE y.lock_key = d.lock_key AND y.state = 'running') \
                  ORDER BY d.lock_key, d.run_after, d.run_id) first_per_key \
             ), picked AS ( \
                SELECT run_id FROM free_of_lock ORDER BY run_after LIMIT $2 \
             ) \
             UPDATE runs r SET \
                state = CASE WHEN {late} THEN 'missed' ELSE 'running' END, \
                attempt = CASE WHEN {late} THEN r.attempt ELSE r.attempt + 1 END, \
                started_at = CASE WHEN {late} THEN r.started_at ELSE now() END, \
                finished_at = CASE WHEN {late} THEN now() END, \
                error = CASE WHEN {late} THEN 'missed: not started within misfire_grace_time' ELSE r.error END, \
                instance = $1, \
                lease_expires_at = CASE WHEN {late} THEN NULL ELSE now() + $3 * interval '1 millisecond' END, \
                history = r.history || {history} \
             WHERE r.run_id = ANY(ARRAY(SELECT run_id FROM picked)) AND r.state = 'queued' \
             RETURNING {columns}",
            late = LATE,
            history = history_entry(
                "'queued'",
                &format!("CASE WHEN {LATE} THEN 'missed' ELSE 'running' END"),
                "$1::text",
                &format!(
                    "CASE WHEN {LATE} THEN 'start was later than misfire_grace_time allows' \
                     ELSE {} END",
                    claimed_reason("r.attempt + 1")
                )
            ),
            columns = RUN_COLUMNS,
        );
        let runs = sqlx::query_as::<_, RunRow>(&sql)
            .bind(&slots.instance)
            .bind(slots.limit)
            .bind(slots.lease_ms)
            .fetch_all(&mut *tx)
            .await?;
        let missed: Vec<String> = runs
            .iter()
            .filter(|r| r.state == "missed")
            .map(|r| r.job_id.clone())
            .collect();
        complete_one_shot_jobs(&mut tx, &missed).await?;
        tx.commit().await?;
        Ok(runs)
    }

    /// The soonest `run_after` of a queued run, as a wait from now.
    pub async fn run_next_queued_in(&self) -> StoreResult<Option<std::time::Duration>> {
        let ms: Option<f64> = sqlx::query_scalar(
            "SELECT (EXTRACT(EPOCH FROM (min(run_after) - now())) * 1000)::float8 \
             FROM runs WHERE state = 'queued'",
        )
        .fetch_one(&self.pool)
        .await?;
        // NULL (None) when there is no row; a time already past waits zero.
        Ok(ms.map(|ms| std::time::Duration::from_micros((ms.max(0.0) * 1000.0) as u64)))
    }

    /// Renews the leases of this instance's running runs and stores their
    /// latest progress. Returns the runs still held (a run missing from the
    /// answer was lost: its lease was taken over or an operator ended it).
    pub async fn run_heartbeat(
        &self,
        instance: &str,
        lease_ms: i64,
        runs: &[(Uuid, Option<Value>)],
    ) -> StoreResult<Vec<HeartbeatAck>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = runs.iter().map(|(id, _)| *id).collect();
        let progress: Vec<Option<Value>> = runs.iter().map(|(_, p)| p.clone()).collect();
        Ok(sqlx::query_as::<_, HeartbeatAck>(
            "UPDATE runs r SET lease_expires_at = now() + $2 * interval '1 millisecond', \
             progress = COALESCE(u.progress, r.progress) \
             FROM UNNEST($3::uuid[], $4::jsonb[]) AS u(run_id, progress) \
             WHERE r.run_id = u.run_id AND r.state = 'running' AND r.instance = $1 \
             RETURNING r.run_id, r.cancel_requested",
        )
        .bind(instance)
        .bind(lease_ms)
        .bind(&ids)
        .bind(&progress)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records the end of an attempt. A `failed` or `timed_out` run also gets
    /// a failure record; a one-shot job whose run ended becomes `completed`.
    /// Returns false (and changes nothing) when the claim is stale.
    pub async fn run_finish(&self, claim: &RunClaim, outcome: &RunOutcome) -> StoreResult<bool> {
        let written = self
            .run_finish_many(&[(claim.clone(), outcome.clone())])
            .await?;
        Ok(written.contains(&claim.run_id))
    }

    /// [`Store::run_finish`] for many runs in one transaction; returns the
    /// runs whose outcome was written (the others' claims were stale).
    pub async fn run_finish_many(
        &self,
        finished: &[(RunClaim, RunOutcome)],
    ) -> StoreResult<Vec<Uuid>> {
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        fn col<T>(f: &[(RunClaim, RunOutcome)], g: impl Fn(&RunClaim, &RunOutcome) -> T) -> Vec<T> {
            f.iter().map(|(c, o)| g(c, o)).collect()
        }
        // One statement, so one round trip and one commit: write the
        // outcomes, the failure records of failed runs, and complete the
        // one-shot jobs that have nothing left to run. The sub-statements see
        // the runs as they were, so the finished runs are excluded by hand.
        let sql = format!(
            "WITH finished AS (UPDATE runs r SET state = u.state, finished_at = now(), result = u.result, \
               error = u.error, traceback = u.traceback, lease_expires_at = NULL, history = r.history || {history} \
             FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::jsonb[], $6::text[], \
               $7::text[], $8::text[]) \
               AS u(run_id, attempt, instance, state, result, error, traceback, reason) \
             WHERE r.run_id = u.run_id AND r.state = 'running' AND r.attempt = u.attempt \
               AND r.instance = u.instance \
             RETURNING r.run_id, r.job_id, r.handler, r.kwargs, r.state, r.error, r.traceback), \
             failure_records AS ({failure_records}), \
             completed AS ({completed}) \
             SELECT run_id FROM finished",
            history = history_entry("'running'", "u.state", "u.instance", "u.reason"),
            failure_records = failure_records_sql(
                "finished r WHERE r.state IN ('failed', 'timed_out')",
                "$9"
            ),
            completed = complete_one_shot_jobs_sql(
                "SELECT job_id FROM finished",
                "SELECT run_id FROM finished"
            ),
        );
        let written: Vec<Uuid> = sqlx::query_scalar(&sql)
            .bind(col(finished, |c, _| c.run_id))
            .bind(col(finished, |c, _| c.attempt))
            .bind(col(finished, |c, _| c.instance.clone()))
            .bind(col(finished, |_, o| o.state.clone()))
            .bind(col(finished, |_, o| o.result.clone()))
            .bind(col(finished, |_, o| o.error.clone()))
            .bind(col(finished, |_, o| o.traceback.clone()))
            .bind(col(finished, |_, o| o.reason.clone()))
            .bind(ERROR_HANDLER)
            .fetch_all(&self.pool)
            .await?;
        Ok(written)
    }

    /// Queues a failed attempt again after its backoff. Returns false when
    /// the claim is stale.
    pub async fn run_retry(&self, claim: &RunClaim, retry: &RunRetry) -> StoreResult<bool> {
        let sql = format!(
            "UPDATE runs SET state = 'queued', run_after = now() + $4 * interval '1 millisecond', \
             error = $5, traceback = $6, lease_expires_at = NULL, history = history || {} \
             WHERE run_id = $1 AND state = 'running' AND attempt = $2 AND instance = $3",
            history_entry("'running'", "'queued'", "$3::text", "$7::text")
        );
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(&sql)
            .bind(claim.run_id)
            .bind(claim.attempt)
            .bind(&claim.instance)
            .bind(retry.delay_ms)
            .bind(&retry.error)
            .bind(&retry.traceback)
            .bind(&retry.reason)
            .execute(&mut *tx)
            .await?;
        notify::send(&mut *tx, Channel::RunsQueued, "").await?;
        tx.commit().await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Hands runs back to the queue (graceful shutdown): they start again at
    /// once on a live replica, and the interrupted attempt is not counted.
    pub async fn run_hand_back(&self, claims: &[RunClaim], reason: &str) -> StoreResult<u64> {
        if claims.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = claims.iter().map(|c| c.run_id).collect();
        let attempts: Vec<i32> = claims.iter().map(|c| c.attempt).collect();
        let instance = &claims[0].instance;
        let sql = format!(
            "UPDATE runs r SET state = 'queued', run_after = now(), attempt = r.attempt - 1, \
             lease_expires_at = NULL, history = r.history || {} \
             FROM UNNEST($1::uuid[], $2::int4[]) AS u(run_id, attempt) \
             WHERE r.run_id = u.run_id AND r.attempt = u.attempt AND r.state = 'running' AND r.instance = $3",
            history_entry("'running'", "'queued'", "$3::text", "$4::text")
        );
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(&sql)
            .bind(&ids)
            .bind(&attempts)
            .bind(instance)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        notify::send(&mut *tx, Channel::RunsQueued, "").await?;
        tx.commit().await?;
        Ok(updated.rows_affected())
    }

    /// Finds running runs whose lease expired (their instance died or lost
    /// the database), records `dead` in their history, and queues them again
    /// while retries remain; otherwise they fail with a failure record.
    /// Safe to run on every replica at once (rows are locked and skipped).
    pub async fn run_rescue_expired(&self, limit: i64, rescuer: &str) -> StoreResult<Vec<RunRow>> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "WITH expired AS ( \
                SELECT run_id FROM runs WHERE state = 'running' AND lease_expires_at < now() \
                ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED \
             ) \
             UPDATE runs r SET \
                state = CASE WHEN r.attempt <= r.max_retries THEN 'queued' ELSE 'failed' END, \
                run_after = now(), lease_expires_at = NULL, \
                finished_at = CASE WHEN r.attempt <= r.max_retries THEN NULL ELSE now() END, \
                error = 'lease expired: instance ' || COALESCE(r.instance, '?') || ' stopped heartbeating', \
                history = r.history || {} || {} \
             FROM expired e WHERE r.run_id = e.run_id RETURNING {}",
            history_entry("'running'", "'dead'", "$2::text", "'lease expired on ' || COALESCE(r.instance, '?')"),
            history_entry(
                "'dead'",
                "CASE WHEN r.attempt <= r.max_retries THEN 'queued' ELSE 'failed' END",
                "$2::text",
                "CASE WHEN r.attempt <= r.max_retries THEN 're-queued after a lost lease' \
                 ELSE 'no retries left after a lost lease' END"
            ),
            RUN_COLUMNS.replace("run_id,", "r.run_id,")
        );
        let rows = sqlx::query_as::<_, RunRow>(&sql)
            .bind(limit)
            .bind(rescuer)
            .fetch_all(&mut *tx)
            .await?;
        let failed_ids: Vec<Uuid> = rows
            .iter()
            .filter(|r| r.state == "failed")
            .map(|r| r.run_id)
            .collect();
        insert_failure_records(&mut tx, &failed_ids).await?;
        let failed: Vec<String> = rows
            .iter()
            .filter(|r| r.state == "failed")
            .map(|r| r.job_id.clone())
            .collect();
        complete_one_shot_jobs(&mut tx, &failed).await?;
        if rows.iter().any(|r| r.state == "queued") {
            notify::send(&mut *tx, Channel::RunsQueued, "").await?;
        }
        tx.commit().await?;
        Ok(rows)
    }
}

/// An `INSERT` of the failure records (the original service's inert
/// `ErrorHandler` jobs: paused, never fire, kwargs describe the failure) of
/// the failed runs `r` in `runs_source` (`<relation> r WHERE ...`, with the
/// run columns), with the handler name bound at `handler_param`.
fn failure_records_sql(runs_source: &str, handler_param: &str) -> String {
    format!(
        "INSERT INTO jobs (job_id, handler, kwargs, schedule_kind, start_at, state, source, \
         failed_run_id, description) \
         SELECT 'failed-' || r.run_id, {handler_param}, jsonb_build_object('exc_str', COALESCE(r.error, 'failed'), \
           'exc_traceback', r.traceback, 'failed_job_id', r.job_id, 'failed_job_handler', r.handler, \
           'failed_handler_kwargs', r.kwargs, 'failed_run_id', r.run_id::text), \
           'never', now(), 'paused', 'jobsd', r.run_id, \
           'run ' || r.run_id || ' of job ' || r.job_id || ' ended ' || r.state \
         FROM {runs_source} \
         ON CONFLICT (job_id) DO UPDATE SET kwargs = EXCLUDED.kwargs, updated_at = now()"
    )
}

/// An `UPDATE` that completes the one-shot jobs among `job_ids` (a query)
/// that have no future time and no run queued or running, not counting the
/// runs in `ending_runs` (a query; those this statement ends).
fn complete_one_shot_jobs_sql(job_ids: &str, ending_runs: &str) -> String {
    format!(
        "UPDATE jobs j SET state = 'completed', updated_at = now() \
         WHERE j.job_id IN ({job_ids}) AND j.schedule_kind = 'once' AND j.state = 'running' \
           AND j.next_run_at IS NULL \
           AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.job_id = j.job_id \
             AND r.state IN ('queued', 'running') AND r.run_id NOT IN ({ending_runs}))"
    )
}

/// Writes the failure records of the failed runs `run_ids`.
async fn insert_failure_records(
    tx: &mut Transaction<'static, Postgres>,
    run_ids: &[Uuid],
) -> StoreResult<()> {
    if run_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(&failure_records_sql(
        "runs r WHERE r.run_id = ANY($1)",
        "$2",
    ))
    .bind(run_ids)
    .bind(ERROR_HANDLER)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A one-shot job is `completed` once it has no future time and no run
/// queued or running.
pub(crate) async fn complete_one_shot_jobs(
    tx: &mut Transaction<'static, Postgres>,
    job_ids: &[String],
) -> StoreResult<()> {
    if job_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(&complete_one_shot_jobs_sql(
        "SELECT unnest($1::text[])",
        "SELECT NULL::uuid WHERE false",
    ))
    .bind(job_ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
