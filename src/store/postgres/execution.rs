//! The workers' statements: claim queued runs, renew leases, record
//! outcomes, retry, hand back at shutdown, and rescue runs whose instance
//! died. What an end does next (failure records, waiting runs, one-shot
//! completion) is in `ends.rs`; the rules deciding them (lateness, the lost
//! lease, ...) are [`crate::domain::rules`], fed with facts these
//! statements read.
//!
//! Fencing: every write about a running run demands `state = 'running'`, the
//! claiming `instance` and the claimed `attempt`, and reports whether it took
//! effect. A worker whose lease was taken over, or whose run an operator
//! ended, therefore cannot overwrite the newer state.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::FromRow;
use uuid::Uuid;

use super::ends::{
    complete_one_shot_jobs, decide_waiting, insert_failure_records, one_shot_columns,
    release_waiting, run_delete_orphans, OneShotRow, PgTx, WaitingRun,
};
use super::events::{
    event_columns, progress_events_cte, run_events_cte, with_run_events, Appended,
};
use super::notify::{self, Notice};
use super::runs::{any_of, history_entry, history_entry_at, RUN_COLUMNS};
use super::{
    ClaimSlots, HeartbeatAck, PgStore, RunClaim, RunOutcome, RunRetry, RunRow, StoreResult,
};
use crate::domain::rules::{self, FailedRun};
use crate::domain::{JobState, RunState, ScheduleKind};

/// Claims are serialized across replicas by this advisory lock, so the
/// `max_instances` and `lock_key` counts each claim sees are exact.
const CLAIM_LOCK: i64 = 0x6a6f_6273_645f_636c; // "jobsd_cl"

/// Whether the queued run `r` is free of its `lock_key`: it has none, or no
/// running run holds it. Blocked runs are left out of the claim's window
/// (so they cannot starve claimable runs behind them) and of the next-due
/// wait (so they cost nothing while they wait; the holder's end wakes the
/// workers).
const UNBLOCKED: &str = "(r.lock_key IS NULL OR NOT EXISTS \
    (SELECT 1 FROM runs y WHERE y.lock_key = r.lock_key AND y.state = 'running'))";

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

/// A writer that inserts runs it may claim stamps them (their `run_after`,
/// their first history entry and the claim) with `statement_timestamp()`,
/// not `now()`: the firing transaction decides its claims on reads made
/// after it began, so a previous run whose end those reads saw may have
/// `finished_at` later than the transaction's start, and a `started_at` of
/// `now()` would show the two runs of a `max_instances: 1` job overlapping.
/// Queue entry and claim share the one instant, as they share the statement.
pub(crate) const CLAIM_AT: &str = "statement_timestamp()";

/// The values of `state, attempt, started_at, instance, lease_expires_at,
/// history` for a run inserted by a writer that may claim it (SQL): when
/// `claim` holds, it is `running`, claimed by `instance` for `lease_ms`,
/// exactly as [`PgStore::run_claim`] would leave it; otherwise it is `state`.
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
         CASE WHEN {claim} THEN {CLAIM_AT} END, CASE WHEN {claim} THEN {instance} END, \
         CASE WHEN {claim} THEN {CLAIM_AT} + {lease_ms} * interval '1 millisecond' END, \
         CASE WHEN {claim} THEN {history} || {claimed} ELSE {history} END",
        claimed = history_entry_at(
            CLAIM_AT,
            "'queued'",
            "'running'",
            instance,
            &claimed_reason("1")
        ),
    )
}

/// A run the claim picked, with the facts its lateness depends on.
#[derive(Debug, FromRow)]
struct Picked {
    run_id: Uuid,
    first_start: bool,
    scheduled_for: DateTime<Utc>,
    misfire_grace_ms: Option<i64>,
    /// The database clock (the transaction's `now()`, which the update
    /// that follows writes too).
    now: DateTime<Utc>,
}

