//! What every end of runs does next on PostgreSQL, in the ending
//! transaction: the failure records of failed runs, the runs waiting for
//! their jobs' slots, one-shot completion, and the removal of runs whose
//! job was deleted. SQL fetches the facts and writes what the rules of
//! [`crate::domain::rules`] decide; it decides nothing itself.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

use super::events::{events_cte, job_entries, with_run_events, Appended};
use super::runs::{any_of, history_entry};
use super::StoreResult;
use crate::domain::rules::{self, FailedRun, OneShotFacts};
use crate::domain::{JobState, RunState, ScheduleKind};
use crate::handlers::ERROR_HANDLER;

pub(crate) type PgTx = Transaction<'static, Postgres>;

/// How often a one-shot completion is decided again when its job was
/// written between the read of its facts and the write of the decision.
const COMPLETION_TRIES: usize = 4;

// Failure records.

/// The `INSERT` of failure records built by [`rules::failure_record`]:
/// `$1` handler, `$2` schedule kind, `$3` job state, then the records'
/// `$4` job ids, `$5` kwargs, `$6` failed run ids, `$7` descriptions. A
/// record already there (a run failed again after an operator re-queued
/// it) gets the new kwargs.
pub(crate) fn failure_records_sql() -> String {
    format!(
        "WITH written AS (INSERT INTO jobs (job_id, handler, kwargs, schedule_kind, start_at, state, \
           source, failed_run_id, description) \
         SELECT u.job_id, $1::text, u.kwargs, $2::text, now(), $3::text, 'jobsd', u.failed_run_id, \
           u.description \
         FROM UNNEST($4::text[], $5::jsonb[], $6::uuid[], $7::text[]) \
           AS u(job_id, kwargs, failed_run_id, description) \
         ON CONFLICT (job_id) DO UPDATE SET kwargs = EXCLUDED.kwargs, updated_at = now() \
         RETURNING job_id, state, updated_at, xmax = 0 AS created), {events} \
         SELECT count(*) FROM written",
        // The state is not written on conflict: an update's `from` is its state.
        events = events_cte(
            "job_events",
            &[job_entries(
                0,
                "written",
                "CASE WHEN c.created THEN 'job.created' ELSE 'job.updated' END",
                "c.updated_at",
                "CASE WHEN NOT c.created THEN c.state END",
                "true"
            )]
        ),
    )
}

