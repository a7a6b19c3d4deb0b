//! The `runs` table: reading runs, manual triggers, cancellation and
//! operator overrides. The scheduler's and workers' statements live in
//! `firing.rs` and `execution.rs`.
//!
//! Every state change names the state it starts from in its `WHERE`, so a
//! stale actor (an old worker, a slow operator) cannot overwrite a newer
//! state; each transition appends `{at, from, to, instance, reason}` to the
//! run's `history`.

use sqlx::{Postgres, QueryBuilder, Transaction};
use uuid::Uuid;

use super::ends::{complete_one_shot_jobs, release_waiting, run_delete_orphans};
use super::events::{with_run_events, Appended};
use super::notify::{self, Notice};
use super::{ActiveCounts, ManualRun, PgStore, RunFilter, RunRow, StoreError, StoreResult};
use crate::domain::RunState;
use crate::store::runs::{free_slot, override_takes_slot, requeue_slot};

pub(crate) const RUN_COLUMNS: &str = "run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after, \
    created_at, started_at, finished_at, state, attempt, max_retries, retry_backoff_ms, timeout_ms, misfire_grace_ms, lock_key, instance, \
    lease_expires_at, cancel_requested, result, error, traceback, progress, progress_updated_at, history";

/// SQL for one history entry, with `$from`, `$to`, `$instance`, `$reason` as SQL expressions.
pub(crate) fn history_entry(from: &str, to: &str, instance: &str, reason: &str) -> String {
    history_entry_at("now()", from, to, instance, reason)
}

/// [`history_entry`] at the SQL time `at`.
pub(crate) fn history_entry_at(
    at: &str,
    from: &str,
    to: &str,
    instance: &str,
    reason: &str,
) -> String {
    format!(
        "jsonb_build_array(jsonb_build_object('at', {at}, 'from', {from}, 'to', {to}, 'instance', {instance}, 'reason', {reason}))"
    )
}

/// `ANY` of the array parameter `param` of `ty` (SQL), for a write or read
/// that finds its rows by key: the array is passed through a sub-select,
/// so the planner does not see its length. Given a constant array of
/// hundreds of keys, it would weigh one hashed pass over the whole table
/// (a sequential scan) against as many index look-ups, and on statistics
/// taken while the table was small, the scan wins.
pub(crate) fn any_of(param: &str, ty: &str) -> String {
    format!("ANY(ARRAY(SELECT unnest({param}::{ty}[])))")
}

/// Counts the queued, running and waiting runs of `job_ids`. Exact when the
/// caller holds the jobs' row locks and this statement's snapshot was taken
/// after they were acquired (see [`PgStore::due_jobs_claim`]).
pub(crate) async fn run_counts_active(
    tx: &mut Transaction<'static, Postgres>,
    job_ids: &[String],
) -> StoreResult<Vec<ActiveCounts>> {
    Ok(sqlx::query_as::<_, ActiveCounts>(RUN_COUNTS_ACTIVE_SQL)
        .bind(job_ids)
        .fetch_all(&mut **tx)
        .await?)
}

/// The slots of job `job_id` taken now (see [`ActiveCounts::taken`]); exact
/// under the job's row lock, as [`run_counts_active`].
async fn slots_taken(tx: &mut Transaction<'static, Postgres>, job_id: &str) -> StoreResult<i64> {
    Ok(run_counts_active(tx, &[job_id.to_string()])
        .await?
        .first()
        .map_or(0, ActiveCounts::taken))
}

/// The statement of [`run_counts_active`]: `$1` job ids.
pub(crate) const RUN_COUNTS_ACTIVE_SQL: &str =
    // Two branches, each matching one partial index by job id.
    "SELECT job_id, count(*) FILTER (WHERE state IN ('queued', 'running')) AS active, \
     count(*) FILTER (WHERE state = 'running') AS running, \
     count(*) FILTER (WHERE state = 'waiting') AS waiting \
     FROM (SELECT job_id, state FROM runs WHERE job_id = ANY($1) AND state IN ('queued', 'running') \
       UNION ALL SELECT job_id, state FROM runs WHERE job_id = ANY($1) AND state = 'waiting') a \
     GROUP BY job_id";