/// What the finishing statement returns of each run it ended: what the
/// steps after an end need, the one-shot facts of its job (when it is one)
/// and its job's waiting runs.
#[derive(Debug, FromRow)]
struct Finished {
    run_id: Uuid,
    job_id: String,
    state: RunState,
    lock_key: Option<String>,
    finished_at: DateTime<Utc>,
    cancel_requested: bool,
    error: Option<String>,
    traceback: Option<String>,
    /// Only for an outcome that leaves a failure record.
    handler: Option<String>,
    kwargs: Option<Value>,
    job_kind: Option<ScheduleKind>,
    job_state: Option<JobState>,
    job_next_run_at: Option<DateTime<Utc>>,
    job_has_fired: Option<bool>,
    job_active_runs: Option<i64>,
    job_version: Option<i64>,
    job_ctid: Option<String>,
    waiting_ids: Option<Vec<Uuid>>,
    waiting_times: Option<Vec<DateTime<Utc>>>,
}

impl Finished {
    /// Its job's one-shot facts, when its job is a one-shot job.
    fn one_shot(&self) -> Option<OneShotRow> {
        Some(OneShotRow {
            job_id: self.job_id.clone(),
            schedule_kind: self.job_kind?,
            state: self.job_state?,
            next_run_at: self.job_next_run_at,
            has_fired: self.job_has_fired?,
            active_runs: self.job_active_runs?,
            version: self.job_version?,
            ctid: self.job_ctid.clone()?,
        })
    }

    fn failed_run(&self) -> FailedRun<'_> {
        FailedRun {
            run_id: self.run_id,
            job_id: &self.job_id,
            handler: self.handler.as_deref().unwrap_or_default(),
            kwargs: self.kwargs.as_ref().unwrap_or(&Value::Null),
            state: self.state,
            error: self.error.as_deref(),
            traceback: self.traceback.as_deref(),
        }
    }
}

/// A running run whose lease expired, with what the rescue rule needs.
#[derive(Debug, FromRow)]
struct Expired {
    run_id: Uuid,
    cancel_requested: bool,
    attempt: i32,
    max_retries: i32,
    instance: Option<String>,
}

/// The failure record of a run as written.
fn failed_run(run: &RunRow) -> FailedRun<'_> {
    FailedRun {
        run_id: run.run_id,
        job_id: &run.job_id,
        handler: &run.handler,
        kwargs: &run.kwargs,
        state: run.state,
        error: run.error.as_deref(),
        traceback: run.traceback.as_deref(),
    }
}

