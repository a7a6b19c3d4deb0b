//! The `jobs` rows that default-job YAML files own (`crate::default_jobs`).
//!
//! A file's job is written by [`PgStore::job_upsert_from_file`] only, and a
//! job whose file is gone is let go by [`PgStore::job_release_files`]. Both
//! are safe when any number of replicas load the same directory at once:
//!
//! - the upsert holds a transaction-scoped advisory lock on the job id
//!   (two replicas creating the same new job wait for each other instead of
//!   racing into a unique violation) and a row lock on an existing job (so
//!   an API pause/resume cannot interleave), reads the current row, asks the
//!   caller's pure `plan` what to write, and writes it in the same
//!   transaction;
//! - releasing only touches jobs still marked as backed by a file
//!   (`file_state IS NOT NULL`) and clears that mark, so each job is paused
//!   once when its file goes, never again on later scans or restarts.
//!
//! Every transaction that writes or releases jobs sends one notice to the
//! schedulers.

use super::events::{events_cte, job_change_type, job_entries};
use super::jobs::{with_job_change_events, SELECT_JOB};
use super::notify::{self, FireHint, Notice};
use super::{FileJobPlan, FileJobRow, FileUpsertResult, JobRow, PgStore, StoreResult};
use crate::domain::JobState;

/// First key of the advisory locks taken per job id (`'jobs'` in ASCII).
const LOCK_NAMESPACE: i32 = 0x6a6f_6273;

/// Pauses the file jobs (of `j`) that `condition` selects (a completed
/// one-shot job stays completed) and marks them as no longer backed by a
/// file. Returns their ids.
fn release_sql(condition: &str) -> String {
    with_job_change_events(
        "SET state = CASE WHEN j.state = 'completed' THEN j.state ELSE 'paused' END, \
         next_run_at = NULL, file_state = NULL, updated_at = now()",
        &format!("j.file_state IS NOT NULL AND {condition}"),
    )
}

impl PgStore {
    /// Inserts or updates the job `job_id` as a default-jobs file defines it.
    /// `plan` sees the stored job (or `None`) and decides; it runs inside the
    /// transaction, under the locks described in the module header, so two
    /// replicas never both insert, and a write is never based on a stale row.
    /// A written job's other jobs from the same file (`source`) are released
    /// as by [`PgStore::job_release_files`].
    pub async fn job_upsert_from_file(
        &self,
        job_id: &str,
        plan: impl FnOnce(Option<&FileJobRow>) -> FileJobPlan,
    ) -> StoreResult<FileUpsertResult> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_NAMESPACE)
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        let file_state: Option<Option<JobState>> =
            sqlx::query_scalar("SELECT file_state FROM jobs WHERE job_id = $1 FOR UPDATE")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
        let existing = match file_state {
            None => None,
            Some(file_state) => {
                let row = sqlx::query_as::<_, JobRow>(&format!("{SELECT_JOB} WHERE j.job_id = $1"))
                    .bind(job_id)
                    .fetch_one(&mut *tx)
                    .await?;
                Some(FileJobRow { row, file_state })
            }
        };
        let (job, file_state) = match plan(existing.as_ref()).into_write(job_id) {
            Ok(write) => write,
            Err(answer) => return answer,
        };
        // The same columns as `job_insert` and `job_replace`, plus `file_state`.
        let old_state = existing.as_ref().map(|e| e.row.state);
        super::jobs::bind_definition(sqlx::query(&format!(
            "WITH written AS (INSERT INTO jobs (job_id, handler, kwargs, schedule_kind, interval_ms, cron, timezone, \
             start_at, misfire_grace_ms, coalesce, max_instances, lock_key, timeout_ms, max_retries, \
             retry_backoff_ms, state, next_run_at, description, tags, source, keep_runs, notify, \
             failed_run_id, file_state, alerts) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$26) \
             ON CONFLICT (job_id) DO UPDATE SET handler = EXCLUDED.handler, kwargs = EXCLUDED.kwargs, \
             schedule_kind = EXCLUDED.schedule_kind, interval_ms = EXCLUDED.interval_ms, \
             cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, start_at = EXCLUDED.start_at, \
             misfire_grace_ms = EXCLUDED.misfire_grace_ms, coalesce = EXCLUDED.coalesce, \
             max_instances = EXCLUDED.max_instances, lock_key = EXCLUDED.lock_key, \
             timeout_ms = EXCLUDED.timeout_ms, max_retries = EXCLUDED.max_retries, \
             retry_backoff_ms = EXCLUDED.retry_backoff_ms, state = EXCLUDED.state, \
             next_run_at = EXCLUDED.next_run_at, description = EXCLUDED.description, \
             tags = EXCLUDED.tags, source = EXCLUDED.source, keep_runs = EXCLUDED.keep_runs, \
             notify = EXCLUDED.notify, alerts = EXCLUDED.alerts, file_state = EXCLUDED.file_state, updated_at = now() \
             RETURNING job_id, state, updated_at), {events} \
             SELECT count(*) FROM written",
            // `$25`: the state the job had, read under the lock (none: new).
            events = events_cte(
                "job_events",
                &[job_entries(
                    0,
                    "written",
                    &format!(
                        "CASE WHEN $25::text IS NULL THEN 'job.created' ELSE {} END",
                        job_change_type("$25::text", "c.state")
                    ),
                    "c.updated_at",
                    "$25::text",
                    "true"
                )]
            ),
        )), &job)
        .bind(job.failed_run_id)
        .bind(file_state)
        .bind(old_state)
        .bind(sqlx::types::Json(job.alerts))
        .execute(&mut *tx)
        .await?;
        let released: Vec<String> =
            sqlx::query_scalar(&release_sql("j.source = $1 AND j.job_id <> $2"))
                .bind(&job.source)
                .bind(job_id)
                .fetch_all(&mut *tx)
                .await?;
        notify::send(&mut *tx, &Notice::jobs(FireHint::Recheck)).await?;
        tx.commit().await?;
        Ok(FileUpsertResult::new(existing.is_some(), released))
    }

    /// Lets go of the jobs whose file, in the directory `dir_prefix` (a path
    /// ending in `/`), is not among `present` (full paths): each is paused
    /// (a completed one-shot job stays completed) and no longer marked as
    /// backed by a file, so this happens once per removal. Returns their ids.
    pub async fn job_release_files(
        &self,
        dir_prefix: &str,
        present: &[String],
    ) -> StoreResult<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let released: Vec<String> = sqlx::query_scalar(&release_sql(
            "starts_with(j.source, $1) AND NOT (j.source = ANY($2))",
        ))
        .bind(dir_prefix)
        .bind(present)
        .fetch_all(&mut *tx)
        .await?;
        if !released.is_empty() {
            notify::send(&mut *tx, &Notice::jobs(FireHint::Recheck)).await?;
        }
        tx.commit().await?;
        Ok(released)
    }

    /// The `state` a job's file declared when last applied (`None` when no
    /// file backs it); `NotFound` when there is no such job.
    pub async fn job_file_state(&self, job_id: &str) -> StoreResult<Option<JobState>> {
        sqlx::query_scalar::<_, Option<JobState>>("SELECT file_state FROM jobs WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(super::StoreError::NotFound)
    }
}
