//! The workers' writes on the embedded store: claim, heartbeat, outcomes,
//! retries, hand-back and rescue; and the steps every end of a run takes
//! (failure records, waiting runs, one-shot completion, runs of deleted
//! jobs), shared with `runs.rs`.
//!
//! Fencing is PostgreSQL's: every write about a running run demands
//! `state = 'running'`, the claiming instance and the claimed attempt.
//!
//! Writes that find their runs by id write that state test as
//! `+state = ...`: the unary plus keeps it from qualifying a partial index
//! on `state`, so no statistics (taken when, say, no run was running) can
//! turn a lookup by primary key into a scan of that index for every row.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::rows::{
    history_append, history_text, json_text, micros, opt_json_text, run_from_row, statement_chunks,
    RUN_COLUMNS,
};
use super::{
    now, ActiveCounts, ClaimSlots, HeartbeatAck, Notice, RunClaim, RunOutcome, RunRetry, RunRow,
    SqliteStore, StoreResult,
};
use crate::domain::rules::{self, FailedRun, OneShotFacts};
use crate::domain::{JobState, RunState, ScheduleKind};
use crate::handlers::ERROR_HANDLER;

pub(crate) type WriteTx = Transaction<'static, Sqlite>;

/// A JSON array of ids, for `IN (SELECT value FROM json_each(?))`.
pub(crate) fn id_list<T: ToString>(ids: impl IntoIterator<Item = T>) -> String {
    Value::from(ids.into_iter().map(|i| i.to_string()).collect::<Vec<_>>()).to_string()
}

/// The history text of a claim, as [`rules::claimed_reason`] words it.
pub(crate) fn claimed_history(at: DateTime<Utc>, instance: &str, attempt: i32) -> String {
    history_text(
        at,
        Some(RunState::Queued),
        RunState::Running,
        Some(instance),
        &rules::claimed_reason(attempt),
    )
}

/// Appends one history entry (`?` is its JSON text); see [`history_append`].
pub(crate) const APPEND: &str =
    "substr(history, 1, length(history) - 1) || iif(length(history) > 2, ',', '') || ? || ']'";

