//! Pruning for bounded history on the embedded store (see the PostgreSQL
//! store; src/retention/ decides what is kept). With one writer, each
//! bounded delete is its own short write transaction and cannot race.

use chrono::{DateTime, Utc};

use super::execution::id_list;
use super::rows::micros;
use super::{SqliteStore, StoreResult};
use crate::domain::RunState;
use crate::handlers::ERROR_HANDLER;

fn names(states: &[RunState]) -> String {
    id_list(states.iter().map(|s| s.as_str()))
}

impl SqliteStore {
    pub async fn runs_prune_finished_before(
        &self,
        cutoff: DateTime<Utc>,
        states: &[RunState],
        limit: i64,
    ) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        // `created_at < cutoff` (implied) finds the oldest on runs_created_idx.
        let deleted = sqlx::query(
            "DELETE FROM runs WHERE run_id IN ( \
               SELECT r.run_id FROM runs r \
               WHERE r.created_at < ?1 AND COALESCE(r.finished_at, r.created_at) < ?1 \
                 AND r.state IN (SELECT value FROM json_each(?2)) \
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = r.job_id AND j.keep_runs IS NOT NULL) \
               ORDER BY r.created_at LIMIT ?3)",
        )
        .bind(micros(cutoff))
        .bind(names(states))
        .bind(limit)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected())
    }

    pub async fn jobs_keeping_runs(&self) -> StoreResult<Vec<(String, i32)>> {
        Ok(sqlx::query_as(
            "SELECT job_id, keep_runs FROM jobs WHERE keep_runs IS NOT NULL ORDER BY job_id",
        )
        .fetch_all(&self.readers)
        .await?)
    }

    pub async fn runs_prune_beyond_newest(
        &self,
        job_id: &str,
        keep: i32,
        states: &[RunState],
        limit: i64,
    ) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        let deleted = sqlx::query(
            "DELETE FROM runs WHERE run_id IN ( \
               SELECT run_id FROM runs WHERE job_id = ?1 AND state IN (SELECT value FROM json_each(?2)) \
               ORDER BY created_at DESC, run_id DESC LIMIT ?4 OFFSET ?3)",
        )
        .bind(job_id)
        .bind(names(states))
        .bind(i64::from(keep))
        .bind(limit)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected())
    }

    pub async fn jobs_prune_completed_without_runs(&self, limit: i64) -> StoreResult<u64> {
        let deleted = self
            .jobs_delete_where(
                &format!(
                    "job_id IN (SELECT j.job_id FROM jobs j \
                     WHERE j.state = 'completed' AND j.schedule_kind = 'once' AND j.handler <> ? \
                       AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.job_id = j.job_id) \
                     LIMIT {limit})"
                ),
                ERROR_HANDLER,
            )
            .await?;
        Ok(deleted.len() as u64)
    }

    pub async fn jobs_prune_failure_records_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<u64> {
        let deleted = self
            .jobs_delete_where(
                &format!(
                    "job_id IN (SELECT job_id FROM jobs \
                     WHERE handler = '{ERROR_HANDLER}' AND created_at < CAST(? AS INTEGER) \
                     ORDER BY created_at LIMIT {limit})"
                ),
                &micros(cutoff).to_string(),
            )
            .await?;
        Ok(deleted.len() as u64)
    }
}