impl PgStore {
    /// Claims up to `limit` due queued runs for `instance`, honouring every
    /// `lock_key` across all replicas. `max_instances` needs no check here:
    /// runs are only ever queued while the job has fewer than
    /// `max_instances` runs queued or running (the scheduler skips, manual
    /// triggers and overrides answer 409), and retries re-use their slot.
    ///
    /// Under the advisory lock (which serializes claimers, so rows need no
    /// lock while choosing), one statement picks the runs with the facts of
    /// their lateness and the database clock; [`rules::start_is_late`]
    /// decides each; one update writes the decisions, re-checking
    /// `state = 'queued'` (a run cancelled meanwhile is skipped). A run
    /// started later than its misfire grace allows is marked `missed`
    /// instead (returned too, in that state, so the caller can log it).
    pub async fn run_claim(&self, slots: &ClaimSlots) -> StoreResult<Vec<RunRow>> {
        if slots.limit <= 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK)
            .execute(&mut *tx)
            .await?;
        let picked: Vec<Picked> = sqlx::query_as(&run_claim_pick_sql())
            .bind(slots.limit)
            .fetch_all(&mut *tx)
            .await?;
        if picked.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let late: Vec<Uuid> = picked
            .iter()
            .filter(|p| {
                rules::start_is_late(p.first_start, p.scheduled_for, p.misfire_grace_ms, p.now)
            })
            .map(|p| p.run_id)
            .collect();
        let ids: Vec<Uuid> = picked.iter().map(|p| p.run_id).collect();
        let runs = sqlx::query_as::<_, RunRow>(&run_claim_sql())
            .bind(&slots.instance)
            .bind(&ids)
            .bind(slots.lease_ms)
            .bind(&late)
            .bind(rules::LATE_ERROR)
            .bind(rules::LATE_REASON)
            .fetch_all(&mut *tx)
            .await?;
        let missed: Vec<String> = runs
            .iter()
            .filter(|r| r.state == RunState::Missed)
            .map(|r| r.job_id.clone())
            .collect();
        complete_one_shot_jobs(&mut tx, &[], &missed).await?;
        tx.commit().await?;
        Ok(runs)
    }

    /// The soonest `run_after` of a queued run that its lock key does not
    /// block, as a wait from now.
    pub async fn run_next_queued_in(&self) -> StoreResult<Option<std::time::Duration>> {
        let ms: Option<f64> = sqlx::query_scalar(&run_next_queued_sql())
            .fetch_optional(&self.pool)
            .await?;
        // None when there is no row; a time already past waits zero.
        Ok(ms.map(|ms| std::time::Duration::from_micros((ms.max(0.0) * 1000.0) as u64)))
    }

    /// Renews the leases of this instance's running attempts (each fenced by
    /// run, attempt and instance, and not waiting for a callback) and stores
    /// the progress given (a changed one; `None` leaves it). Returns
    /// the attempts still held (one missing from the answer was lost: its
    /// lease was taken over, an operator ended it, or it was re-claimed as a
    /// newer attempt).
    pub async fn run_heartbeat(
        &self,
        instance: &str,
        lease_ms: i64,
        runs: &[(RunClaim, Option<Value>)],
    ) -> StoreResult<Vec<HeartbeatAck>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = runs.iter().map(|(c, _)| c.run_id).collect();
        let held: serde_json::Map<String, Value> = runs
            .iter()
            .map(|(c, progress)| {
                let mut entry = serde_json::json!({"a": c.attempt});
                if let Some(p) = progress {
                    entry["p"] = p.clone();
                }
                (c.run_id.to_string(), entry)
            })
            .collect();
        Ok(sqlx::query_as::<_, HeartbeatAck>(&run_heartbeat_sql())
            .bind(instance)
            .bind(lease_ms)
            .bind(Value::Object(held))
            .bind(&ids)
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

    /// [`PgStore::run_finish`] for many runs in one transaction; returns
    /// the runs whose outcome was written (the others' claims were stale).
    ///
    /// One statement writes the outcomes and reads what the steps after
    /// them need: the failed runs' facts, the one-shot facts of their jobs
    /// and the runs waiting for their jobs' slots. The rules then decide,
    /// and the same transaction writes the failure records, the waiting
    /// runs' decisions and the completions (see `ends.rs`). When runs were
    /// queued by that, or a lock key was released, the workers of every
    /// replica are told (one notification, at the commit). Runs of a job
    /// deleted while they ran are removed once their outcome is in.
    pub async fn run_finish_many(
        &self,
        finished: &[(RunClaim, RunOutcome)],
    ) -> StoreResult<Vec<Uuid>> {
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes: serde_json::Map<String, Value> = finished
            .iter()
            .map(|(c, o)| {
                let outcome = json!({
                    "attempt": c.attempt, "instance": c.instance, "state": o.state,
                    "result": o.result, "error": o.error, "traceback": o.traceback,
                    "reason": o.reason, "ago": o.ended_ago_ms.max(0),
                });
                (c.run_id.to_string(), outcome)
            })
            .collect();
        let ids: Vec<Uuid> = finished.iter().map(|(c, _)| c.run_id).collect();
        // The statement returns what their failure records need.
        let records: Vec<Uuid> = finished
            .iter()
            .filter(|(_, o)| o.state.leaves_failure_record())
            .map(|(c, _)| c.run_id)
            .collect();
        let mut tx = self.pool.begin_with(FINISH_BEGIN).await?;
        let rows: Vec<Finished> = sqlx::query_as(&run_finish_many_sql())
            .bind(Value::Object(outcomes))
            .bind(&ids)
            .bind(&records)
            .fetch_all(&mut *tx)
            .await?;
        after_finish(&mut tx, &rows).await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|r| r.run_id).collect())
    }

    /// Queues a failed attempt again after its backoff. Returns false when
    /// the claim is stale.
    pub async fn run_retry(&self, claim: &RunClaim, retry: &RunRetry) -> StoreResult<bool> {
        let sql = run_retry_sql();
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
        notify::send(&mut *tx, &Notice::runs_queued()).await?;
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
        let attempts: serde_json::Map<String, Value> = claims
            .iter()
            .map(|c| (c.run_id.to_string(), Value::from(c.attempt)))
            .collect();
        let instance = &claims[0].instance;
        let sql = run_hand_back_sql();
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(&sql)
            .bind(&ids)
            .bind(Value::Object(attempts))
            .bind(instance)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        notify::send(&mut *tx, &Notice::runs_queued()).await?;
        tx.commit().await?;
        Ok(updated.rows_affected())
    }

    /// Finds running runs whose lease expired (their instance died or lost
    /// the database), records `dead` in their history, and decides each by
    /// [`rules::after_lost_lease`]: queued again while retries remain,
    /// otherwise failed with a failure record; `cancelled` when its cancel
    /// was requested (a cancel is never lost to a rescue). Safe to run on
    /// every replica at once (rows are locked and skipped).
    pub async fn run_rescue_expired(&self, limit: i64, rescuer: &str) -> StoreResult<Vec<RunRow>> {
        let mut tx = self.pool.begin().await?;
        let expired: Vec<Expired> = sqlx::query_as(RUN_RESCUE_PICK_SQL)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        if expired.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let decisions: serde_json::Map<String, Value> = expired
            .iter()
            .map(|e| {
                let lost = rules::after_lost_lease(
                    e.cancel_requested,
                    e.attempt,
                    e.max_retries,
                    e.instance.as_deref(),
                );
                let decision = json!({
                    "state": lost.next, "ended": lost.next != RunState::Queued,
                    "error": lost.error, "dead": lost.dead_reason, "next": lost.next_reason,
                });
                (e.run_id.to_string(), decision)
            })
            .collect();
        let ids: Vec<Uuid> = expired.iter().map(|e| e.run_id).collect();
        let rows = sqlx::query_as::<_, RunRow>(&run_rescue_expired_sql())
            .bind(&ids)
            .bind(rescuer)
            .bind(Value::Object(decisions))
            .fetch_all(&mut *tx)
            .await?;
        let ended: Vec<&RunRow> = rows
            .iter()
            .filter(|r| r.state != RunState::Queued)
            .collect();
        let failed: Vec<FailedRun<'_>> = ended
            .iter()
            .filter(|r| r.state.leaves_failure_record())
            .map(|r| failed_run(r))
            .collect();
        insert_failure_records(&mut tx, &failed).await?;
        let first_end = first_ends(ended.iter().map(|r| (&r.job_id, r.finished_at)));
        let released = release_waiting(&mut tx, &first_end).await?;
        let ended_jobs: Vec<String> = first_end.into_keys().collect();
        complete_one_shot_jobs(&mut tx, &[], &ended_jobs).await?;
        let ended_ids: Vec<Uuid> = ended.iter().map(|r| r.run_id).collect();
        run_delete_orphans(&mut *tx, &ended_ids).await?;
        let queued = released.queued
            || rows
                .iter()
                .any(|r| r.state == RunState::Queued || r.lock_key.is_some());
        if queued {
            notify::send(&mut *tx, &Notice::runs_queued()).await?;
        }
        tx.commit().await?;
        Ok(rows)
    }

    /// Decides runs left `waiting` whose job has no running run left: the
    /// run they waited for ended without deciding them, because its outcome
    /// was written concurrently with the firing that stored them (neither
    /// statement saw the other's rows), or by a replica of an older version.
    /// They are decided by the same rule, with the end of the job's latest
    /// executed run (now, if it has none). `among` limits it to those jobs
    /// (the scheduler checks the jobs it just stored waiting runs for; the
    /// supervisor sweeps all). Returns how many waiting runs were decided.
    pub async fn run_settle_waiting(
        &self,
        among: Option<&[String]>,
        limit: i64,
    ) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        let ended: Vec<(String, Option<DateTime<Utc>>, DateTime<Utc>)> =
            sqlx::query_as(RUN_SETTLE_CANDIDATES_SQL)
                .bind(limit)
                .bind(among)
                .fetch_all(&mut *tx)
                .await?;
        let first_end: HashMap<String, DateTime<Utc>> = ended
            .into_iter()
            .map(|(job_id, ended_at, now)| (job_id, ended_at.unwrap_or(now)))
            .collect();
        let released = release_waiting(&mut tx, &first_end).await?;
        if released.queued {
            notify::send(&mut *tx, &Notice::runs_queued()).await?;
        }
        tx.commit().await?;
        Ok(released.decided)
    }
}

