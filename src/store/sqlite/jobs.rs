//! The `jobs` table on the embedded store.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{QueryBuilder, Sqlite};

use super::execution::id_list;
use super::firing::{insert_runs, RunInsert};
use super::rows::{job_from_row, json_text, micros, opt_micros, statement_chunks, SELECT_JOB};
use super::{
    conflict_on_unique, now, ClaimSlots, JobFilter, JobRow, JobType, NewJob, Notice, RunRow,
    SqliteStore, StoreError, StoreResult,
};
use crate::domain::{rules, JobState, RunState, Trigger};
use crate::handlers::ERROR_HANDLER;

fn push_job_filter(qb: &mut QueryBuilder<'_, Sqlite>, filter: &JobFilter) {
    qb.push(" WHERE 1");
    match filter.job_type {
        JobType::All => {}
        JobType::Failed => {
            qb.push(" AND j.handler = ").push_bind(ERROR_HANDLER);
        }
        JobType::User => {
            qb.push(" AND j.handler <> ").push_bind(ERROR_HANDLER);
        }
    }
    if let Some(handler) = &filter.handler {
        qb.push(" AND j.handler = ").push_bind(handler.clone());
    }
    if let Some(state) = filter.state {
        qb.push(" AND j.state = ").push_bind(state);
    }
}

/// Chains `$bind` (`bind` of a query, `push_bind` of a `VALUES` row) over
/// the 23 definition columns of `$job` (`job_id` .. `source` in table
/// order, then `keep_runs`, `notify` and `alerts`, as [`DEFINITION_COLUMNS`] lists them), with
/// `$kwargs` (the kwargs' JSON text) and `$next_run_at`.
macro_rules! bind_definition_columns {
    ($target:expr, $bind:ident, $job:expr, $kwargs:expr, $next_run_at:expr) => {
        $target
            .$bind(&$job.job_id)
            .$bind(&$job.handler)
            .$bind($kwargs)
            .$bind($job.schedule_kind)
            .$bind($job.interval_ms)
            .$bind(&$job.cron)
            .$bind(&$job.timezone)
            .$bind(micros($job.start_at))
            .$bind($job.misfire_grace_ms)
            .$bind($job.coalesce)
            .$bind($job.max_instances)
            .$bind(&$job.lock_key)
            .$bind($job.timeout_ms)
            .$bind($job.max_retries)
            .$bind($job.retry_backoff_ms)
            .$bind($job.state)
            .$bind($next_run_at)
            .$bind(&$job.description)
            .$bind(Value::from($job.tags.clone()).to_string())
            .$bind(&$job.source)
            .$bind($job.keep_runs)
            .$bind(Value::from($job.notify.clone()).to_string())
            .$bind(serde_json::to_string(&$job.alerts).unwrap_or_else(|_| "{}".into()))
    };
}

/// Binds the 23 definition columns of `job`, for statements that write a
/// whole definition.
pub(crate) fn bind_definition<'q>(
    query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    job: &'q NewJob,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    bind_definition_columns!(
        query,
        bind,
        job,
        json_text(&job.kwargs),
        opt_micros(job.next_run_at)
    )
}

/// The columns [`bind_definition`] binds, in its order.
pub(crate) const DEFINITION_COLUMNS: &str = "job_id, handler, kwargs, schedule_kind, interval_ms, cron, \
    timezone, start_at, misfire_grace_ms, \"coalesce\", max_instances, lock_key, timeout_ms, max_retries, \
    retry_backoff_ms, state, next_run_at, description, tags, source, keep_runs, notify, alerts";

