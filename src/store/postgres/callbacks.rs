//! Remote completion's statements on PostgreSQL (see `crate::callbacks`).
//!
//! Fencing as everywhere: each write demands the run still `running` at
//! the attempt it names (and, for the waiting mark, the claiming
//! instance), and reports whether it took effect.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::FromRow;
use uuid::Uuid;

use super::events::progress_events_cte;
use super::runs::{history_entry, RUN_COLUMNS};
use super::{PgStore, RunClaim, RunRow, StoreError, StoreResult};
use crate::callbacks::rules::TokenOwner;
use crate::store::callbacks::CallbackRun;

#[derive(FromRow)]
struct Row {
    #[sqlx(flatten)]
    run: RunRow,
    callback_attempt: Option<i32>,
    callback_deadline: Option<DateTime<Utc>>,
}

impl From<Row> for CallbackRun {
    fn from(r: Row) -> Self {
        CallbackRun {
            run: r.run,
            callback_attempt: r.callback_attempt,
            callback_deadline: r.callback_deadline,
        }
    }
}

/// The fence of a write to a running run `r` (see `RUNNING` in
/// `execution.rs`: no partial index on `state` may serve as the path).
const RUNNING: &str = "(r.state = 'running') IS TRUE";

impl PgStore {
    pub async fn callback_token_insert(
        &self,
        hash: &str,
        run_id: Uuid,
        attempt: i32,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO callback_tokens (token_hash, run_id, attempt) VALUES ($1, $2, $3)",
        )
        .bind(hash)
        .bind(run_id)
        .bind(attempt)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn callback_token_owner(&self, hash: &str) -> StoreResult<Option<TokenOwner>> {
        let row: Option<(Uuid, i32)> =
            sqlx::query_as("SELECT run_id, attempt FROM callback_tokens WHERE token_hash = $1")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(run_id, attempt)| TokenOwner { run_id, attempt }))
    }

    pub async fn callback_run_get(&self, run_id: Uuid) -> StoreResult<CallbackRun> {
        sqlx::query_as::<_, Row>(&format!(
            "SELECT {RUN_COLUMNS}, callback_attempt, callback_deadline FROM runs WHERE run_id = $1"
        ))
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?
        .map(CallbackRun::from)
        .ok_or(StoreError::NotFound)
    }

    pub async fn run_await_callback(
        &self,
        claim: &RunClaim,
        deadline: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<bool> {
        let done = sqlx::query(&format!(
            "UPDATE runs r SET callback_attempt = r.attempt, callback_deadline = $4, \
             lease_expires_at = NULL, history = r.history || {} \
             WHERE r.run_id = $1 AND {RUNNING} AND r.attempt = $2 AND r.instance = $3",
            history_entry("'running'", "'running'", "$3::text", "$5::text")
        ))
        .bind(claim.run_id)
        .bind(claim.attempt)
        .bind(&claim.instance)
        .bind(deadline)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn run_callback_progress(
        &self,
        run_id: Uuid,
        attempt: i32,
        progress: &Value,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(&format!(
            "WITH changed AS (UPDATE runs r SET progress = $3, progress_updated_at = now() \
             WHERE r.run_id = $1 AND {RUNNING} AND r.attempt = $2 \
             RETURNING r.progress_updated_at, r.run_id, r.attempt, r.job_id AS ev_job, \
               r.instance AS ev_instance, r.progress_updated_at AS ev_at), {events} \
             SELECT progress_updated_at FROM changed",
            events = progress_events_cte("changed", "true"),
        ))
        .bind(run_id)
        .bind(attempt)
        .bind(progress)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn run_callback_heartbeat(
        &self,
        run_id: Uuid,
        attempt: i32,
        deadline: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let done = sqlx::query(&format!(
            "UPDATE runs r SET callback_deadline = $3 \
             WHERE r.run_id = $1 AND {RUNNING} AND r.attempt = $2 AND r.callback_attempt = $2"
        ))
        .bind(run_id)
        .bind(attempt)
        .bind(deadline)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn run_callbacks_due(&self, limit: i64) -> StoreResult<Vec<CallbackRun>> {
        let rows = sqlx::query_as::<_, Row>(&format!(
            "SELECT {RUN_COLUMNS}, callback_attempt, callback_deadline FROM runs \
             WHERE state = 'running' AND callback_deadline IS NOT NULL \
               AND callback_attempt = attempt AND (callback_deadline < now() OR cancel_requested) \
             ORDER BY callback_deadline LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(CallbackRun::from).collect())
    }

    pub async fn callback_tokens_prune(&self, limit: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM callback_tokens WHERE token_hash IN (SELECT t.token_hash \
             FROM callback_tokens t WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_id = t.run_id) \
             LIMIT $1)",
        )
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
