//! `jobsd copy` on PostgreSQL: runs inserted as they are, and the parts of
//! a job row its definition does not carry (see `crate::store::copy`).

use std::collections::BTreeSet;

use super::notify::{self, Notice};
use super::runs::RUN_COLUMNS;
use super::{PgStore, RunRow, StoreResult};
use crate::domain::RunState;
use crate::store::copy::JobImportMeta;

impl PgStore {
    /// See [`crate::store::Store::run_import`]. The runs' jobs are row
    /// locked first, as by every statement that inserts runs: a job deleted
    /// meanwhile takes its runs along, and slot counts stay exact.
    pub async fn run_import(&self, runs: &[RunRow]) -> StoreResult<u64> {
        if runs.is_empty() {
            return Ok(0);
        }
        fn col<T>(runs: &[RunRow], f: impl Fn(&RunRow) -> T) -> Vec<T> {
            runs.iter().map(f).collect()
        }
        let job_ids: Vec<String> = runs
            .iter()
            .map(|r| r.job_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1 FROM jobs WHERE job_id = ANY($1) ORDER BY job_id FOR UPDATE")
            .bind(&job_ids)
            .execute(&mut *tx)
            .await?;
        let inserted: Vec<RunState> = sqlx::query_scalar(&format!(
            "INSERT INTO runs ({RUN_COLUMNS}) \
             SELECT u.* FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[], \
               $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], \
               $10::timestamptz[], $11::text[], $12::int4[], $13::int4[], $14::int8[], $15::int8[], \
               $16::int8[], $17::text[], $18::text[], $19::timestamptz[], $20::bool[], $21::jsonb[], \
               $22::text[], $23::text[], $24::jsonb[], $25::timestamptz[], $26::jsonb[]) \
             AS u({RUN_COLUMNS}) \
             WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = u.job_id) \
             ON CONFLICT DO NOTHING RETURNING state"
        ))
        .bind(col(runs, |r| r.run_id))
        .bind(col(runs, |r| r.job_id.clone()))
        .bind(col(runs, |r| r.handler.clone()))
        .bind(col(runs, |r| r.kwargs.clone()))
        .bind(col(runs, |r| r.trigger.as_str()))
        .bind(col(runs, |r| r.scheduled_for))
        .bind(col(runs, |r| r.run_after))
        .bind(col(runs, |r| r.created_at))
        .bind(col(runs, |r| r.started_at))
        .bind(col(runs, |r| r.finished_at))
        .bind(col(runs, |r| r.state.as_str()))
        .bind(col(runs, |r| r.attempt))
        .bind(col(runs, |r| r.max_retries))
        .bind(col(runs, |r| r.retry_backoff_ms))
        .bind(col(runs, |r| r.timeout_ms))
        .bind(col(runs, |r| r.misfire_grace_ms))
        .bind(col(runs, |r| r.lock_key.clone()))
        .bind(col(runs, |r| r.instance.clone()))
        .bind(col(runs, |r| r.lease_expires_at))
        .bind(col(runs, |r| r.cancel_requested))
        .bind(col(runs, |r| r.result.clone()))
        .bind(col(runs, |r| r.error.clone()))
        .bind(col(runs, |r| r.traceback.clone()))
        .bind(col(runs, |r| r.progress.clone()))
        .bind(col(runs, |r| r.progress_updated_at))
        .bind(col(runs, |r| r.history.clone()))
        .fetch_all(&mut *tx)
        .await?;
        if inserted.contains(&RunState::Queued) {
            notify::send(&mut *tx, &Notice::runs_queued()).await?;
        }
        tx.commit().await?;
        Ok(inserted.len() as u64)
    }

    /// See [`crate::store::Store::job_import_meta`].
    pub async fn job_import_meta(&self, jobs: &[JobImportMeta]) -> StoreResult<u64> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let updated = sqlx::query(
            "UPDATE jobs j SET created_at = u.created_at, updated_at = u.updated_at, \
             file_state = u.file_state \
             FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[]) \
             AS u(job_id, created_at, updated_at, file_state) WHERE j.job_id = u.job_id",
        )
        .bind(jobs.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.created_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.updated_at).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.file_state.map(|s| s.as_str()))
                .collect::<Vec<_>>(),
        )
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected())
    }
}
