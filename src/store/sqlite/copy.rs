//! `jobsd copy` and `jobsd backup` on the embedded store: runs inserted as
//! they are, the parts of a job row its definition does not carry (see
//! `crate::store::copy`), and what the commands check before they start.

use std::path::PathBuf;

use super::rows::{self, RUN_COLUMNS};
use super::{Notice, RunRow, SqliteStore, StoreResult};
use crate::domain::RunState;
use crate::store::copy::JobImportMeta;

impl SqliteStore {
    /// The file a `sqlite:` URL names (`sqlite://PATH`, `sqlite:PATH`), if
    /// it names one.
    pub fn file_of(url: &str) -> Option<PathBuf> {
        super::connect::sqlite_path(url)
    }

    /// Whether jobsd's migrations were ever applied to this file (a file
    /// just created, or an empty one, has none).
    pub async fn has_schema(&self) -> StoreResult<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&self.readers)
        .await?)
    }

    /// See [`crate::store::Store::run_import`]: one write transaction.
    pub async fn run_import(&self, runs: &[RunRow]) -> StoreResult<u64> {
        if runs.is_empty() {
            return Ok(0);
        }
        let placeholders = (1..=26).map(|i| format!("?{i}")).collect::<Vec<_>>();
        // `WHERE` keeps the upsert clause unambiguous after a SELECT.
        let sql = format!(
            "INSERT INTO runs ({RUN_COLUMNS}) SELECT {} \
             WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = ?2) ON CONFLICT DO NOTHING",
            placeholders.join(", ")
        );
        let mut tx = self.write().await?;
        let mut inserted = 0;
        let mut queued = false;
        for r in runs {
            let done = sqlx::query(&sql)
                .bind(r.run_id.to_string())
                .bind(&r.job_id)
                .bind(&r.handler)
                .bind(rows::json_text(&r.kwargs))
                .bind(r.trigger.as_str())
                .bind(rows::micros(r.scheduled_for))
                .bind(rows::micros(r.run_after))
                .bind(rows::micros(r.created_at))
                .bind(rows::opt_micros(r.started_at))
                .bind(rows::opt_micros(r.finished_at))
                .bind(r.state.as_str())
                .bind(r.attempt)
                .bind(r.max_retries)
                .bind(r.retry_backoff_ms)
                .bind(r.timeout_ms)
                .bind(r.misfire_grace_ms)
                .bind(&r.lock_key)
                .bind(&r.instance)
                .bind(rows::opt_micros(r.lease_expires_at))
                .bind(r.cancel_requested)
                .bind(rows::opt_json_text(r.result.as_ref()))
                .bind(&r.error)
                .bind(&r.traceback)
                .bind(rows::opt_json_text(r.progress.as_ref()))
                .bind(rows::opt_micros(r.progress_updated_at))
                .bind(rows::json_text(&r.history))
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() > 0 {
                inserted += 1;
                queued |= r.state == RunState::Queued;
            }
        }
        tx.commit().await?;
        if queued {
            self.send(&Notice::runs_queued());
        }
        Ok(inserted)
    }

    /// See [`crate::store::Store::job_import_meta`].
    pub async fn job_import_meta(&self, jobs: &[JobImportMeta]) -> StoreResult<u64> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut tx = self.write().await?;
        let mut updated = 0;
        for job in jobs {
            updated += sqlx::query(
                "UPDATE jobs SET created_at = ?2, updated_at = ?3, file_state = ?4, \
                 version = version + 1 WHERE job_id = ?1",
            )
            .bind(&job.job_id)
            .bind(rows::micros(job.created_at))
            .bind(rows::micros(job.updated_at))
            .bind(job.file_state.map(|s| s.as_str()))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(updated)
    }
}
