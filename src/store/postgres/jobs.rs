//! The `jobs` table: job definitions and their next fire time.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::events::{
    event_columns, events_cte, job_change_type, job_entries, run_entries, Appended,
};
use super::execution::{claimed_on_insert, inserted_claim_values, CLAIM_AT};
use super::notify::{self, Notice};
use super::runs::{history_entry_at, RUN_COLUMNS};
use super::{
    conflict_on_unique, ClaimSlots, JobFilter, JobRow, JobType, NewJob, PgStore, RunRow,
    StoreError, StoreResult,
};
use crate::domain::rules;
use crate::domain::{JobState, RunState};
use crate::handlers::ERROR_HANDLER;

pub(super) const SELECT_JOB: &str = "SELECT j.job_id, j.handler, j.kwargs, j.schedule_kind, j.interval_ms, j.cron, \
     j.timezone, j.start_at, j.misfire_grace_ms, j.coalesce, j.max_instances, j.lock_key, j.timeout_ms, \
     j.max_retries, j.retry_backoff_ms, j.state, j.next_run_at, j.description, j.tags, j.source, \
     j.failed_run_id, j.keep_runs, j.notify, j.alerts, j.created_at, j.updated_at, \
     ARRAY(SELECT jsonb_array_elements_text(a.state -> 'open') FROM job_alerts a WHERE a.job_id = j.job_id) AS alerts_open, \
     lr.run_id AS last_run_id, lr.state AS last_run_state, lr.scheduled_for AS last_run_scheduled_for, \
     lr.started_at AS last_run_started_at, lr.finished_at AS last_run_finished_at, \
     lr.progress AS last_run_progress, lr.progress_updated_at AS last_run_progress_updated_at, \
     (SELECT jsonb_object_agg(c.state, c.n) FROM \
        (SELECT rc.state, sum(rc.n)::int8 AS n FROM run_counts rc WHERE rc.job_id = j.job_id \
         GROUP BY rc.state HAVING sum(rc.n) <> 0 \
         UNION ALL SELECT a.state, count(*) FROM runs a \
         WHERE a.job_id = j.job_id AND a.state IN ('queued', 'running') GROUP BY a.state \
         UNION ALL SELECT w.state, count(*) FROM runs w \
         WHERE w.job_id = j.job_id AND w.state = 'waiting' GROUP BY w.state) c) AS run_counts, \
     EXISTS (SELECT 1 FROM runs s WHERE s.job_id = j.job_id AND s.trigger <> 'manual') AS has_fired, \
     j.xmin::text::int8 AS row_version \
     FROM jobs j LEFT JOIN LATERAL (SELECT r.run_id, r.state, r.scheduled_for, r.started_at, r.finished_at, \
        r.progress, r.progress_updated_at FROM runs r WHERE r.job_id = j.job_id ORDER BY r.created_at DESC, r.scheduled_for DESC, r.run_id DESC LIMIT 1) lr ON true";

fn push_job_filter(qb: &mut QueryBuilder<'_, Postgres>, filter: &JobFilter) {
    qb.push(" WHERE true");
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
    if let Some(state) = &filter.state {
        qb.push(" AND j.state = ").push_bind(*state);
    }
}

/// Binds a job definition's 22 columns as `$1`..`$22`: `job_id` ..
/// `source` in table order, then `keep_runs` and `notify` (added later), for statements
/// that write a whole definition.
pub(super) fn bind_definition<'q>(
    query: Query<'q, Postgres, PgArguments>,
    job: &'q NewJob,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(&job.job_id)
        .bind(&job.handler)
        .bind(&job.kwargs)
        .bind(job.schedule_kind)
        .bind(job.interval_ms)
        .bind(&job.cron)
        .bind(&job.timezone)
        .bind(job.start_at)
        .bind(job.misfire_grace_ms)
        .bind(job.coalesce)
        .bind(job.max_instances)
        .bind(&job.lock_key)
        .bind(job.timeout_ms)
        .bind(job.max_retries)
        .bind(job.retry_backoff_ms)
        .bind(job.state)
        .bind(job.next_run_at)
        .bind(&job.description)
        .bind(&job.tags)
        .bind(&job.source)
        .bind(job.keep_runs)
        .bind(&job.notify)
}