/// Writes the failure records of `failed` ([`rules::failure_record`]).
pub(crate) async fn insert_failure_records(
    tx: &mut PgTx,
    failed: &[FailedRun<'_>],
) -> StoreResult<()> {
    if failed.is_empty() {
        return Ok(());
    }
    let records: Vec<rules::FailureRecord> = failed.iter().map(rules::failure_record).collect();
    let col = |f: fn(&rules::FailureRecord) -> Value| records.iter().map(f).collect::<Vec<_>>();
    sqlx::query(&failure_records_sql())
        .bind(ERROR_HANDLER)
        .bind(ScheduleKind::Never)
        .bind(JobState::Paused)
        .bind(records.iter().map(|r| r.job_id.clone()).collect::<Vec<_>>())
        .bind(col(|r| r.kwargs.clone()))
        .bind(records.iter().map(|r| r.failed_run_id).collect::<Vec<_>>())
        .bind(
            records
                .iter()
                .map(|r| r.description.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// Waiting runs.

/// A run waiting for a slot of its job.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct WaitingRun {
    pub run_id: Uuid,
    pub job_id: String,
    pub scheduled_for: DateTime<Utc>,
}

/// The waiting runs of the jobs `$1`.
pub(crate) const WAITING_RUNS_SQL: &str = "SELECT w.run_id, w.job_id, w.scheduled_for FROM runs w \
     WHERE w.job_id = ANY($1) AND w.state = 'waiting'";

/// The `UPDATE` writing waiting runs' decisions: `$1` maps each run id to
/// `{state, ended, error, result, reason}` (see `run_finish_many_sql` for
/// why a map), `$2` the run ids. A run decided meanwhile (cancelled, or by
/// another run's end) is left alone. Returns each written run's id, job
/// and state.
pub(crate) fn release_waiting_sql() -> String {
    let d = "($1::jsonb -> w.run_id::text)";
    let update = format!(
        "UPDATE runs w SET state = {d} ->> 'state', run_after = now(), \
           finished_at = CASE WHEN ({d} ->> 'ended')::bool THEN now() END, \
           error = {d} ->> 'error', result = NULLIF({d} -> 'result', 'null'::jsonb), \
           history = w.history || {history} \
         WHERE w.run_id = {ids} AND {WAITING}",
        ids = any_of("$2", "uuid"),
        history = history_entry(
            "'waiting'",
            &format!("{d} ->> 'state'"),
            "NULL",
            &format!("{d} ->> 'reason'")
        ),
    );
    with_run_events(
        &update,
        "w",
        "w.run_id, w.job_id, w.state",
        Appended::Last(1),
        false,
    )
}

/// The fence of a write to a waiting run `w`, written so that no partial
/// index on `state` serves as the access path (see `RUNNING` in
/// `execution.rs`): such writes find their runs by primary key.
const WAITING: &str = "(w.state = 'waiting') IS TRUE";

/// What deciding waiting runs did.
#[derive(Debug, Default)]
pub(crate) struct Released {
    /// Runs decided.
    pub decided: u64,
    /// Whether one was queued (the workers are to be told).
    pub queued: bool,
    /// The jobs whose waiting runs were decided.
    pub jobs: HashSet<String>,
}

/// Decides `waiting` by [`rules::release_waiting`], each with the first end
/// of its job's runs in `first_end`, and writes the decisions.
pub(crate) async fn decide_waiting(
    tx: &mut PgTx,
    waiting: &[WaitingRun],
    first_end: &HashMap<String, DateTime<Utc>>,
) -> StoreResult<Released> {
    let mut decisions = serde_json::Map::new();
    let mut ids = Vec::new();
    for w in waiting {
        let Some(end) = first_end.get(&w.job_id) else {
            continue;
        };
        let decision = rules::release_waiting(*end, w.scheduled_for);
        let key = w.run_id.to_string();
        if decisions.contains_key(&key) {
            continue;
        }
        decisions.insert(
            key,
            json!({
                "state": decision.state,
                "ended": decision.state != RunState::Queued,
                "error": decision.error,
                "result": decision.result,
                "reason": decision.reason,
            }),
        );
        ids.push(w.run_id);
    }
    if ids.is_empty() {
        return Ok(Released::default());
    }
    let written: Vec<(Uuid, String, RunState)> = sqlx::query_as(&release_waiting_sql())
        .bind(Value::Object(decisions))
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
    Ok(Released {
        decided: written.len() as u64,
        queued: written.iter().any(|w| w.2 == RunState::Queued),
        jobs: written.into_iter().map(|w| w.1).collect(),
    })
}

/// Decides the waiting runs of the jobs in `first_end` (job id → when the
/// first of its runs holding a slot stopped executing).
pub(crate) async fn release_waiting(
    tx: &mut PgTx,
    first_end: &HashMap<String, DateTime<Utc>>,
) -> StoreResult<Released> {
    if first_end.is_empty() {
        return Ok(Released::default());
    }
    let job_ids: Vec<String> = first_end.keys().cloned().collect();
    let waiting: Vec<WaitingRun> = sqlx::query_as(WAITING_RUNS_SQL)
        .bind(job_ids)
        .fetch_all(&mut **tx)
        .await?;
    decide_waiting(tx, &waiting, first_end).await
}

// One-shot completion.

/// What [`rules::one_shot_completes`] needs of a one-shot job, and where
/// and at which version (`ctid`, `xmin`) its row was read: the decision is
/// written to that row version only.
#[derive(Debug, Clone, FromRow)]
pub(crate) struct OneShotRow {
    pub job_id: String,
    pub schedule_kind: ScheduleKind,
    pub state: JobState,
    pub next_run_at: Option<DateTime<Utc>>,
    pub has_fired: bool,
    pub active_runs: i64,
    pub version: i64,
    /// The row's `ctid`, as text.
    pub ctid: String,
}

impl OneShotRow {
    fn facts(&self) -> OneShotFacts {
        OneShotFacts {
            kind: self.schedule_kind,
            state: self.state,
            next_run_at: self.next_run_at,
            has_fired: self.has_fired,
            active_runs: self.active_runs,
        }
    }
}

/// The columns of [`OneShotRow`] for the job `j`; `not_ending` is SQL
/// leaving out the runs `a` whose end the reading statement writes itself
/// (its snapshot still sees them running), or empty.
pub(crate) fn one_shot_columns(not_ending: &str) -> String {
    format!(
        "j.job_id, j.schedule_kind, j.state, j.next_run_at, j.xmin::text::int8 AS version, \
         j.ctid::text AS ctid, \
         EXISTS (SELECT 1 FROM runs x WHERE x.job_id = j.job_id AND x.trigger <> 'manual') AS has_fired, \
         (SELECT count(*) FROM runs a WHERE a.job_id = j.job_id \
            AND a.state IN ('queued', 'running', 'waiting') {not_ending}) AS active_runs"
    )
}

/// The facts of the one-shot jobs among `$1`.
pub(crate) fn one_shot_facts_sql() -> String {
    format!(
        "SELECT {} FROM jobs j WHERE j.job_id = {} AND j.schedule_kind = 'once'",
        one_shot_columns(""),
        any_of("$1", "text")
    )
}

/// The `UPDATE` completing jobs: `$1` the row versions their facts were
/// read from (`ctid`s: the rows are reached directly, not looked up again),
/// `$2` maps each job id to that version's `xmin`, `$3` to its state (the
/// completion event's `from`). A job written since (its row has moved, or
/// another job's row took the slot) is left alone, and decided again.
/// Returns the jobs completed.
pub(crate) fn complete_jobs_sql() -> String {
    format!(
        "WITH completed AS (UPDATE jobs j SET state = 'completed', updated_at = now() \
           WHERE j.ctid = {} AND j.xmin = ($2::jsonb ->> j.job_id)::int8::text::xid \
           RETURNING j.job_id, j.updated_at), {events} \
         SELECT job_id FROM completed",
        any_of("$1::text[]", "tid"),
        events = events_cte(
            "job_events",
            &[job_entries(
                0,
                "completed",
                "'job.completed'",
                "c.updated_at",
                "$3::jsonb ->> c.job_id",
                "true"
            )]
        ),
    )
}

/// Completes the jobs of `facts` that [`rules::one_shot_completes`];
/// returns those among them written since their facts were read (to be
/// decided again).
async fn complete_decided(tx: &mut PgTx, facts: &[OneShotRow]) -> StoreResult<Vec<String>> {
    let mut versions = serde_json::Map::new();
    let mut states = serde_json::Map::new();
    let mut ctids = Vec::new();
    for row in facts {
        if rules::one_shot_completes(&row.facts()) && !versions.contains_key(&row.job_id) {
            versions.insert(row.job_id.clone(), Value::from(row.version));
            states.insert(row.job_id.clone(), Value::from(row.state.as_str()));
            ctids.push(row.ctid.clone());
        }
    }
    if versions.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = versions.keys().cloned().collect();
    let completed: HashSet<String> = sqlx::query_scalar(&complete_jobs_sql())
        .bind(&ctids)
        .bind(Value::Object(versions))
        .bind(Value::Object(states))
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
    Ok(ids
        .into_iter()
        .filter(|id| !completed.contains(id))
        .collect())
}

/// Completes the one-shot jobs that [`rules::one_shot_completes`]: those
/// of `read` by the facts read with them, and those of `job_ids` by facts
/// read now. A job written between the read and the write is read and
/// decided again.
pub(crate) async fn complete_one_shot_jobs(
    tx: &mut PgTx,
    read: &[OneShotRow],
    job_ids: &[String],
) -> StoreResult<()> {
    let mut again = complete_decided(tx, read).await?;
    again.extend(job_ids.iter().cloned());
    for _ in 0..COMPLETION_TRIES {
        if again.is_empty() {
            return Ok(());
        }
        let facts: Vec<OneShotRow> = sqlx::query_as(&one_shot_facts_sql())
            .bind(&again)
            .fetch_all(&mut **tx)
            .await?;
        again = complete_decided(tx, &facts).await?;
    }
    if !again.is_empty() {
        tracing::warn!(jobs = ?again, "one-shot jobs written concurrently at every try to complete them; left as they are");
    }
    Ok(())
}

// Runs of deleted jobs.

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
