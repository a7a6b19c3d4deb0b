//! The `runs` table on the embedded store: reads, manual triggers,
//! cancellation and operator overrides (each transition appends to the
//! run's history and names the state it starts from, as on PostgreSQL).

use std::collections::HashMap;

use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::execution::{
    complete_one_shot_jobs, delete_orphans, release_waiting, slots_taken, APPEND,
};
use super::firing::{insert_runs, RunInsert};
use super::rows::{history_text, micros, run_from_row, RUN_COLUMNS};
use super::{now, ManualRun, Notice, RunFilter, RunRow, SqliteStore, StoreError, StoreResult};
use crate::domain::{RunState, Trigger};
use crate::store::runs::{free_slot, override_takes_slot, requeue_slot};

fn push_run_filter(qb: &mut QueryBuilder<'_, Sqlite>, f: &RunFilter) {
    qb.push(" WHERE 1");
    if let Some(v) = &f.job_id {
        qb.push(" AND job_id = ").push_bind(v.clone());
    }
    if let Some(v) = f.state {
        qb.push(" AND state = ").push_bind(v);
    }
    if let Some(v) = &f.handler {
        qb.push(" AND handler = ").push_bind(v.clone());
    }
    if let Some(v) = f.since {
        qb.push(" AND created_at >= ").push_bind(micros(v));
    }
    if let Some(v) = f.until {
        qb.push(" AND created_at < ").push_bind(micros(v));
    }
}

impl SqliteStore {
    pub async fn run_get(&self, run_id: Uuid) -> StoreResult<RunRow> {
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?"))
            .bind(run_id.to_string())
            .fetch_optional(&self.readers)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(run_from_row(&row)?)
    }

