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

use super::notify::{self, Notice};
use super::runs::{history_entry, RUN_COLUMNS};
use super::{
    ClaimSlots, HeartbeatAck, PgStore, RunClaim, RunOutcome, RunRetry, RunRow, StoreResult,
};
use crate::domain::RunState;
use crate::handlers::ERROR_HANDLER;

/// Claims are serialized across replicas by this advisory lock, so the
/// `max_instances` and `lock_key` counts each claim sees are exact.
const CLAIM_LOCK: i64 = 0x6a6f_6273_645f_636c; // "jobsd_cl"

/// Whether the run in `r` starts later than its misfire grace allows (first
/// start only; retries and manual runs are never late).
const LATE: &str = "(r.started_at IS NULL AND r.misfire_grace_ms IS NOT NULL \
    AND now() > r.scheduled_for + r.misfire_grace_ms * interval '1 millisecond')";

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
         CASE WHEN {claim} THEN now() END, CASE WHEN {claim} THEN {instance} END, \
         CASE WHEN {claim} THEN now() + {lease_ms} * interval '1 millisecond' END, \
         CASE WHEN {claim} THEN {history} || {claimed} ELSE {history} END",
        claimed = history_entry("'queued'", "'running'", instance, &claimed_reason("1")),
    )
}

impl PgStore {
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
        let sql = run_claim_sql();
        let runs = sqlx::query_as::<_, RunRow>(&sql)
            .bind(&slots.instance)
            .bind(slots.limit)
            .bind(slots.lease_ms)
            .fetch_all(&mut *tx)
            .await?;
        let missed: Vec<String> = runs
            .iter()
            .filter(|r| r.state == RunState::Missed)
            .map(|r| r.job_id.clone())
            .collect();
        complete_one_shot_jobs(&mut tx, &missed).await?;
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
    /// run, attempt and instance) and stores their latest progress. Returns
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

    /// [`PgStore::run_finish`] for many runs in one statement; returns the
    /// runs whose outcome was written (the others' claims were stale).
    ///
    /// Runs waiting for a slot of these runs' jobs are decided in the same
    /// statement ([`release_waiting_sql`]). When runs were queued by that,
    /// or a lock key was released, the workers of every replica are told
    /// (one notification, after the commit). Runs of a job deleted while
    /// they ran are removed once their outcome is in.
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
                let outcome = serde_json::json!({
                    "attempt": c.attempt, "instance": c.instance, "state": o.state,
                    "result": o.result, "error": o.error, "traceback": o.traceback,
                    "reason": o.reason, "ago": o.ended_ago_ms.max(0),
                });
                (c.run_id.to_string(), outcome)
            })
            .collect();
        let ids: Vec<Uuid> = finished.iter().map(|(c, _)| c.run_id).collect();
        let rows: Vec<(Uuid, bool, bool, i64)> = sqlx::query_as(&run_finish_many_sql())
            .bind(Value::Object(outcomes))
            .bind(&ids)
            .bind(ERROR_HANDLER)
            .fetch_all(&self.pool)
            .await?;
        // Only a run whose cancel was requested can belong to a deleted job
        // (the delete requests it). Whether its job is gone is checked by a
        // later statement: this one's snapshot may predate a delete it
        // waited for (its update then saw the delete's cancel request, but
        // its reads still see the job).
        let maybe_orphans: Vec<Uuid> = rows.iter().filter(|r| r.2).map(|r| r.0).collect();
        if !maybe_orphans.is_empty() {
            run_delete_orphans(&self.pool, &maybe_orphans).await?;
        }
        let runs_queued = rows.iter().any(|r| r.1 || r.3 > 0);
        if runs_queued {
            self.notify(&Notice::runs_queued()).await?;
        }
        Ok(rows.into_iter().map(|r| r.0).collect())
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
    /// the database), records `dead` in their history, and queues them again
    /// while retries remain; otherwise they fail with a failure record. A
    /// run whose cancel was requested is `cancelled` instead: a cancel is
    /// never lost to a rescue. Safe to run on every replica at once (rows
    /// are locked and skipped).
    pub async fn run_rescue_expired(&self, limit: i64, rescuer: &str) -> StoreResult<Vec<RunRow>> {
        let mut tx = self.pool.begin().await?;
        let sql = run_rescue_expired_sql();
        let rows = sqlx::query_as::<_, RunRow>(&sql)
            .bind(limit)
            .bind(rescuer)
            .fetch_all(&mut *tx)
            .await?;
        let ended: Vec<&RunRow> = rows
            .iter()
            .filter(|r| r.state != RunState::Queued)
            .collect();
        let failed_ids: Vec<Uuid> = ended
            .iter()
            .filter(|r| r.state == RunState::Failed)
            .map(|r| r.run_id)
            .collect();
        insert_failure_records(&mut tx, &failed_ids).await?;
        let ended_jobs: Vec<String> = ended.iter().map(|r| r.job_id.clone()).collect();
        let released = release_waiting(&mut tx, &ended_jobs).await?;
        complete_one_shot_jobs(&mut tx, &ended_jobs).await?;
        let ended_ids: Vec<Uuid> = ended.iter().map(|r| r.run_id).collect();
        run_delete_orphans(&mut *tx, &ended_ids).await?;
        let queued = released
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
    /// executed run. `among` limits it to those jobs (the scheduler checks
    /// the jobs it just stored waiting runs for; the supervisor sweeps all).
    /// Returns how many jobs' waiting runs were decided.
    pub async fn run_settle_waiting(
        &self,
        among: Option<&[String]>,
        limit: i64,
    ) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        let ended = "WITH candidates AS (SELECT DISTINCT w.job_id FROM runs w \
              WHERE w.state = 'waiting' AND ($2::text[] IS NULL OR w.job_id = ANY($2)) \
              AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.job_id = w.job_id AND r.state = 'running') \
              LIMIT $1) \
            SELECT c.job_id, COALESCE((SELECT max(x.finished_at) FROM (SELECT r.finished_at FROM runs r \
              WHERE r.job_id = c.job_id AND r.state IN ('succeeded', 'failed', 'timed_out', 'cancelled') \
              ORDER BY r.created_at DESC LIMIT 3) x), now()) AS ended_at FROM candidates c";
        let states: Vec<String> = sqlx::query_scalar(&release_waiting_sql(ended))
            .bind(limit)
            .bind(among)
            .fetch_all(&mut *tx)
            .await?;
        if states.iter().any(|s| s == "queued") {
            notify::send(&mut *tx, &Notice::runs_queued()).await?;
        }
        tx.commit().await?;
        Ok(states.len() as u64)
    }
}