impl SqliteStore {
    /// Inserts jobs in one transaction, all or none; `Conflict` naming the
    /// first `job_id` taken. A one-shot job due at once
    /// ([`rules::due_at_creation`], while the service is not paused) gets
    /// its run in the same transaction, up to `claim.limit` of them claimed
    /// by `claim.instance` and returned.
    pub async fn job_insert_many(
        &self,
        jobs: &[NewJob],
        claim: &ClaimSlots,
    ) -> StoreResult<Vec<RunRow>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let at = now();
        let mut tx = self.write().await?;
        let paused: bool = sqlx::query_scalar("SELECT paused FROM service_state WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(false);
        // One statement for the jobs, one for the runs of those due now.
        // Each job's kwargs as JSON text, once: its row and its run take it.
        let kwargs: Vec<String> = jobs.iter().map(|job| json_text(&job.kwargs)).collect();
        let mut rows = Vec::with_capacity(jobs.len());
        let mut due_now = Vec::new();
        let mut earliest = None::<DateTime<Utc>>;
        for (job, kwargs) in jobs.iter().zip(&kwargs) {
            let due = !paused
                && rules::due_at_creation(
                    job.schedule_kind,
                    job.state,
                    job.next_run_at,
                    job.misfire_grace_ms,
                    at,
                );
            if due {
                due_now.push((job, kwargs));
            } else if let (JobState::Running, Some(t)) = (job.state, job.next_run_at) {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
            rows.push((job, due, kwargs));
        }
        for chunk in statement_chunks(&rows) {
            let mut insert = QueryBuilder::<Sqlite>::new(format!(
                "INSERT INTO jobs ({DEFINITION_COLUMNS}, failed_run_id, created_at, updated_at) "
            ));
            insert.push_values(chunk, |mut row, (job, due, kwargs)| {
                let next_run_at = if *due {
                    None
                } else {
                    opt_micros(job.next_run_at)
                };
                bind_definition_columns!(row, push_bind, job, kwargs.as_str(), next_run_at)
                    .push_bind(job.failed_run_id.map(|id| id.to_string()))
                    .push_bind(micros(at))
                    .push_bind(micros(at));
            });
            insert.build().execute(&mut *tx).await.map_err(|e| {
                conflict_on_unique(e, || match jobs {
                    [one] => format!("a job with job_id {:?} already exists", one.job_id),
                    _ => "one of the job_ids already exists; nothing was created".to_string(),
                })
            })?;
        }
        let mut claims = 0;
        let runs: Vec<RunInsert<'_>> = due_now
            .iter()
            .filter_map(|(job, kwargs)| {
                let claim_it = job.lock_key.is_none() && claims < claim.limit;
                claims += i64::from(claim_it);
                Some(RunInsert {
                    job_id: &job.job_id,
                    handler: &job.handler,
                    kwargs,
                    trigger: Trigger::Schedule,
                    scheduled_for: job.next_run_at?,
                    state: RunState::Queued,
                    reason: "due when created",
                    history_instance: Some(&claim.instance),
                    result: None,
                    max_retries: job.max_retries,
                    retry_backoff_ms: job.retry_backoff_ms,
                    timeout_ms: job.timeout_ms,
                    misfire_grace_ms: job.misfire_grace_ms,
                    lock_key: job.lock_key.as_deref(),
                    claim: claim_it.then_some((claim.instance.as_str(), claim.lease_ms)),
                })
            })
            .collect();
        let inserted = insert_runs(&mut tx, &runs, at, |s| s == RunState::Running).await?;
        let (claimed, left_queued) = (inserted.rows, inserted.queued);
        tx.commit().await?;
        self.send(&Notice {
            runs_queued: left_queued,
            ..Notice::fires_at(earliest)
        });
        Ok(claimed)
    }

    /// Replaces a job's definition if the row is still at `version`;
    /// `Stale` when another write came first. Runs and timestamps are kept.
    pub async fn job_replace(&self, job: &NewJob, version: i64) -> StoreResult<JobRow> {
        let mut tx = self.write().await?;
        let updated = bind_definition(
            sqlx::query(
                "UPDATE jobs SET handler = ?2, kwargs = ?3, schedule_kind = ?4, \
                 interval_ms = ?5, cron = ?6, timezone = ?7, start_at = ?8, misfire_grace_ms = ?9, \
                 \"coalesce\" = ?10, max_instances = ?11, lock_key = ?12, timeout_ms = ?13, \
                 max_retries = ?14, retry_backoff_ms = ?15, state = ?16, next_run_at = ?17, \
                 description = ?18, tags = ?19, source = ?20, keep_runs = ?21, notify = ?22, \
                 alerts = ?23, updated_at = ?24, version = version + 1 \
                 WHERE job_id = ?1 AND version = ?25",
            ),
            job,
        )
        .bind(micros(now()))
        .bind(version)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(self.job_missing_or_stale(&mut tx, &job.job_id).await);
        }
        tx.commit().await?;
        self.send(&Notice::fires_at(job.next_run_at));
        self.job_get(&job.job_id).await
    }

