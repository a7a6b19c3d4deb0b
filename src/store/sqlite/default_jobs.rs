//! Default-job files' jobs on the embedded store (see the PostgreSQL
//! store's module of the same name for the contract). With one writer, the
//! upsert's transaction alone makes concurrent loaders safe: it is a
//! `BEGIN IMMEDIATE` transaction, so it reads the row, asks `plan`, and
//! writes with no other write in between (no advisory or row lock needed).

use sqlx::{QueryBuilder, Sqlite};

use super::jobs::DEFINITION_COLUMNS;
use super::rows::{self, job_from_row, SELECT_JOB};
use super::{FileJobPlan, FileJobRow, FileUpsertResult, SqliteStore, StoreResult};
use crate::domain::JobState;
use crate::store::notify::{FireHint, Notice};
use crate::store::StoreError;

/// Pauses the selected file jobs (a completed one-shot job stays completed)
/// and marks them as no longer backed by a file: `RELEASE_SET`, the time of
/// the write, then `RELEASE_WHERE` and further conditions.
const RELEASE_SET: &str = "UPDATE jobs SET \
     state = CASE WHEN state = 'completed' THEN state ELSE 'paused' END, \
     next_run_at = NULL, file_state = NULL, updated_at = ";
const RELEASE_WHERE: &str = ", version = version + 1 WHERE file_state IS NOT NULL";

impl SqliteStore {
    /// Inserts or updates the job `job_id` as a default-jobs file defines it
    /// (see [`crate::store::PgStore::job_upsert_from_file`]): `plan` sees the
    /// stored job (or `None`) inside the write transaction and decides. A
    /// written job's other jobs from the same file (`source`) are released
    /// as by [`SqliteStore::job_release_files`].
    pub async fn job_upsert_from_file(
        &self,
        job_id: &str,
        plan: impl FnOnce(Option<&FileJobRow>) -> FileJobPlan,
    ) -> StoreResult<FileUpsertResult> {
        let mut tx = self.write().await?;
        let file_state: Option<Option<JobState>> =
            sqlx::query_scalar("SELECT file_state FROM jobs WHERE job_id = ?1")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
        let existing = match file_state {
            None => None,
            Some(file_state) => {
                let row = sqlx::query(&format!("{SELECT_JOB} WHERE j.job_id = ?1"))
                    .bind(job_id)
                    .fetch_one(&mut *tx)
                    .await?;
                Some(FileJobRow {
                    row: job_from_row(&row)?,
                    file_state,
                })
            }
        };
        let (job, file_state) = match plan(existing.as_ref()).into_write(job_id) {
            Ok(write) => write,
            Err(answer) => return answer,
        };
        let now = rows::micros(super::now());
        // The same columns as `job_insert` and `job_replace`, plus
        // `file_state`; an update keeps `failed_run_id` and `created_at`,
        // and bumps the row version.
        super::jobs::bind_definition(
            sqlx::query(&format!(
                "INSERT INTO jobs ({DEFINITION_COLUMNS}, failed_run_id, file_state, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
             ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?26) \
             ON CONFLICT (job_id) DO UPDATE SET handler = excluded.handler, kwargs = excluded.kwargs, \
             schedule_kind = excluded.schedule_kind, interval_ms = excluded.interval_ms, \
             cron = excluded.cron, timezone = excluded.timezone, start_at = excluded.start_at, \
             misfire_grace_ms = excluded.misfire_grace_ms, \"coalesce\" = excluded.\"coalesce\", \
             max_instances = excluded.max_instances, lock_key = excluded.lock_key, \
             timeout_ms = excluded.timeout_ms, max_retries = excluded.max_retries, \
             retry_backoff_ms = excluded.retry_backoff_ms, state = excluded.state, \
             next_run_at = excluded.next_run_at, description = excluded.description, \
             tags = excluded.tags, source = excluded.source, keep_runs = excluded.keep_runs, \
             notify = excluded.notify, alerts = excluded.alerts, \
             file_state = excluded.file_state, \
             updated_at = excluded.updated_at, version = jobs.version + 1"
            )),
            &job,
        )
        .bind(job.failed_run_id.map(|id| id.to_string()))
        .bind(file_state.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let released: Vec<String> = sqlx::query_scalar(&format!(
            "{RELEASE_SET}?1{RELEASE_WHERE} AND source = ?2 AND job_id <> ?3 RETURNING job_id"
        ))
        .bind(now)
        .bind(&job.source)
        .bind(job_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        self.send(&Notice::jobs(FireHint::Recheck));
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
        let mut tx = self.write().await?;
        let mut query = QueryBuilder::<Sqlite>::new(RELEASE_SET);
        query
            .push_bind(rows::micros(super::now()))
            .push(RELEASE_WHERE)
            .push(" AND substr(source, 1, length(")
            .push_bind(dir_prefix)
            .push(")) = ")
            .push_bind(dir_prefix);
        if !present.is_empty() {
            query.push(" AND source NOT IN (");
            let mut list = query.separated(", ");
            for path in present {
                list.push_bind(path);
            }
            query.push(")");
        }
        query.push(" RETURNING job_id");
        let released: Vec<String> = query.build_query_scalar().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        if !released.is_empty() {
            self.send(&Notice::jobs(FireHint::Recheck));
        }
        Ok(released)
    }

    /// The `state` a job's file declared when last applied (`None` when no
    /// file backs it); `NotFound` when there is no such job.
    pub async fn job_file_state(&self, job_id: &str) -> StoreResult<Option<JobState>> {
        sqlx::query_scalar::<_, Option<JobState>>("SELECT file_state FROM jobs WHERE job_id = ?1")
            .bind(job_id)
            .fetch_optional(&self.readers)
            .await?
            .ok_or(StoreError::NotFound)
    }
}