/// The first end among each job's runs (job id and when it stopped
/// executing, `None` for a run not ended).
pub(crate) fn first_ends<'a>(
    ends: impl IntoIterator<Item = (&'a String, Option<DateTime<Utc>>)>,
) -> HashMap<String, DateTime<Utc>> {
    let mut first: HashMap<String, DateTime<Utc>> = HashMap::new();
    for (job_id, at) in ends {
        let Some(at) = at else { continue };
        first
            .entry(job_id.clone())
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }
    first
}

/// The steps after the ends in `rows`, in their transaction: failure
/// records, the waiting runs of their jobs, one-shot completion, runs of
/// deleted jobs, and the workers' wake-up.
async fn after_finish(tx: &mut PgTx, rows: &[Finished]) -> StoreResult<()> {
    let failed: Vec<FailedRun<'_>> = rows
        .iter()
        .filter(|r| r.state.leaves_failure_record())
        .map(Finished::failed_run)
        .collect();
    insert_failure_records(tx, &failed).await?;
    // A waiting run is decided by the first end among its job's runs.
    let first_end = first_ends(rows.iter().map(|r| (&r.job_id, Some(r.finished_at))));
    let waiting: Vec<WaitingRun> = rows
        .iter()
        .flat_map(|r| {
            let ids = r.waiting_ids.iter().flatten();
            let times = r.waiting_times.iter().flatten();
            ids.zip(times).map(|(id, at)| WaitingRun {
                run_id: *id,
                job_id: r.job_id.clone(),
                scheduled_for: *at,
            })
        })
        .collect();
    let released = decide_waiting(tx, &waiting, &first_end).await?;
    // The one-shot facts were read with the outcomes; those of a job whose
    // waiting runs were just decided no longer hold, and are read again.
    let mut seen = HashSet::new();
    let (mut read, mut again) = (Vec::new(), Vec::new());
    for row in rows {
        let Some(facts) = row.one_shot() else {
            continue;
        };
        if !seen.insert(row.job_id.as_str()) {
            continue;
        }
        if released.jobs.contains(&row.job_id) {
            again.push(row.job_id.clone());
        } else {
            read.push(facts);
        }
    }
    complete_one_shot_jobs(tx, &read, &again).await?;
    // Only a run whose cancel was requested can belong to a deleted job
    // (the delete requests it). Whether its job is gone is checked by this
    // later statement: the finishing one's snapshot may predate a delete
    // it waited for (its update then saw the delete's cancel request, but
    // its reads still saw the job).
    let maybe_orphans: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.cancel_requested)
        .map(|r| r.run_id)
        .collect();
    run_delete_orphans(&mut **tx, &maybe_orphans).await?;
    if released.queued || rows.iter().any(|r| r.lock_key.is_some()) {
        notify::send(&mut **tx, &Notice::runs_queued()).await?;
    }
    Ok(())
}