/// The claim statement of [`PgStore::run_claim`]: `$1` instance, `$2` limit,
/// `$3` lease in ms.
pub(crate) fn run_claim_sql() -> String {
    format!(
        "WITH due AS ( \
            SELECT r.run_id, r.lock_key, r.run_after FROM runs r \
            WHERE r.state = 'queued' AND r.run_after <= now() AND {unblocked} \
            ORDER BY r.run_after LIMIT $2 * 2 + 16 \
         ), free_of_lock AS ( \
            SELECT d.run_id, d.run_after FROM due d WHERE d.lock_key IS NULL \
            UNION ALL \
            SELECT * FROM (SELECT DISTINCT ON (d.lock_key) d.run_id, d.run_after FROM due d \
              WHERE d.lock_key IS NOT NULL \
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
        unblocked = UNBLOCKED,
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
    )
}

/// The statement of [`PgStore::run_finish_many`] (its parameters are bound
/// there).
pub(crate) fn run_finish_many_sql() -> String {
    // `$1` maps each run id to its outcome (a jsonb object: key lookups
    // are binary searches), so the update reads nothing but `runs`, by
    // primary key: no join that a stale estimate could turn quadratic.
    let o = "($1::jsonb -> r.run_id::text)";
    format!(
        "WITH finished AS (UPDATE runs r SET state = {o} ->> 'state', \
           finished_at = GREATEST(r.started_at, now() - ({o} ->> 'ago')::int8 * interval '1 millisecond'), \
           result = NULLIF({o} -> 'result', 'null'::jsonb), error = {o} ->> 'error', \
           traceback = {o} ->> 'traceback', lease_expires_at = NULL, \
           history = r.history || {history} \
         WHERE r.run_id = ANY($2) AND {fence} \
           AND r.attempt = ({o} ->> 'attempt')::int4 AND r.instance = {o} ->> 'instance' \
         RETURNING r.run_id, r.job_id, r.handler, r.kwargs, r.state, r.error, r.traceback, \
           r.lock_key, r.finished_at, r.cancel_requested), \
         failure_records AS ({failure_records}), \
         released AS ({released}), \
         completed AS ({completed}) \
         SELECT f.run_id, f.lock_key IS NOT NULL AS held_lock, f.cancel_requested, \
           (SELECT count(*) FROM released WHERE state = 'queued') AS released \
         FROM finished f",
        history = history_entry(
            "'running'",
            &format!("{o} ->> 'state'"),
            &format!("{o} ->> 'instance'"),
            &format!("{o} ->> 'reason'")
        ),
        fence = RUNNING,
        failure_records = failure_records_sql(
            "finished r WHERE r.state IN ('failed', 'timed_out')",
            "$3"
        ),
        released = release_waiting_sql("SELECT job_id, finished_at AS ended_at FROM finished"),
        completed = complete_one_shot_jobs_sql(
            "SELECT job_id FROM finished",
            "SELECT run_id FROM finished"
        ),
    )
}

