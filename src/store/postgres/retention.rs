//! Pruning for bounded history (src/retention/ decides what is kept).
//!
//! Every delete picks its rows with `FOR UPDATE SKIP LOCKED` in a bounded
//! subquery: a row another transaction is changing (a run being re-queued,
//! a job getting a manual run) is skipped, not waited for, and a locked row
//! is re-checked against the condition on its newest version, so a run that
//! became active meanwhile is never deleted. Two replicas pruning at once
//! delete disjoint rows.

use chrono::{DateTime, Utc};

use super::{PgStore, StoreResult};
use crate::domain::RunState;
use crate::handlers::ERROR_HANDLER;

fn names(states: &[RunState]) -> Vec<&'static str> {
    states.iter().map(|s| s.as_str()).collect()
}

impl PgStore {
    pub async fn runs_prune_finished_before(
        &self,
        cutoff: DateTime<Utc>,
        states: &[RunState],
        limit: i64,
    ) -> StoreResult<u64> {
        // `created_at < cutoff` (implied, as a run ends after it is made)
        // lets the oldest runs be found on `runs_created_idx`.
        let deleted = sqlx::query(
            "DELETE FROM runs WHERE run_id IN ( \
               SELECT r.run_id FROM runs r \
               WHERE r.created_at < $1 AND COALESCE(r.finished_at, r.created_at) < $1 \
                 AND r.state = ANY($2) \
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = r.job_id AND j.keep_runs IS NOT NULL) \
               ORDER BY r.created_at LIMIT $3 FOR UPDATE OF r SKIP LOCKED) \
             AND state = ANY($2)",
        )
        .bind(cutoff)
        .bind(names(states))
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    pub async fn jobs_keeping_runs(&self) -> StoreResult<Vec<(String, i32)>> {
        Ok(sqlx::query_as(
            "SELECT job_id, keep_runs FROM jobs WHERE keep_runs IS NOT NULL ORDER BY job_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn runs_prune_beyond_newest(
        &self,
        job_id: &str,
        keep: i32,
        states: &[RunState],
        limit: i64,
    ) -> StoreResult<u64> {
        // A locked run among the newest is skipped and not counted in the
        // OFFSET: then one more is kept, never one fewer.
        let deleted = sqlx::query(
            "DELETE FROM runs WHERE run_id IN ( \
               SELECT run_id FROM runs WHERE job_id = $1 AND state = ANY($2) \
               ORDER BY created_at DESC, run_id DESC OFFSET $3 LIMIT $4 FOR UPDATE SKIP LOCKED) \
             AND state = ANY($2)",
        )
        .bind(job_id)
        .bind(names(states))
        .bind(i64::from(keep))
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    pub async fn jobs_prune_completed_without_runs(&self, limit: i64) -> StoreResult<u64> {
        // Deleted as `DELETE /jobs/{id}` deletes (runs too): a manual run
        // committed after this statement's snapshot but before its lock
        // goes with its job, never stays behind without one.
        let deleted = self
            .jobs_delete_where(
                &format!(
                    "job_id IN (SELECT j.job_id FROM jobs j \
                     WHERE j.state = 'completed' AND j.schedule_kind = 'once' AND j.handler <> $1 \
                       AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.job_id = j.job_id) \
                     LIMIT {limit} FOR UPDATE SKIP LOCKED) AND state = 'completed'"
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
                     WHERE handler = '{ERROR_HANDLER}' AND created_at < $1::timestamptz \
                     ORDER BY created_at LIMIT {limit} FOR UPDATE SKIP LOCKED)"
                ),
                &cutoff.to_rfc3339(),
            )
            .await?;
        Ok(deleted.len() as u64)
    }
}