/// The runs of `job_ids` that take a slot: queued, running or waiting.
pub(crate) async fn active_counts(
    tx: &mut WriteTx,
    job_ids: &[String],
) -> StoreResult<Vec<ActiveCounts>> {
    let rows = sqlx::query(
        "SELECT job_id, sum(state IN ('queued', 'running')) AS active, \
         sum(state = 'running') AS running, sum(state = 'waiting') AS waiting \
         FROM runs WHERE job_id IN (SELECT value FROM json_each(?)) \
           AND state IN ('queued', 'running', 'waiting') GROUP BY job_id",
    )
    .bind(id_list(job_ids))
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ActiveCounts {
                job_id: r.try_get("job_id")?,
                active: r.try_get("active")?,
                running: r.try_get("running")?,
                waiting: r.try_get("waiting")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// The slots of one job taken now.
pub(crate) async fn slots_taken(tx: &mut WriteTx, job_id: &str) -> StoreResult<i64> {
    Ok(active_counts(tx, &[job_id.to_string()])
        .await?
        .first()
        .map_or(0, ActiveCounts::taken))
}

/// Writes the failure records of failed runs ([`rules::failure_record`]).
pub(crate) async fn insert_failure_records(
    tx: &mut WriteTx,
    failed: &[FailedRun<'_>],
    at: DateTime<Utc>,
) -> StoreResult<()> {
    for run in failed {
        let record = rules::failure_record(run);
        sqlx::query(
            "INSERT INTO jobs (job_id, handler, kwargs, schedule_kind, start_at, state, source, \
             failed_run_id, description, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, 'jobsd', ?, ?, ?, ?) \
             ON CONFLICT (job_id) DO UPDATE SET kwargs = excluded.kwargs, \
               updated_at = excluded.updated_at, version = version + 1",
        )
        .bind(&record.job_id)
        .bind(ERROR_HANDLER)
        .bind(json_text(&record.kwargs))
        .bind(ScheduleKind::Never)
        .bind(micros(at))
        .bind(JobState::Paused)
        .bind(record.failed_run_id.to_string())
        .bind(&record.description)
        .bind(micros(at))
        .bind(micros(at))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Decides the waiting runs of the jobs in `ended` (job id → when the run
/// holding its slot stopped executing), by [`rules::release_waiting`].
/// Returns how many runs were decided and whether any was queued.
pub(crate) async fn release_waiting(
    tx: &mut WriteTx,
    ended: &HashMap<String, DateTime<Utc>>,
    at: DateTime<Utc>,
) -> StoreResult<(u64, bool)> {
    if ended.is_empty() {
        return Ok((0, false));
    }
    let waiting = sqlx::query(
        // Named: without statistics the planner would walk all of the
        // job's runs by `runs_job_idx`.
        "SELECT run_id, job_id, scheduled_for FROM runs INDEXED BY runs_waiting_job_idx \
         WHERE job_id IN (SELECT value FROM json_each(?)) AND state = 'waiting'",
    )
    .bind(id_list(ended.keys()))
    .fetch_all(&mut **tx)
    .await?;
    let (mut decided, mut queued) = (0, false);
    for row in &waiting {
        let job_id: String = row.try_get("job_id")?;
        let Some(first_end) = ended.get(&job_id) else {
            continue;
        };
        let scheduled_for = super::rows::from_micros(row.try_get("scheduled_for")?);
        let decision = rules::release_waiting(*first_end, scheduled_for);
        let is_queued = decision.state == RunState::Queued;
        sqlx::query(&format!(
            "UPDATE runs SET state = ?, run_after = ?, finished_at = ?, error = ?, result = ?, \
             history = {APPEND} WHERE run_id = ? AND +state = 'waiting'"
        ))
        .bind(decision.state)
        .bind(micros(at))
        .bind((!is_queued).then(|| micros(at)))
        .bind(decision.error)
        .bind(opt_json_text(decision.result.as_ref()))
        .bind(history_text(
            at,
            Some(RunState::Waiting),
            decision.state,
            None,
            decision.reason,
        ))
        .bind(row.try_get::<String, _>("run_id")?)
        .execute(&mut **tx)
        .await?;
        decided += 1;
        queued |= is_queued;
    }
    Ok((decided, queued))
}

/// Completes the one-shot jobs among `job_ids` that [`rules::one_shot_completes`].
pub(crate) async fn complete_one_shot_jobs(
    tx: &mut WriteTx,
    job_ids: &[String],
    at: DateTime<Utc>,
) -> StoreResult<()> {
    if job_ids.is_empty() {
        return Ok(());
    }
    let facts = sqlx::query(
        "SELECT j.job_id, j.schedule_kind, j.state, j.next_run_at, \
           EXISTS (SELECT 1 FROM runs f WHERE f.job_id = j.job_id AND f.trigger <> 'manual') AS has_fired, \
           (SELECT count(*) FROM runs r WHERE r.job_id = j.job_id \
              AND r.state IN ('queued', 'running', 'waiting')) AS active_runs \
         FROM jobs j WHERE j.job_id IN (SELECT value FROM json_each(?)) AND j.schedule_kind = 'once'",
    )
    .bind(id_list(job_ids))
    .fetch_all(&mut **tx)
    .await?;
    let mut done = Vec::new();
    for row in &facts {
        let f = OneShotFacts {
            kind: row.try_get("schedule_kind")?,
            state: row.try_get("state")?,
            next_run_at: row
                .try_get::<Option<i64>, _>("next_run_at")?
                .map(super::rows::from_micros),
            has_fired: row.try_get("has_fired")?,
            active_runs: row.try_get("active_runs")?,
        };
        if rules::one_shot_completes(&f) {
            done.push(row.try_get::<String, _>("job_id")?);
        }
    }
    if !done.is_empty() {
        sqlx::query(
            "UPDATE jobs SET state = 'completed', updated_at = ?, version = version + 1 \
             WHERE job_id IN (SELECT value FROM json_each(?))",
        )
        .bind(micros(at))
        .bind(id_list(&done))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Deletes the ended runs among `run_ids` whose job no longer exists (it
/// was deleted while they ran).
pub(crate) async fn delete_orphans(tx: &mut WriteTx, run_ids: &[Uuid]) -> StoreResult<()> {
    if run_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM runs WHERE run_id IN (SELECT value FROM json_each(?)) \
         AND state NOT IN ('queued', 'running') \
         AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = runs.job_id)",
    )
    .bind(id_list(run_ids))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A run's end as the steps after it need it.
struct Ended {
    run_id: Uuid,
    job_id: String,
    handler: String,
    kwargs: Value,
    state: RunState,
    error: Option<String>,
    traceback: Option<String>,
    lock_key: Option<String>,
    cancel_requested: bool,
    finished_at: DateTime<Utc>,
}

/// The columns [`Ended::from_row`] reads.
const ENDED_COLUMNS: &str =
    "run_id, job_id, handler, kwargs, state, error, traceback, lock_key, cancel_requested, finished_at";

impl Ended {
    fn from_row(row: &SqliteRow) -> Result<Ended, sqlx::Error> {
        Ok(Ended {
            run_id: super::rows::uuid(row, "run_id")?,
            job_id: row.try_get("job_id")?,
            handler: row.try_get("handler")?,
            kwargs: super::rows::json(row, "kwargs")?,
            state: row.try_get("state")?,
            error: row.try_get("error")?,
            traceback: row.try_get("traceback")?,
            lock_key: row.try_get("lock_key")?,
            cancel_requested: row.try_get("cancel_requested")?,
            finished_at: row
                .try_get::<Option<i64>, _>("finished_at")?
                .map_or_else(now, super::rows::from_micros),
        })
    }
}

/// What every end of runs does next, in the ending transaction: failure
/// records, the waiting runs of their jobs, one-shot completion, and
/// removal of runs whose job was deleted. Returns whether the workers
/// should look for runs (one was queued, or a lock key was released).
async fn after_ends(tx: &mut WriteTx, ended: &[Ended], at: DateTime<Utc>) -> StoreResult<bool> {
    let failed: Vec<FailedRun<'_>> = ended
        .iter()
        .filter(|e| e.state.leaves_failure_record())
        .map(|e| FailedRun {
            run_id: e.run_id,
            job_id: &e.job_id,
            handler: &e.handler,
            kwargs: &e.kwargs,
            state: e.state,
            error: e.error.as_deref(),
            traceback: e.traceback.as_deref(),
        })
        .collect();
    insert_failure_records(tx, &failed, at).await?;
    let mut first_end: HashMap<String, DateTime<Utc>> = HashMap::new();
    for e in ended {
        let t = first_end.entry(e.job_id.clone()).or_insert(e.finished_at);
        *t = (*t).min(e.finished_at);
    }
    let (_, released) = release_waiting(tx, &first_end, at).await?;
    let job_ids: Vec<String> = first_end.into_keys().collect();
    complete_one_shot_jobs(tx, &job_ids, at).await?;
    let maybe_orphans: Vec<Uuid> = ended
        .iter()
        .filter(|e| e.cancel_requested)
        .map(|e| e.run_id)
        .collect();
    delete_orphans(tx, &maybe_orphans).await?;
    Ok(released || ended.iter().any(|e| e.lock_key.is_some()))
}

/// Whether a queued run is free of its lock key (see the PostgreSQL store).
const UNBLOCKED: &str = "(r.lock_key IS NULL OR NOT EXISTS \
    (SELECT 1 FROM runs y WHERE y.lock_key = r.lock_key AND y.state = 'running'))";

impl SqliteStore {
    /// Claims up to `slots.limit` due queued runs, at most one per lock key
    /// and none whose key a running run holds; a run that would start later
    /// than its misfire grace allows is recorded `missed` instead (and
    /// returned so). One writer: choosing and updating cannot interleave.
    pub async fn run_claim(&self, slots: &ClaimSlots) -> StoreResult<Vec<RunRow>> {
        if slots.limit <= 0 {
            return Ok(Vec::new());
        }
        let at = now();
        let mut tx = self.write().await?;
        let candidates = sqlx::query(&format!(
            "SELECT r.run_id, r.lock_key, r.scheduled_for, r.misfire_grace_ms, r.started_at \
             FROM runs r WHERE r.state = 'queued' AND r.run_after <= ? AND {UNBLOCKED} \
             ORDER BY r.run_after LIMIT ?"
        ))
        .bind(micros(at))
        .bind(slots.limit * 2 + 16)
        .fetch_all(&mut *tx)
        .await?;
        let mut keys = std::collections::HashSet::new();
        let (mut start, mut late) = (Vec::new(), Vec::new());
        for row in &candidates {
            if start.len() + late.len() >= slots.limit as usize {
                break;
            }
            let key: Option<String> = row.try_get("lock_key")?;
            if let Some(key) = key {
                if !keys.insert(key) {
                    continue;
                }
            }
            let run_id: String = row.try_get("run_id")?;
            let first_start = row.try_get::<Option<i64>, _>("started_at")?.is_none();
            let scheduled_for = super::rows::from_micros(row.try_get("scheduled_for")?);
            if rules::start_is_late(
                first_start,
                scheduled_for,
                row.try_get("misfire_grace_ms")?,
                at,
            ) {
                late.push(run_id);
            } else {
                start.push(run_id);
            }
        }
        let mut runs = Vec::with_capacity(start.len() + late.len());
        if !start.is_empty() {
            // One statement for the batch; the reason names each run's
            // new attempt.
            let at_json = serde_json::to_value(at).unwrap_or(Value::Null);
            let entry = "json_object('at', ?4, 'from', 'queued', 'to', 'running', \
                 'instance', ?2, 'reason', 'claimed (attempt ' || (attempt + 1) || ')')";
            let claimed = sqlx::query(&format!(
                "UPDATE runs SET state = 'running', attempt = attempt + 1, started_at = ?1, \
                 instance = ?2, lease_expires_at = ?3, history = {} \
                 WHERE run_id IN (SELECT value FROM json_each(?5)) AND +state = 'queued' \
                 RETURNING {RUN_COLUMNS}",
                history_append("history", entry)
            ))
            .bind(micros(at))
            .bind(&slots.instance)
            .bind(micros(at + Duration::milliseconds(slots.lease_ms)))
            .bind(at_json.as_str().unwrap_or_default().to_string())
            .bind(id_list(&start))
            .fetch_all(&mut *tx)
            .await?;
            for row in &claimed {
                runs.push(run_from_row(row)?);
            }
        }
        let mut missed_jobs = Vec::new();
        for run_id in &late {
            let row = sqlx::query(&format!(
                "UPDATE runs SET state = 'missed', finished_at = ?, error = ?, instance = ?, \
                 lease_expires_at = NULL, history = {APPEND} \
                 WHERE run_id = ? AND +state = 'queued' RETURNING {RUN_COLUMNS}"
            ))
            .bind(micros(at))
            .bind(rules::LATE_ERROR)
            .bind(&slots.instance)
            .bind(history_text(
                at,
                Some(RunState::Queued),
                RunState::Missed,
                Some(&slots.instance),
                rules::LATE_REASON,
            ))
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                let run = run_from_row(&row)?;
                missed_jobs.push(run.job_id.clone());
                runs.push(run);
            }
        }
        complete_one_shot_jobs(&mut tx, &missed_jobs, at).await?;
        tx.commit().await?;
        Ok(runs)
    }

    /// The soonest `run_after` of a queued run that its lock key does not
    /// block, as a wait from now.
    pub async fn run_next_queued_in(&self) -> StoreResult<Option<std::time::Duration>> {
        // In the queue index's order, stopping at the first unblocked run
        // (a min() with a condition would visit every queued run).
        let next: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT r.run_after FROM runs r WHERE r.state = 'queued' AND {UNBLOCKED} \
             ORDER BY r.run_after LIMIT 1"
        ))
        .fetch_optional(&self.readers)
        .await?;
        Ok(next.map(|us| std::time::Duration::from_micros((us - micros(now())).max(0) as u64)))
    }

    /// Renews the leases of this instance's running attempts and stores
    /// their progress; returns the attempts still held.
    pub async fn run_heartbeat(
        &self,
        instance: &str,
        lease_ms: i64,
        runs: &[(RunClaim, Option<Value>)],
    ) -> StoreResult<Vec<HeartbeatAck>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let at = now();
        let mut tx = self.write().await?;
        let mut held = Vec::with_capacity(runs.len());
        for (claim, progress) in runs {
            let row = sqlx::query(
                // Not renewed once waiting for a callback (see PostgreSQL's).
                "UPDATE runs SET lease_expires_at = ?1, progress = COALESCE(?2, progress), \
                 progress_updated_at = iif(?2 IS NULL, progress_updated_at, ?6) \
                 WHERE run_id = ?3 AND attempt = ?4 AND +state = 'running' AND instance = ?5 \
                   AND callback_attempt IS NOT attempt \
                 RETURNING cancel_requested",
            )
            .bind(micros(at + Duration::milliseconds(lease_ms)))
            .bind(progress.as_ref().map(json_text))
            .bind(claim.run_id.to_string())
            .bind(claim.attempt)
            .bind(instance)
            .bind(micros(at))
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                held.push(HeartbeatAck {
                    run_id: claim.run_id,
                    attempt: claim.attempt,
                    cancel_requested: row.try_get("cancel_requested")?,
                });
            }
        }
        tx.commit().await?;
        Ok(held)
    }

    /// Records the end of an attempt; false when the claim is stale.
    pub async fn run_finish(&self, claim: &RunClaim, outcome: &RunOutcome) -> StoreResult<bool> {
        let written = self
            .run_finish_many(&[(claim.clone(), outcome.clone())])
            .await?;
        Ok(written.contains(&claim.run_id))
    }

    /// Records many ends in one transaction; returns the runs written (the
    /// others' claims were stale). Each end is followed by the steps every
    /// end takes (`after_ends`).
    pub async fn run_finish_many(
        &self,
        finished: &[(RunClaim, RunOutcome)],
    ) -> StoreResult<Vec<Uuid>> {
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        let at = now();
        let mut tx = self.write().await?;
        // A statement per chunk: each outcome is a row of `VALUES`, matched
        // to its run by primary key and fenced by state, attempt and instance.
        let outcomes: Vec<(&RunClaim, &RunOutcome, i64, String)> = finished
            .iter()
            .map(|(claim, outcome)| {
                // `finished_at` is when the handler returned, never before the start.
                let returned = at - Duration::milliseconds(outcome.ended_ago_ms.max(0));
                let history = history_text(
                    at,
                    Some(RunState::Running),
                    outcome.state,
                    Some(&claim.instance),
                    &outcome.reason,
                );
                (claim, outcome, micros(returned), history)
            })
            .collect();
        let mut ended = Vec::with_capacity(finished.len());
        for chunk in statement_chunks(&outcomes) {
            let mut update = QueryBuilder::<Sqlite>::new(
                "WITH o (run_id, attempt, instance, state, returned, result, error, traceback, \
                 history) AS (",
            );
            update.push_values(chunk, |mut row, (claim, outcome, returned, history)| {
                row.push_bind(claim.run_id.to_string())
                    .push_bind(claim.attempt)
                    .push_bind(&claim.instance)
                    .push_bind(outcome.state)
                    .push_bind(*returned)
                    .push_bind(opt_json_text(outcome.result.as_ref()))
                    .push_bind(&outcome.error)
                    .push_bind(&outcome.traceback)
                    .push_bind(history);
            });
            update.push(format!(
                ") UPDATE runs SET state = o.state, \
                 finished_at = max(COALESCE(runs.started_at, o.returned), o.returned), \
                 result = o.result, error = o.error, traceback = o.traceback, \
                 lease_expires_at = NULL, history = {} \
                 FROM o WHERE runs.run_id = o.run_id AND +runs.state = 'running' \
                   AND runs.attempt = o.attempt AND runs.instance = o.instance \
                 RETURNING {ENDED_COLUMNS}",
                history_append("runs.history", "o.history")
            ));
            for row in update.build().fetch_all(&mut *tx).await? {
                ended.push(Ended::from_row(&row)?);
            }
        }
        let wake_workers = after_ends(&mut tx, &ended, at).await?;
        tx.commit().await?;
        if wake_workers {
            self.send(&Notice::runs_queued());
        }
        Ok(ended.into_iter().map(|e| e.run_id).collect())
    }

    /// Queues a failed attempt again after its backoff; false when stale.
    pub async fn run_retry(&self, claim: &RunClaim, retry: &RunRetry) -> StoreResult<bool> {
        let at = now();
        let mut tx = self.write().await?;
        let updated = sqlx::query(&format!(
            "UPDATE runs SET state = 'queued', run_after = ?, error = ?, traceback = ?, \
             lease_expires_at = NULL, history = {APPEND} \
             WHERE run_id = ? AND +state = 'running' AND attempt = ? AND instance = ?"
        ))
        .bind(micros(at + Duration::milliseconds(retry.delay_ms)))
        .bind(&retry.error)
        .bind(&retry.traceback)
        .bind(history_text(
            at,
            Some(RunState::Running),
            RunState::Queued,
            Some(&claim.instance),
            &retry.reason,
        ))
        .bind(claim.run_id.to_string())
        .bind(claim.attempt)
        .bind(&claim.instance)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.send(&Notice::runs_queued());
        Ok(updated.rows_affected() == 1)
    }

    /// Hands runs back to the queue (graceful shutdown); the interrupted
    /// attempt is not counted.
    pub async fn run_hand_back(&self, claims: &[RunClaim], reason: &str) -> StoreResult<u64> {
        if claims.is_empty() {
            return Ok(0);
        }
        let at = now();
        let mut tx = self.write().await?;
        let mut handed = 0;
        for claim in claims {
            let updated = sqlx::query(&format!(
                "UPDATE runs SET state = 'queued', run_after = ?, attempt = attempt - 1, \
                 lease_expires_at = NULL, history = {APPEND} \
                 WHERE run_id = ? AND attempt = ? AND +state = 'running' AND instance = ?"
            ))
            .bind(micros(at))
            .bind(history_text(
                at,
                Some(RunState::Running),
                RunState::Queued,
                Some(&claim.instance),
                reason,
            ))
            .bind(claim.run_id.to_string())
            .bind(claim.attempt)
            .bind(&claim.instance)
            .execute(&mut *tx)
            .await?;
            handed += updated.rows_affected();
        }
        tx.commit().await?;
        self.send(&Notice::runs_queued());
        Ok(handed)
    }

    /// Rescues running runs whose lease expired, by [`rules::after_lost_lease`]:
    /// queued again while retries remain, else failed (with a failure
    /// record); `cancelled` when a cancel was requested.
    pub async fn run_rescue_expired(&self, limit: i64, rescuer: &str) -> StoreResult<Vec<RunRow>> {
        let at = now();
        let mut tx = self.write().await?;
        let expired = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE state = 'running' AND lease_expires_at < ? \
             ORDER BY lease_expires_at LIMIT ?"
        ))
        .bind(micros(at))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut rows = Vec::with_capacity(expired.len());
        let mut ended = Vec::new();
        for row in &expired {
            let run = run_from_row(row)?;
            let lost = rules::after_lost_lease(
                run.cancel_requested,
                run.attempt,
                run.max_retries,
                run.instance.as_deref(),
            );
            let requeued = lost.next == RunState::Queued;
            let dead = history_text(
                at,
                Some(RunState::Running),
                RunState::Dead,
                Some(rescuer),
                &lost.dead_reason,
            );
            let then = history_text(
                at,
                Some(RunState::Dead),
                lost.next,
                Some(rescuer),
                lost.next_reason,
            );
            let written = sqlx::query(&format!(
                "UPDATE runs SET state = ?, run_after = ?, lease_expires_at = NULL, finished_at = ?, \
                 error = ?, history = {} \
                 WHERE run_id = ? AND +state = 'running' RETURNING {RUN_COLUMNS}",
                history_append("history", "? || ',' || ?")
            ))
            .bind(lost.next)
            .bind(micros(at))
            .bind((!requeued).then(|| micros(at)))
            .bind(&lost.error)
            .bind(dead)
            .bind(then)
            .bind(run.run_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
            if !requeued {
                ended.push(Ended::from_row(&written)?);
            }
            rows.push(run_from_row(&written)?);
        }
        let mut wake = after_ends(&mut tx, &ended, at).await?;
        wake |= rows
            .iter()
            .any(|r| r.state == RunState::Queued || r.lock_key.is_some());
        tx.commit().await?;
        if wake {
            self.send(&Notice::runs_queued());
        }
        Ok(rows)
    }

    /// Decides runs left `waiting` whose job has no running run left (see
    /// the PostgreSQL store), with the end of the job's latest executed
    /// run. Returns how many runs were decided.
    pub async fn run_settle_waiting(
        &self,
        among: Option<&[String]>,
        limit: i64,
    ) -> StoreResult<u64> {
        let at = now();
        let mut tx = self.write().await?;
        let candidates = sqlx::query(
            "SELECT c.job_id, (SELECT max(x.finished_at) FROM (SELECT r.finished_at FROM runs r \
               WHERE r.job_id = c.job_id AND r.state IN ('succeeded', 'failed', 'timed_out', 'cancelled') \
               ORDER BY r.created_at DESC LIMIT 3) x) AS ended_at \
             FROM (SELECT DISTINCT w.job_id FROM runs w WHERE w.state = 'waiting' \
               AND (?1 IS NULL OR w.job_id IN (SELECT value FROM json_each(?1))) \
               AND NOT EXISTS (SELECT 1 FROM runs r INDEXED BY runs_active_job_idx WHERE r.job_id = w.job_id \
                 AND r.state IN ('queued', 'running', 'waiting') AND r.state = 'running') \
               LIMIT ?2) c",
        )
        .bind(among.map(id_list))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut ended = HashMap::new();
        for row in &candidates {
            let ended_at = row
                .try_get::<Option<i64>, _>("ended_at")?
                .map_or(at, super::rows::from_micros);
            ended.insert(row.try_get::<String, _>("job_id")?, ended_at);
        }
        let (decided, queued) = release_waiting(&mut tx, &ended, at).await?;
        tx.commit().await?;
        if queued {
            self.send(&Notice::runs_queued());
        }
        Ok(decided)
    }
}