/// The choice of [`PgStore::run_claim`]: `$1` limit. The first due queued
/// runs that no lock key blocks, at most one per key, with their lateness
/// facts and the database clock.
pub(crate) fn run_claim_pick_sql() -> String {
    format!(
        "WITH due AS ( \
            SELECT r.run_id, r.lock_key, r.run_after, r.started_at IS NULL AS first_start, \
              r.scheduled_for, r.misfire_grace_ms FROM runs r \
            WHERE r.state = 'queued' AND r.run_after <= now() AND {UNBLOCKED} \
            ORDER BY r.run_after LIMIT $1 * 2 + 16 \
         ), free_of_lock AS ( \
            SELECT d.* FROM due d WHERE d.lock_key IS NULL \
            UNION ALL \
            SELECT * FROM (SELECT DISTINCT ON (d.lock_key) d.* FROM due d \
              WHERE d.lock_key IS NOT NULL \
              ORDER BY d.lock_key, d.run_after, d.run_id) first_per_key \
         ) \
         SELECT run_id, first_start, scheduled_for, misfire_grace_ms, now() AS now \
         FROM free_of_lock ORDER BY run_after LIMIT $1"
    )
}

/// The update of [`PgStore::run_claim`]: `$1` instance, `$2` the picked
/// run ids, `$3` lease in ms, `$4` those of them decided late (recorded
/// `missed` instead of started; usually none, so an array and not a map
/// looked up for every run), `$5` and `$6` the error and the history
/// reason of a late run.
pub(crate) fn run_claim_sql() -> String {
    let late = "(r.run_id = ANY($4::uuid[]))";
    let update = format!(
        "UPDATE runs r SET \
            state = CASE WHEN {late} THEN 'missed' ELSE 'running' END, \
            attempt = CASE WHEN {late} THEN r.attempt ELSE r.attempt + 1 END, \
            started_at = CASE WHEN {late} THEN r.started_at ELSE now() END, \
            finished_at = CASE WHEN {late} THEN now() END, \
            error = CASE WHEN {late} THEN $5::text ELSE r.error END, \
            instance = $1, \
            lease_expires_at = CASE WHEN {late} THEN NULL ELSE now() + $3 * interval '1 millisecond' END, \
            history = r.history || {history} \
         WHERE r.run_id = {ids} AND {QUEUED}",
        ids = any_of("$2", "uuid"),
        history = history_entry(
            "'queued'",
            &format!("CASE WHEN {late} THEN 'missed' ELSE 'running' END"),
            "$1::text",
            &format!(
                "CASE WHEN {late} THEN $6::text ELSE {} END",
                claimed_reason("r.attempt + 1")
            )
        ),
    );
    with_run_events(&update, "r", RUN_COLUMNS, Appended::Last(1), false)
}