/// The statement of [`PgStore::run_retry`].
pub(crate) fn run_retry_sql() -> String {
    format!(
        "UPDATE runs SET state = 'queued', run_after = now() + $4 * interval '1 millisecond', \
         error = $5, traceback = $6, lease_expires_at = NULL, history = history || {} \
         WHERE run_id = $1 AND {RUNNING_BARE} AND attempt = $2 AND instance = $3",
        history_entry("'running'", "'queued'", "$3::text", "$7::text")
    )
}

/// The statement of [`PgStore::run_hand_back`].
pub(crate) fn run_hand_back_sql() -> String {
    // `$2` maps run ids to attempts (see `run_finish_many_sql`).
    format!(
        "UPDATE runs r SET state = 'queued', run_after = now(), attempt = r.attempt - 1, \
         lease_expires_at = NULL, history = r.history || {} \
         WHERE r.run_id = ANY($1) AND r.attempt = ($2::jsonb ->> r.run_id::text)::int4 \
           AND {RUNNING} AND r.instance = $3",
        history_entry("'running'", "'queued'", "$3::text", "$4::text")
    )
}

/// The statement of [`PgStore::run_rescue_expired`]: `$1` limit, `$2` rescuer.
pub(crate) fn run_rescue_expired_sql() -> String {
    let next = "CASE WHEN r.cancel_requested THEN 'cancelled' \
        WHEN r.attempt <= r.max_retries THEN 'queued' ELSE 'failed' END";
    format!(
        "WITH expired AS ( \
            SELECT run_id FROM runs WHERE state = 'running' AND lease_expires_at < now() \
            ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED \
         ) \
         UPDATE runs r SET \
            state = {next}, run_after = now(), lease_expires_at = NULL, \
            finished_at = CASE WHEN {next} = 'queued' THEN NULL ELSE now() END, \
            error = CASE WHEN r.cancel_requested THEN 'cancelled; its instance ' || COALESCE(r.instance, '?') \
              || ' stopped heartbeating before it had stopped the run' \
              ELSE 'lease expired: instance ' || COALESCE(r.instance, '?') || ' stopped heartbeating' END, \
            history = r.history || {dead} || {then} \
         FROM expired e WHERE r.run_id = e.run_id AND r.run_id = ANY(ARRAY(SELECT run_id FROM expired)) \
         RETURNING {columns}",
        dead = history_entry("'running'", "'dead'", "$2::text", "'lease expired on ' || COALESCE(r.instance, '?')"),
        then = history_entry(
            "'dead'",
            next,
            "$2::text",
            "CASE WHEN r.cancel_requested THEN 'cancel requested before the lease was lost' \
             WHEN r.attempt <= r.max_retries THEN 're-queued after a lost lease' \
             ELSE 'no retries left after a lost lease' END"
        ),
        columns = RUN_COLUMNS.replace("run_id,", "r.run_id,")
    )
}