fn push_run_filter(qb: &mut QueryBuilder<'_, Postgres>, f: &RunFilter) {
    qb.push(" WHERE true");
    if let Some(v) = &f.job_id {
        qb.push(" AND job_id = ").push_bind(v.clone());
    }
    if let Some(v) = &f.state {
        qb.push(" AND state = ").push_bind(*v);
    }
    if let Some(v) = &f.handler {
        qb.push(" AND handler = ").push_bind(v.clone());
    }
    if let Some(v) = f.since {
        qb.push(" AND created_at >= ").push_bind(v);
    }
    if let Some(v) = f.until {
        qb.push(" AND created_at < ").push_bind(v);
    }
}

impl PgStore {
    pub async fn run_get(&self, run_id: Uuid) -> StoreResult<RunRow> {
        sqlx::query_as::<_, RunRow>(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1"))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Runs matching the filter, newest first, and how many match in all.
    pub async fn run_list(&self, filter: &RunFilter) -> StoreResult<(Vec<RunRow>, i64)> {
        let mut count = QueryBuilder::new("SELECT count(*) FROM runs");
        push_run_filter(&mut count, filter);
        let total: i64 = count.build_query_scalar().fetch_one(&self.pool).await?;
        let mut page = QueryBuilder::new(format!("SELECT {RUN_COLUMNS} FROM runs"));
        push_run_filter(&mut page, filter);
        page.push(" ORDER BY created_at DESC, scheduled_for DESC, run_id DESC LIMIT ")
            .push_bind(filter.limit)
            .push(" OFFSET ")
            .push_bind(filter.offset);
        Ok((page.build_query_as().fetch_all(&self.pool).await?, total))
    }

    /// The newest run of a job.
    pub async fn run_latest(&self, job_id: &str) -> StoreResult<RunRow> {
        sqlx::query_as::<_, RunRow>(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE job_id = $1 ORDER BY created_at DESC, scheduled_for DESC, run_id DESC LIMIT 1"
        ))
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)
    }