/// The statement of [`PgStore::run_finish_many`]: `$1` maps each run id to
/// its outcome, `$2` the run ids, `$3` those whose outcome leaves a failure
/// record (usually none).
pub(crate) fn run_finish_many_sql() -> String {
    // `$1` maps each run id to its outcome (a jsonb object: key lookups
    // are binary searches), so the update reads nothing but `runs`, by
    // primary key: no join that a stale estimate could turn quadratic.
    // The ids pass through `any_of`, as every list of keys does: a plan
    // by primary key that does not rest on the outcome map's cost.
    // The facts of the finished runs' jobs are read by primary key or job
    // id, once per finished run; this statement's snapshot still sees its
    // runs running, so the one-shot facts leave them out.
    let o = "($1::jsonb -> r.run_id::text)";
    format!(
        "WITH finished AS (UPDATE runs r SET state = {o} ->> 'state', \
           finished_at = GREATEST(r.started_at, now() - ({o} ->> 'ago')::int8 * interval '1 millisecond'), \
           result = NULLIF({o} -> 'result', 'null'::jsonb), error = {o} ->> 'error', \
           traceback = {o} ->> 'traceback', lease_expires_at = NULL, \
           history = r.history || {history} \
         WHERE r.run_id = {ids} AND {RUNNING} \
           AND r.attempt = ({o} ->> 'attempt')::int4 AND r.instance = {o} ->> 'instance' \
         RETURNING r.run_id, r.job_id, r.state, r.lock_key, r.finished_at, r.cancel_requested, \
           r.error, r.traceback, \
           CASE WHEN r.run_id = ANY($3::uuid[]) THEN r.handler END AS handler, \
           CASE WHEN r.run_id = ANY($3::uuid[]) THEN r.kwargs END AS kwargs, {event_columns}), \
         {run_events} \
         SELECT f.run_id, f.job_id, f.state, f.lock_key, f.finished_at, f.cancel_requested, \
           f.error, f.traceback, f.handler, f.kwargs, o.schedule_kind AS job_kind, o.state AS job_state, \
           o.next_run_at AS job_next_run_at, o.has_fired AS job_has_fired, \
           o.active_runs AS job_active_runs, o.version AS job_version, o.ctid AS job_ctid, \
           w.waiting_ids, w.waiting_times \
         FROM finished f \
         LEFT JOIN LATERAL (SELECT {one_shot} FROM jobs j \
           WHERE j.job_id = f.job_id AND j.schedule_kind = 'once') o ON true \
         LEFT JOIN LATERAL (SELECT array_agg(w.run_id) AS waiting_ids, \
             array_agg(w.scheduled_for) AS waiting_times \
           FROM runs w WHERE w.job_id = f.job_id AND w.state = 'waiting') w ON true",
        history = history_entry(
            "'running'",
            &format!("{o} ->> 'state'"),
            &format!("{o} ->> 'instance'"),
            &format!("{o} ->> 'reason'")
        ),
        ids = any_of("$2", "uuid"),
        one_shot = one_shot_columns("AND a.run_id <> ALL(ARRAY(SELECT run_id FROM finished))"),
        event_columns = event_columns("r"),
        run_events = run_events_cte("finished", Appended::Last(1), false),
    )
}