    /// Why a conditional write changed nothing: the job is gone, or it was
    /// written since it was read.
    async fn job_missing_or_stale(
        &self,
        tx: &mut super::execution::WriteTx,
        job_id: &str,
    ) -> StoreError {
        match sqlx::query_scalar::<_, i64>("SELECT 1 FROM jobs WHERE job_id = ?")
            .bind(job_id)
            .fetch_optional(&mut **tx)
            .await
        {
            Ok(Some(_)) => StoreError::Stale,
            Ok(None) => StoreError::NotFound,
            Err(e) => StoreError::Database(e),
        }
    }

    pub async fn job_get(&self, job_id: &str) -> StoreResult<JobRow> {
        let row = sqlx::query(&format!("{SELECT_JOB} WHERE j.job_id = ?"))
            .bind(job_id)
            .fetch_optional(&self.readers)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(job_from_row(&row)?)
    }

    /// One page of jobs, oldest first, and the number matching the filter.
    pub async fn job_list(&self, filter: &JobFilter) -> StoreResult<(Vec<JobRow>, i64)> {
        let mut count = QueryBuilder::new("SELECT count(*) FROM jobs j");
        push_job_filter(&mut count, filter);
        let total: i64 = count.build_query_scalar().fetch_one(&self.readers).await?;
        let mut page = QueryBuilder::new(SELECT_JOB);
        push_job_filter(&mut page, filter);
        page.push(" ORDER BY j.created_at, j.job_id LIMIT ")
            .push_bind(filter.limit)
            .push(" OFFSET ")
            .push_bind(filter.offset);
        let rows = page.build().fetch_all(&self.readers).await?;
        let jobs = rows
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((jobs, total))
    }

    /// Pauses or resumes a job if the row is still at `version` (`Stale`
    /// otherwise); a completed one-shot job is left alone.
    pub async fn job_set_state(
        &self,
        job_id: &str,
        state: JobState,
        next_run_at: Option<DateTime<Utc>>,
        version: i64,
    ) -> StoreResult<JobRow> {
        let mut tx = self.write().await?;
        let updated = sqlx::query(
            "UPDATE jobs SET state = ?, next_run_at = ?, updated_at = ?, version = version + 1 \
             WHERE job_id = ? AND version = ? AND state <> 'completed'",
        )
        .bind(state)
        .bind(opt_micros(next_run_at))
        .bind(micros(now()))
        .bind(job_id)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(self.job_missing_or_stale(&mut tx, job_id).await);
        }
        tx.commit().await?;
        self.send(&Notice::fires_at(next_run_at));
        self.job_get(job_id).await
    }

    /// Deletes a job and its runs. `NotFound` when there is none.
    pub async fn job_delete(&self, job_id: &str) -> StoreResult<()> {
        if self
            .jobs_delete_where("job_id = ?", job_id)
            .await?
            .is_empty()
        {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Deletes every failure record (and any run of one); returns how many.
    pub async fn job_delete_failed(&self) -> StoreResult<Vec<String>> {
        self.jobs_delete_where("handler = ?", ERROR_HANDLER).await
    }

    /// Deletes the jobs matching `condition` (on one bound value) and their
    /// runs; running runs are cancelled instead and removed when they end
    /// (see the PostgreSQL store).
    pub(super) async fn jobs_delete_where(
        &self,
        condition: &str,
        value: &str,
    ) -> StoreResult<Vec<String>> {
        let mut tx = self.write().await?;
        let job_ids: Vec<String> = sqlx::query_scalar(&format!(
            "DELETE FROM jobs WHERE {condition} RETURNING job_id"
        ))
        .bind(value)
        .fetch_all(&mut *tx)
        .await?;
        let mut running = Vec::new();
        if !job_ids.is_empty() {
            let ids = id_list(&job_ids);
            sqlx::query(
                "DELETE FROM runs WHERE job_id IN (SELECT value FROM json_each(?)) \
                 AND state <> 'running'",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
            let cancelled: Vec<String> = sqlx::query_scalar(
                "UPDATE runs SET cancel_requested = 1 \
                 WHERE job_id IN (SELECT value FROM json_each(?)) AND state = 'running' \
                 RETURNING run_id",
            )
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
            running = cancelled.iter().filter_map(|id| id.parse().ok()).collect();
        }
        tx.commit().await?;
        self.send(&Notice {
            cancel: running,
            ..Notice::default()
        });
        Ok(job_ids)
    }
}