    /// Queues a manual run now. `Conflict` when the job already has
    /// `max_instances` runs queued or running (checked under the job's row
    /// lock, so concurrent triggers cannot both pass).
    pub async fn run_trigger(&self, run: &ManualRun) -> StoreResult<RunRow> {
        let mut tx = self.pool.begin().await?;
        let max_instances: Option<i32> =
            sqlx::query_scalar("SELECT max_instances FROM jobs WHERE job_id = $1 FOR UPDATE")
                .bind(&run.job_id)
                .fetch_optional(&mut *tx)
                .await?;
        let max_instances = max_instances.ok_or(StoreError::NotFound)?;
        // A fresh statement after the lock: exact (see `run_counts_active`).
        free_slot(
            &run.job_id,
            slots_taken(&mut tx, &run.job_id).await?,
            max_instances,
        )?;
        let run_id = Uuid::now_v7();
        let sql = with_run_events(
            &format!(
                "INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after, state, \
                 max_retries, retry_backoff_ms, timeout_ms, misfire_grace_ms, lock_key, history) \
                 SELECT $1, j.job_id, COALESCE($2, j.handler), COALESCE($3, j.kwargs), 'manual', now(), now(), \
                 'queued', j.max_retries, j.retry_backoff_ms, j.timeout_ms, NULL, j.lock_key, {} \
                 FROM jobs j WHERE j.job_id = $4",
                history_entry("NULL", "'queued'", "NULL", "$5")
            ),
            "runs",
            RUN_COLUMNS,
            Appended::All,
            false,
        );
        let row = sqlx::query_as::<_, RunRow>(&sql)
            .bind(run_id)
            .bind(&run.handler)
            .bind(&run.kwargs)
            .bind(&run.job_id)
            .bind(&run.reason)
            .fetch_one(&mut *tx)
            .await?;
        notify::send(&mut *tx, &Notice::runs_queued()).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Cancels a run: a queued one at once; a running one is flagged and its
    /// instance told to stop it (the worker then records `cancelled`).
    /// `Conflict` for a run that has already finished.
    pub async fn run_cancel(&self, run_id: Uuid, reason: &str) -> StoreResult<RunRow> {
        let mut tx = self.pool.begin().await?;
        let current: Option<(RunState, String)> =
            sqlx::query_as("SELECT state, job_id FROM runs WHERE run_id = $1 FOR UPDATE")
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await?;
        let (state, job_id) = current.ok_or(StoreError::NotFound)?;
        match state {
            RunState::Queued | RunState::Waiting => {
                let sql = with_run_events(
                    &format!(
                        "UPDATE runs SET state = 'cancelled', finished_at = now(), error = $2, \
                         history = history || {} WHERE run_id = $1 AND state = $3",
                        history_entry("$3", "'cancelled'", "NULL", "$2")
                    ),
                    "runs",
                    "run_id",
                    Appended::Last(1),
                    false,
                );
                sqlx::query(&sql)
                    .bind(run_id)
                    .bind(reason)
                    .bind(state)
                    .execute(&mut *tx)
                    .await?;
                complete_one_shot_jobs(&mut tx, &[], &[job_id]).await?;
            }
            RunState::Running => {
                sqlx::query("UPDATE runs SET cancel_requested = true WHERE run_id = $1")
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?;
                notify::send(&mut *tx, &Notice::cancel(run_id)).await?;
            }
            done => {
                return Err(StoreError::Conflict(format!(
                    "run {run_id} has already finished ({done}); nothing to cancel"
                )))
            }
        }
        tx.commit().await?;
        self.run_get(run_id).await
    }

    /// Operator override of a run's state (e.g. a stuck run), recorded in
    /// its history with the reason. `queued` re-queues it now; a final state
    /// ends it (a worker still running it can no longer write its outcome).
    ///
    /// Ending a running run is one of the ways a run ends, so it does what
    /// the others do: it decides the runs waiting for its slot, tells the
    /// workers of every replica when it released a lock key (runs blocked
    /// on a key wait for word, they do not poll) or queued a run, and
    /// removes the run if its job was deleted while it ran (see
    /// `jobs_delete_where`), since its worker can no longer write the
    /// outcome that would have removed it. The run as written is returned.
    pub async fn run_override_state(
        &self,
        run_id: Uuid,
        state: RunState,
        reason: &str,
    ) -> StoreResult<RunRow> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(RunState, String, Option<String>)> =
            sqlx::query_as("SELECT state, job_id, lock_key FROM runs WHERE run_id = $1 FOR UPDATE")
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await?;
        let (current, job_id, lock_key) = row.ok_or(StoreError::NotFound)?;
        let requeue = state == RunState::Queued;
        if override_takes_slot(run_id, current, state)? {
            // Keep the invariant firing relies on: at most max_instances
            // runs of a job take a slot. Lock the job first, then count in a
            // fresh statement, so a concurrent trigger cannot slip between.
            let max: Option<i32> =
                sqlx::query_scalar("SELECT max_instances FROM jobs WHERE job_id = $1 FOR UPDATE")
                    .bind(&job_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            requeue_slot(&job_id, max, slots_taken(&mut tx, &job_id).await?)?;
        }
        let sql = with_run_events(
            &format!(
                "UPDATE runs SET state = $2, \
                 finished_at = CASE WHEN $3 THEN NULL ELSE now() END, \
                 run_after = CASE WHEN $3 THEN now() ELSE run_after END, \
                 lease_expires_at = NULL, cancel_requested = false, \
                 history = history || {} WHERE run_id = $1 AND state = $5",
                history_entry("$5", "$2", "'operator'", "$4")
            ),
            "runs",
            RUN_COLUMNS,
            Appended::Last(1),
            false,
        );
        let written = sqlx::query_as::<_, RunRow>(&sql)
            .bind(run_id)
            .bind(state)
            .bind(requeue)
            .bind(format!("operator: {reason}"))
            .bind(current)
            .fetch_one(&mut *tx)
            .await?;
        let ended_running = current == RunState::Running;
        let mut released = false;
        if ended_running {
            // A run waiting for this one's slot: its time came while this
            // one was still executing (it is ending only now).
            // It stopped executing now (this transaction's `now()`: its
            // `finished_at`, or its `run_after` when re-queued).
            let ended_at = written.finished_at.unwrap_or(written.run_after);
            let first_end = std::collections::HashMap::from([(job_id.clone(), ended_at)]);
            released = release_waiting(&mut tx, &first_end).await?.queued;
        }
        if !requeue {
            complete_one_shot_jobs(&mut tx, &[], std::slice::from_ref(&job_id)).await?;
            run_delete_orphans(&mut *tx, &[run_id]).await?;
        }
        let notice = Notice {
            // Tell its instance to stop the handler.
            cancel: if ended_running {
                vec![run_id]
            } else {
                Vec::new()
            },
            // A lock key released, or a waiting run queued: wake the workers.
            runs_queued: requeue || released || (ended_running && lock_key.is_some()),
            jobs: None,
        };
        notify::send(&mut *tx, &notice).await?;
        tx.commit().await?;
        Ok(written)
    }
}