    /// Runs matching the filter, newest first, and how many match in all.
    pub async fn run_list(&self, filter: &RunFilter) -> StoreResult<(Vec<RunRow>, i64)> {
        let mut count = QueryBuilder::new("SELECT count(*) FROM runs");
        push_run_filter(&mut count, filter);
        let total: i64 = count.build_query_scalar().fetch_one(&self.readers).await?;
        let mut page = QueryBuilder::new(format!("SELECT {RUN_COLUMNS} FROM runs"));
        push_run_filter(&mut page, filter);
        page.push(" ORDER BY created_at DESC, scheduled_for DESC, run_id DESC LIMIT ")
            .push_bind(filter.limit)
            .push(" OFFSET ")
            .push_bind(filter.offset);
        let rows = page.build().fetch_all(&self.readers).await?;
        let runs = rows
            .iter()
            .map(run_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((runs, total))
    }

    /// The newest run of a job.
    pub async fn run_latest(&self, job_id: &str) -> StoreResult<RunRow> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE job_id = ? \
             ORDER BY created_at DESC, scheduled_for DESC, run_id DESC LIMIT 1"
        ))
        .bind(job_id)
        .fetch_optional(&self.readers)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(run_from_row(&row)?)
    }

    /// Queues a manual run now. `Conflict` when the job's `max_instances`
    /// slots are taken (exact: one writer).
    pub async fn run_trigger(&self, run: &ManualRun) -> StoreResult<RunRow> {
        let at = now();
        let mut tx = self.write().await?;
        let job = sqlx::query(
            "SELECT handler, kwargs, max_instances, max_retries, retry_backoff_ms, timeout_ms, \
             lock_key FROM jobs WHERE job_id = ?",
        )
        .bind(&run.job_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let max_instances: i32 = job.try_get("max_instances")?;
        free_slot(
            &run.job_id,
            slots_taken(&mut tx, &run.job_id).await?,
            max_instances,
        )?;
        let handler: String = match &run.handler {
            Some(h) => h.clone(),
            None => job.try_get("handler")?,
        };
        let kwargs: String = match &run.kwargs {
            Some(k) => k.to_string(),
            None => job.try_get("kwargs")?,
        };
        let lock_key: Option<String> = job.try_get("lock_key")?;
        let row = insert_runs(
            &mut tx,
            &[RunInsert {
                job_id: &run.job_id,
                handler: &handler,
                kwargs: &kwargs,
                trigger: Trigger::Manual,
                scheduled_for: at,
                state: RunState::Queued,
                reason: &run.reason,
                history_instance: None,
                result: None,
                max_retries: job.try_get("max_retries")?,
                retry_backoff_ms: job.try_get("retry_backoff_ms")?,
                timeout_ms: job.try_get("timeout_ms")?,
                misfire_grace_ms: None,
                lock_key: lock_key.as_deref(),
                claim: None,
            }],
            at,
            |_| true,
        )
        .await?
        .rows
        .pop()
        .ok_or_else(|| StoreError::Conflict("the run could not be stored".into()))?;
        tx.commit().await?;
        self.send(&Notice::runs_queued());
        Ok(row)
    }

    /// Cancels a run: a queued or waiting one at once; a running one is
    /// flagged and its worker told. `Conflict` once it has finished.
    pub async fn run_cancel(&self, run_id: Uuid, reason: &str) -> StoreResult<RunRow> {
        let at = now();
        let mut tx = self.write().await?;
        let current = sqlx::query("SELECT state, job_id FROM runs WHERE run_id = ?")
            .bind(run_id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let state: RunState = current.try_get("state")?;
        let job_id: String = current.try_get("job_id")?;
        let mut notice = Notice::default();
        match state {
            RunState::Queued | RunState::Waiting => {
                sqlx::query(&format!(
                    "UPDATE runs SET state = 'cancelled', finished_at = ?, error = ?, \
                     history = {APPEND} WHERE run_id = ? AND state = ?"
                ))
                .bind(micros(at))
                .bind(reason)
                .bind(history_text(
                    at,
                    Some(state),
                    RunState::Cancelled,
                    None,
                    reason,
                ))
                .bind(run_id.to_string())
                .bind(state)
                .execute(&mut *tx)
                .await?;
                complete_one_shot_jobs(&mut tx, &[job_id], at).await?;
            }
            RunState::Running => {
                sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE run_id = ?")
                    .bind(run_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                notice = Notice::cancel(run_id);
            }
            done => {
                return Err(StoreError::Conflict(format!(
                    "run {run_id} has already finished ({done}); nothing to cancel"
                )))
            }
        }
        tx.commit().await?;
        self.send(&notice);
        self.run_get(run_id).await
    }

    /// Operator override of a run's state, recorded with the reason (see
    /// the PostgreSQL store: ending a running run does what every end does).
    pub async fn run_override_state(
        &self,
        run_id: Uuid,
        state: RunState,
        reason: &str,
    ) -> StoreResult<RunRow> {
        let at = now();
        let mut tx = self.write().await?;
        let row = sqlx::query("SELECT state, job_id, lock_key FROM runs WHERE run_id = ?")
            .bind(run_id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let current: RunState = row.try_get("state")?;
        let job_id: String = row.try_get("job_id")?;
        let lock_key: Option<String> = row.try_get("lock_key")?;
        let requeue = state == RunState::Queued;
        if override_takes_slot(run_id, current, state)? {
            let max: Option<i32> =
                sqlx::query_scalar("SELECT max_instances FROM jobs WHERE job_id = ?")
                    .bind(&job_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            requeue_slot(&job_id, max, slots_taken(&mut tx, &job_id).await?)?;
        }
        let reason = format!("operator: {reason}");
        let written = sqlx::query(&format!(
            "UPDATE runs SET state = ?1, finished_at = CASE WHEN ?2 THEN NULL ELSE ?3 END, \
             run_after = CASE WHEN ?2 THEN ?3 ELSE run_after END, lease_expires_at = NULL, \
             cancel_requested = 0, history = {} \
             WHERE run_id = ?5 AND state = ?6 RETURNING {RUN_COLUMNS}",
            super::rows::history_append("history", "?4")
        ))
        .bind(state)
        .bind(requeue)
        .bind(micros(at))
        .bind(history_text(
            at,
            Some(current),
            state,
            Some("operator"),
            &reason,
        ))
        .bind(run_id.to_string())
        .bind(current)
        .fetch_one(&mut *tx)
        .await?;
        let written = run_from_row(&written)?;
        let ended_running = current == RunState::Running;
        let mut released = false;
        if ended_running {
            let ended = HashMap::from([(job_id.clone(), at)]);
            released = release_waiting(&mut tx, &ended, at).await?.1;
        }
        if !requeue {
            complete_one_shot_jobs(&mut tx, std::slice::from_ref(&job_id), at).await?;
            delete_orphans(&mut tx, &[run_id]).await?;
        }
        tx.commit().await?;
        self.send(&Notice {
            cancel: if ended_running {
                vec![run_id]
            } else {
                Vec::new()
            },
            runs_queued: requeue || released || (ended_running && lock_key.is_some()),
            jobs: None,
        });
        Ok(written)
    }
}