/// The statement of [`PgStore::run_heartbeat`].
pub(crate) fn run_heartbeat_sql() -> String {
    // `$3` maps run ids to `{"a": attempt, "p": progress}` (see
    // `run_finish_many_sql` for why a map and not a join).
    let h = "($3::jsonb -> r.run_id::text)";
    format!(
        "UPDATE runs r SET lease_expires_at = now() + $2 * interval '1 millisecond', \
         progress = COALESCE({h} -> 'p', r.progress) \
         WHERE r.run_id = ANY($4) AND r.attempt = ({h} ->> 'a')::int4 \
           AND {RUNNING} AND r.instance = $1 \
         RETURNING r.run_id, r.attempt, r.cancel_requested"
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

/// SQL deciding the `waiting` runs of the jobs in `ended` (a query of
/// `job_id, ended_at`: runs of those jobs that stopped executing at
/// `ended_at`). The rule: a run waits only because every slot of its job
/// was held by a running run when it came due; if the first of those to end
/// had returned by the waiting run's scheduled time, the slot was in truth
/// free then (only its outcome was not written yet), and the run is queued
/// now; otherwise a run was still executing at that time, and the time is
/// skipped (`missed`), as `max_instances` asks. Returns the decided runs'
/// `state`.
pub(crate) fn release_waiting_sql(ended: &str) -> String {
    // The waiting runs are found through their index by job id; each
    // looks up when its job's run ended.
    let queue =
        "(SELECT min(e.ended_at) FROM ended_runs e WHERE e.job_id = w.job_id) <= w.scheduled_for";
    format!(
        "WITH ended_runs AS MATERIALIZED ({ended}) \
         UPDATE runs w SET state = CASE WHEN {queue} THEN 'queued' ELSE 'missed' END, \
           run_after = now(), finished_at = CASE WHEN {queue} THEN NULL ELSE now() END, \
           error = CASE WHEN {queue} THEN NULL ELSE '{SKIPPED}' END, \
           result = CASE WHEN {queue} THEN NULL ELSE '{{\"skipped\": \"max_instances\"}}'::jsonb END, \
           history = w.history || {history} \
         WHERE w.job_id = ANY(ARRAY(SELECT job_id FROM ended_runs)) AND w.state = 'waiting' \
         RETURNING w.state",
        history = history_entry(
            "'waiting'",
            &format!("CASE WHEN {queue} THEN 'queued' ELSE 'missed' END"),
            "NULL",
            &format!(
                "CASE WHEN {queue} THEN 'the run holding its slot had ended by its time' \
                 ELSE '{SKIPPED}' END"
            )
        ),
    )
}

/// Why a scheduled time was skipped for `max_instances`.
pub(crate) const SKIPPED: &str =
    "skipped: max_instances runs of this job were queued or executing at its time";

/// Decides the waiting runs of `job_ids`, whose running run ends now (see
/// [`release_waiting_sql`]). Returns whether any was queued.
pub(crate) async fn release_waiting(
    tx: &mut Transaction<'static, Postgres>,
    job_ids: &[String],
) -> StoreResult<bool> {
    if job_ids.is_empty() {
        return Ok(false);
    }
    let states: Vec<String> = sqlx::query_scalar(&release_waiting_sql(
        "SELECT unnest($1::text[]) AS job_id, now() AS ended_at",
    ))
    .bind(job_ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(states.iter().any(|s| s == "queued"))
}

/// Deletes the ended runs among `run_ids` whose job no longer exists (it
/// was deleted while they ran: they were kept until their handler stopped,
/// holding their lock key).
pub(crate) async fn run_delete_orphans<'e, E>(executor: E, run_ids: &[Uuid]) -> StoreResult<()>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    if run_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM runs r WHERE r.run_id = ANY($1) AND r.state NOT IN ('queued', 'running') \
         AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = r.job_id)",
    )
    .bind(run_ids)
    .execute(executor)
    .await?;
    Ok(())
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

/// An `UPDATE` that completes the one-shot jobs among `job_ids` (a query):
/// those that have fired (a scheduled run exists), have no future time and
/// no run queued, running or waiting, not counting the runs in
/// `ending_runs` (a query; those this statement ends). Whether the job was
/// paused meanwhile does not matter: a one-shot job whose run has ended is
/// done, and resuming it cannot fire it again.
fn complete_one_shot_jobs_sql(job_ids: &str, ending_runs: &str) -> String {
    format!(
        "UPDATE jobs j SET state = 'completed', updated_at = now() \
         WHERE j.job_id = ANY(ARRAY({job_ids})) AND j.schedule_kind = 'once' AND j.state <> 'completed' \
           AND j.next_run_at IS NULL \
           AND EXISTS (SELECT 1 FROM runs f WHERE f.job_id = j.job_id AND f.trigger <> 'manual') \
           AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.job_id = j.job_id \
             AND r.state IN ('queued', 'running', 'waiting') \
             AND r.run_id <> ALL(ARRAY({ending_runs})))"
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