/// The statement of [`PgStore::run_retry`].
pub(crate) fn run_retry_sql() -> String {
    let update = format!(
        "UPDATE runs SET state = 'queued', run_after = now() + $4 * interval '1 millisecond', \
         error = $5, traceback = $6, lease_expires_at = NULL, history = history || {} \
         WHERE run_id = $1 AND {RUNNING_BARE} AND attempt = $2 AND instance = $3",
        history_entry("'running'", "'queued'", "$3::text", "$7::text")
    );
    with_run_events(&update, "runs", "run_id", Appended::Last(1), true)
}

/// The statement of [`PgStore::run_hand_back`].
pub(crate) fn run_hand_back_sql() -> String {
    // `$2` maps run ids to attempts (see `run_finish_many_sql`).
    let update = format!(
        "UPDATE runs r SET state = 'queued', run_after = now(), attempt = r.attempt - 1, \
         lease_expires_at = NULL, history = r.history || {} \
         WHERE r.run_id = ANY($1) AND r.attempt = ($2::jsonb ->> r.run_id::text)::int4 \
           AND {RUNNING} AND r.instance = $3",
        history_entry("'running'", "'queued'", "$3::text", "$4::text")
    );
    with_run_events(&update, "r", "r.run_id", Appended::Last(1), false)
}

/// The statement of [`PgStore::run_heartbeat`].
pub(crate) fn run_heartbeat_sql() -> String {
    // `$3` maps run ids to `{"a": attempt, "p": progress}` (see
    // `run_finish_many_sql` for why a map and not a join).
    // An attempt accepted by the service it called and waiting for its
    // callback (`callback_attempt`) is no longer renewed: a renewal sent
    // just before the waiting mark was written must not give it back a
    // lease that would expire. Progress is sent only when it changed, and
    // its time is written with it.
    let h = "($3::jsonb -> r.run_id::text)";
    format!(
        "WITH changed AS (UPDATE runs r SET lease_expires_at = now() + $2 * interval '1 millisecond', \
         progress = COALESCE({h} -> 'p', r.progress), \
         progress_updated_at = CASE WHEN {h} ? 'p' THEN now() ELSE r.progress_updated_at END \
         WHERE r.run_id = ANY($4) AND r.attempt = ({h} ->> 'a')::int4 \
           AND {RUNNING} AND r.instance = $1 AND r.callback_attempt IS DISTINCT FROM r.attempt \
         RETURNING r.run_id, r.attempt, r.cancel_requested, r.job_id AS ev_job, \
           r.instance AS ev_instance, r.progress_updated_at AS ev_at, {h} ? 'p' AS ev_progress), \
         {events} \
         SELECT run_id, attempt, cancel_requested FROM changed",
        events = progress_events_cte("changed", "c.ev_progress"),
    )
}