impl PgStore {
    /// Inserts jobs in one statement, all or none; `Conflict` naming the
    /// first `job_id` already taken. Wakes the schedulers of every replica.
    ///
    /// A one-shot job that is due already ([`rules::due_at_creation`]: its
    /// time has come, within its misfire grace; while the service runs)
    /// gets its run in the same
    /// statement, fired by `claim.instance`: exactly what the scheduler would
    /// do at once, without a second write to the job row and a scheduler
    /// round trip per job. Up to `claim.limit` of those runs (without a
    /// `lock_key`, whose check needs the claim lock) are inserted claimed by
    /// `claim.instance`, as [`PgStore::run_claim`] would claim them, and
    /// returned to be started; the others are queued for any replica.
    pub async fn job_insert_many(
        &self,
        jobs: &[NewJob],
        claim: &ClaimSlots,
    ) -> StoreResult<Vec<RunRow>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        fn col<T>(jobs: &[NewJob], f: impl Fn(&NewJob) -> T) -> Vec<T> {
            jobs.iter().map(f).collect()
        }
        // Which jobs are due now is decided by [`rules::due_at_creation`]
        // on the database clock, read just before the insert (only when a
        // job may be due at all): a job is due if its time had come by then.
        let due: Vec<bool> = if jobs
            .iter()
            .any(|j| rules::may_be_due_at_creation(j.schedule_kind, j.state, j.next_run_at))
        {
            let now = self.now().await?;
            col(jobs, |j| {
                rules::due_at_creation(
                    j.schedule_kind,
                    j.state,
                    j.next_run_at,
                    j.misfire_grace_ms,
                    now,
                )
            })
        } else {
            vec![false; jobs.len()]
        };
        // One statement, so one round trip and atomic without a transaction:
        // insert the jobs and the runs of those due now (and while the
        // service is not paused), and return those runs. The schedulers (the earliest new fire time of the jobs that
        // did not fire, as a `FireHint`) and the workers (runs were left
        // queued) are told after the commit, in one notification.
        let fired = sqlx::query_as::<_, RunRow>(&job_insert_many_sql())
            .bind(col(jobs, |j| j.job_id.clone()))
            .bind(col(jobs, |j| j.handler.clone()))
            .bind(col(jobs, |j| j.kwargs.clone()))
            .bind(col(jobs, |j| j.schedule_kind.as_str()))
            .bind(col(jobs, |j| j.interval_ms))
            .bind(col(jobs, |j| j.cron.clone()))
            .bind(col(jobs, |j| j.timezone.clone()))
            .bind(col(jobs, |j| j.start_at))
            .bind(col(jobs, |j| j.misfire_grace_ms))
            .bind(col(jobs, |j| j.coalesce))
            .bind(col(jobs, |j| j.max_instances))
            .bind(col(jobs, |j| j.lock_key.clone()))
            .bind(col(jobs, |j| j.timeout_ms))
            .bind(col(jobs, |j| j.max_retries))
            .bind(col(jobs, |j| j.retry_backoff_ms))
            .bind(col(jobs, |j| j.state.as_str()))
            .bind(col(jobs, |j| j.next_run_at))
            .bind(col(jobs, |j| j.description.clone()))
            .bind(col(jobs, |j| Value::from(j.tags.clone())))
            .bind(col(jobs, |j| j.source.clone()))
            .bind(col(jobs, |j| j.failed_run_id))
            .bind(&claim.instance)
            .bind(claim.limit)
            .bind(claim.lease_ms)
            // The id of each job's run, should it fire now (time-ordered, so
            // inserts land at the end of the index).
            .bind(col(jobs, |_| Uuid::now_v7()))
            .bind(&due)
            .bind(col(jobs, |j| j.keep_runs))
            .bind(col(jobs, |j| Value::from(j.notify.clone())))
            .bind(col(jobs, |j| sqlx::types::Json(j.alerts)))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| {
                conflict_on_unique(e, || match jobs {
                    [one] => format!("a job with job_id {:?} already exists", one.job_id),
                    _ => "one of the job_ids already exists; nothing was created".to_string(),
                })
            })?;
        let fired_ids: std::collections::HashSet<&str> =
            fired.iter().map(|r| r.job_id.as_str()).collect();
        let earliest = jobs
            .iter()
            .filter(|j| j.state == JobState::Running && !fired_ids.contains(j.job_id.as_str()))
            .filter_map(|j| j.next_run_at)
            .min();
        let (claimed, queued): (Vec<RunRow>, Vec<RunRow>) = fired
            .into_iter()
            .partition(|r| r.state == RunState::Running);
        self.notify(&Notice {
            runs_queued: !queued.is_empty(),
            ..Notice::fires_at(earliest)
        })
        .await?;
        Ok(claimed)
    }

    /// Replaces a job's definition (kwargs, schedule, policies, state) and
    /// its next fire time, if the row is still at `version` (as read):
    /// `Stale` when another write came first (the caller re-reads and
    /// re-applies its change), so a change never re-fires, loses or doubles
    /// a scheduled time. Runs and timestamps are kept.
    pub async fn job_replace(&self, job: &NewJob, version: i64) -> StoreResult<JobRow> {
        let updated = bind_definition(
            sqlx::query(&with_job_change_events(
                "SET handler = $2, kwargs = $3, schedule_kind = $4, interval_ms = $5, cron = $6, \
                 timezone = $7, start_at = $8, misfire_grace_ms = $9, coalesce = $10, \
                 max_instances = $11, lock_key = $12, timeout_ms = $13, max_retries = $14, \
                 retry_backoff_ms = $15, state = $16, next_run_at = $17, description = $18, \
                 tags = $19, source = $20, keep_runs = $21, notify = $22, alerts = $24, \
                 updated_at = now()",
                "j.job_id = $1 AND j.xmin = $23::int8::text::xid",
            )),
            job,
        )
        .bind(version)
        .bind(sqlx::types::Json(job.alerts))
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(self.job_missing_or_stale(&job.job_id).await);
        }
        // Only a running job has a next fire time (a CHECK keeps it so).
        self.notify(&Notice::fires_at(job.next_run_at)).await?;
        self.job_get(&job.job_id).await
    }

    /// Why a conditional write changed nothing: the job is gone, or it was
    /// written since it was read.
    async fn job_missing_or_stale(&self, job_id: &str) -> StoreError {
        match sqlx::query_scalar::<_, i32>("SELECT 1 FROM jobs WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await
        {
            Ok(Some(_)) => StoreError::Stale,
            Ok(None) => StoreError::NotFound,
            Err(e) => StoreError::Database(e),
        }
    }

    pub async fn job_get(&self, job_id: &str) -> StoreResult<JobRow> {
        sqlx::query_as::<_, JobRow>(&format!("{SELECT_JOB} WHERE j.job_id = $1"))
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// One page of jobs, oldest first, and the number matching the filter.
    pub async fn job_list(&self, filter: &JobFilter) -> StoreResult<(Vec<JobRow>, i64)> {
        let mut count = QueryBuilder::new("SELECT count(*) FROM jobs j");
        push_job_filter(&mut count, filter);
        let total: i64 = count.build_query_scalar().fetch_one(&self.pool).await?;

        let mut page = QueryBuilder::new(SELECT_JOB);
        push_job_filter(&mut page, filter);
        page.push(" ORDER BY j.created_at, j.job_id LIMIT ")
            .push_bind(filter.limit)
            .push(" OFFSET ")
            .push_bind(filter.offset);
        let jobs = page.build_query_as().fetch_all(&self.pool).await?;
        Ok((jobs, total))
    }

    /// Pauses or resumes a job, if the row is still at `version` (as read;
    /// `Stale` otherwise, see [`PgStore::job_replace`]). `next_run_at` is what
    /// the caller computed from the row it read (from now, on resume; none,
    /// on pause). A completed one-shot job is left alone: `Stale`.
    pub async fn job_set_state(
        &self,
        job_id: &str,
        state: JobState,
        next_run_at: Option<DateTime<Utc>>,
        version: i64,
    ) -> StoreResult<JobRow> {
        let updated = sqlx::query(&with_job_change_events(
            "SET state = $2, next_run_at = $3, updated_at = now()",
            "j.job_id = $1 AND j.xmin = $4::int8::text::xid AND j.state <> 'completed'",
        ))
        .bind(job_id)
        .bind(state)
        .bind(next_run_at)
        .bind(version)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(self.job_missing_or_stale(job_id).await);
        }
        self.notify(&Notice::fires_at(next_run_at)).await?;
        self.job_get(job_id).await
    }

    /// Deletes a job and its runs. `NotFound` when there is none.
    pub async fn job_delete(&self, job_id: &str) -> StoreResult<()> {
        if self
            .jobs_delete_where("job_id = $1", job_id)
            .await?
            .is_empty()
        {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Deletes every failure record (and any run of one); returns their ids.
    pub async fn job_delete_failed(&self) -> StoreResult<Vec<String>> {
        self.jobs_delete_where("handler = $1", ERROR_HANDLER).await
    }

    /// Deletes the jobs matching `condition` (on `$1`) and their runs.
    ///
    /// There is no foreign key from runs to jobs (migration 0003): every
    /// writer that inserts a run holds its job's row lock, so once the job
    /// rows are deleted (waiting for those writers), a second statement, with
    /// a fresh snapshot, sees every run they committed, and no new run can
    /// follow. Running runs are not deleted but cancelled: they keep their
    /// `lock_key` held until their handler has stopped, and are deleted when
    /// their outcome is written (or by the rescue, should their replica die).
    pub(super) async fn jobs_delete_where(
        &self,
        condition: &str,
        value: &str,
    ) -> StoreResult<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let job_ids: Vec<String> = sqlx::query_scalar(&format!(
            "WITH deleted AS (DELETE FROM jobs WHERE {condition} RETURNING job_id), {events} \
             SELECT job_id FROM deleted",
            events = events_cte(
                "job_events",
                &[job_entries(
                    0,
                    "deleted",
                    "'job.deleted'",
                    "statement_timestamp()",
                    "NULL",
                    "true"
                )]
            ),
        ))
        .bind(value)
        .fetch_all(&mut *tx)
        .await?;
        if !job_ids.is_empty() {
            sqlx::query("DELETE FROM runs WHERE job_id = ANY($1) AND state <> 'running'")
                .bind(&job_ids)
                .execute(&mut *tx)
                .await?;
            let running: Vec<Uuid> = sqlx::query_scalar(
                "UPDATE runs SET cancel_requested = true WHERE job_id = ANY($1) AND state = 'running' \
                 RETURNING run_id",
            )
            .bind(&job_ids)
            .fetch_all(&mut *tx)
            .await?;
            // A run that ended between the two statements above was kept
            // (it was running) and not flagged (it no longer was): this
            // statement's fresh snapshot sees it ended. One that ends later
            // waits for this transaction, sees its cancel request, and is
            // removed when its outcome is written.
            sqlx::query("DELETE FROM runs WHERE job_id = ANY($1) AND state <> 'running'")
                .bind(&job_ids)
                .execute(&mut *tx)
                .await?;
            notify::send(
                &mut *tx,
                &Notice {
                    cancel: running,
                    ..Notice::default()
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(job_ids)
    }
}

/// SQL: `UPDATE jobs j {set} WHERE {condition}` (over `j`), writing the
/// event of each job it changes in the same statement: the row's state
/// before the write is read by joining the row as the statement found it.
/// Executed, it reports the jobs it changed.
pub(super) fn with_job_change_events(set: &str, condition: &str) -> String {
    format!(
        "WITH changed AS (UPDATE jobs j {set} FROM jobs o WHERE o.job_id = j.job_id AND {condition} \
           RETURNING j.job_id, j.state, j.updated_at, o.state AS old_state), {events} \
         SELECT job_id FROM changed",
        events = events_cte(
            "job_events",
            &[job_entries(
                0,
                "changed",
                &job_change_type("c.old_state", "c.state"),
                "c.updated_at",
                "c.old_state",
                "true",
            )]
        ),
    )
}

/// The statement of [`PgStore::job_insert_many`] (its parameters are bound
/// there).
pub(crate) fn job_insert_many_sql() -> String {
    format!(
        "WITH input AS (SELECT u.*, \
           (u.due AND NOT (SELECT paused FROM service_state WHERE id = 1)) AS due_now \
         FROM UNNEST($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::int8[], $6::text[], \
           $7::text[], $8::timestamptz[], $9::int8[], $10::bool[], $11::int4[], $12::text[], \
           $13::int8[], $14::int4[], $15::int8[], $16::text[], $17::timestamptz[], $18::text[], \
           $19::jsonb[], $20::text[], $21::uuid[], $25::uuid[], $26::bool[], $27::int4[], $28::jsonb[], $29::jsonb[]) WITH ORDINALITY \
         AS u(job_id, handler, kwargs, schedule_kind, interval_ms, cron, timezone, start_at, \
           misfire_grace_ms, coalesce, max_instances, lock_key, timeout_ms, max_retries, \
           retry_backoff_ms, state, next_run_at, description, tags, source, failed_run_id, run_id, due, \
           keep_runs, notify, alerts, ord)), \
         firing AS (SELECT u.*, {claim} AS claim FROM input u WHERE u.due_now), \
         inserted AS (INSERT INTO jobs (job_id, handler, kwargs, schedule_kind, interval_ms, cron, timezone, \
         start_at, misfire_grace_ms, coalesce, max_instances, lock_key, timeout_ms, max_retries, \
         retry_backoff_ms, state, next_run_at, description, tags, source, failed_run_id, keep_runs, notify, alerts) \
         SELECT u.job_id, u.handler, u.kwargs, u.schedule_kind, u.interval_ms, u.cron, u.timezone, \
         u.start_at, u.misfire_grace_ms, u.coalesce, u.max_instances, u.lock_key, u.timeout_ms, \
         u.max_retries, u.retry_backoff_ms, u.state, CASE WHEN u.due_now THEN NULL ELSE u.next_run_at END, \
         u.description, ARRAY(SELECT jsonb_array_elements_text(u.tags)), u.source, u.failed_run_id, \
         u.keep_runs, ARRAY(SELECT jsonb_array_elements_text(u.notify)), u.alerts FROM input u \
         RETURNING job_id, created_at), \
         fired AS (INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after, \
           state, attempt, started_at, instance, lease_expires_at, history, \
           max_retries, retry_backoff_ms, timeout_ms, misfire_grace_ms, lock_key) \
         SELECT u.run_id, u.job_id, u.handler, u.kwargs, 'schedule', u.next_run_at, {CLAIM_AT}, \
           {claimed_values}, \
           u.max_retries, u.retry_backoff_ms, u.timeout_ms, u.misfire_grace_ms, u.lock_key \
         FROM firing u \
         RETURNING {columns}, {event_columns}), {events} \
         SELECT {columns} FROM fired",
        claim = claimed_on_insert("u.lock_key IS NULL", "u.ord", "$23"),
        claimed_values = inserted_claim_values(
            "u.claim",
            "'queued'",
            "$22::text",
            "$24",
            &history_entry_at(
                CLAIM_AT,
                "NULL",
                "'queued'",
                "$22::text",
                "'due when created'"
            )
        ),
        columns = RUN_COLUMNS,
        event_columns = event_columns("runs"),
        events = events_cte(
            "written_events",
            &[
                job_entries(0, "inserted", "'job.created'", "c.created_at", "NULL", "true"),
                run_entries(1, "fired", Appended::All, false),
            ]
        ),
    )
}