/// The statement of [`PgStore::run_next_queued_in`].
pub(crate) fn run_next_queued_sql() -> String {
    format!(
        "SELECT (EXTRACT(EPOCH FROM (r.run_after - now())) * 1000)::float8 \
         FROM runs r WHERE r.state = 'queued' AND {UNBLOCKED} ORDER BY r.run_after LIMIT 1"
    )
}

/// The fence of a write to a running run `r`: it must still be running.
/// Written so that no partial index on `state` can serve as the access path
/// (`IS TRUE` hides the predicate from index matching): such writes find
/// their runs by primary key, and an index whose statistics say "no running
/// runs" would otherwise be scanned, with a join filter, for every row.
const RUNNING: &str = "(r.state = 'running') IS TRUE";
/// [`RUNNING`] for a statement without the `r` alias.
const RUNNING_BARE: &str = "(state = 'running') IS TRUE";
/// The choice of [`PgStore::run_rescue_expired`]: `$1` limit. Running runs
/// whose lease expired, locked (those another rescuer holds are skipped),
/// with what the rescue rule needs.
pub(crate) const RUN_RESCUE_PICK_SQL: &str =
    "SELECT r.run_id, r.cancel_requested, r.attempt, r.max_retries, r.instance FROM runs r \
     WHERE r.state = 'running' AND r.lease_expires_at < now() \
     ORDER BY r.lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED";

/// The update of [`PgStore::run_rescue_expired`]: `$1` the locked run ids,
/// `$2` rescuer, `$3` maps each run id to its decision
/// (`{state, ended, error, dead, next}`: the next state, whether it ends
/// the run, the error and the reasons of the `running → dead` and
/// `dead → next` steps).
pub(crate) fn run_rescue_expired_sql() -> String {
    let d = "($3::jsonb -> r.run_id::text)";
    let update = format!(
        "UPDATE runs r SET state = {d} ->> 'state', run_after = now(), lease_expires_at = NULL, \
            finished_at = CASE WHEN ({d} ->> 'ended')::bool THEN now() END, \
            error = {d} ->> 'error', history = r.history || {dead} || {then} \
         WHERE r.run_id = {ids} AND {RUNNING}",
        ids = any_of("$1", "uuid"),
        dead = history_entry(
            "'running'",
            "'dead'",
            "$2::text",
            &format!("{d} ->> 'dead'")
        ),
        then = history_entry(
            "'dead'",
            &format!("{d} ->> 'state'"),
            "$2::text",
            &format!("{d} ->> 'next'")
        ),
    );
    with_run_events(&update, "r", RUN_COLUMNS, Appended::Last(2), true)
}

/// The jobs [`PgStore::run_settle_waiting`] decides: `$1` limit, `$2` the
/// jobs to look at (all when NULL). Each with the end of its latest
/// executed run (NULL when none) and the database clock.
pub(crate) const RUN_SETTLE_CANDIDATES_SQL: &str =
    "WITH candidates AS (SELECT DISTINCT w.job_id FROM runs w \
       WHERE w.state = 'waiting' AND ($2::text[] IS NULL OR w.job_id = ANY($2)) \
       AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.job_id = w.job_id AND r.state = 'running') \
       LIMIT $1) \
     SELECT c.job_id, (SELECT max(x.finished_at) FROM (SELECT r.finished_at FROM runs r \
       WHERE r.job_id = c.job_id AND r.state IN ('succeeded', 'failed', 'timed_out', 'cancelled') \
       ORDER BY r.created_at DESC LIMIT 3) x) AS ended_at, now() AS now FROM candidates c";

/// How the finishing transaction begins: with the generic plans of its
/// statements (which the plan test checks as it checks the custom ones),
/// in the same round trip. Planned for each batch, the finishing statement
/// cost milliseconds (its bound outcome map is hundreds of entries), a
/// tenth of what it then took to run; the generic plan is made once per
/// connection.
const FINISH_BEGIN: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

/// The fence of the claim's update: the run is still queued (written so
/// that no partial index on `state` serves as the access path, see
/// [`RUNNING`]).
const QUEUED: &str = "(r.state = 'queued') IS TRUE";
