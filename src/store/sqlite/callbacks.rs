//! Remote completion's statements on the embedded store (see
//! `crate::callbacks` and the PostgreSQL store for the fencing).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use super::execution::APPEND;
use super::rows::{history_text, json_text, micros, opt_time, run_from_row, RUN_COLUMNS};
use super::{now, RunClaim, SqliteStore, StoreError, StoreResult};
use crate::callbacks::rules::TokenOwner;
use crate::domain::RunState;
use crate::store::callbacks::CallbackRun;

fn callback_run(row: &SqliteRow) -> Result<CallbackRun, sqlx::Error> {
    Ok(CallbackRun {
        run: run_from_row(row)?,
        callback_attempt: row.try_get("callback_attempt")?,
        callback_deadline: opt_time(row, "callback_deadline")?,
    })
}

impl SqliteStore {
    pub async fn callback_token_insert(
        &self,
        hash: &str,
        run_id: Uuid,
        attempt: i32,
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO callback_tokens (token_hash, run_id, attempt, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(hash)
        .bind(run_id.to_string())
        .bind(attempt)
        .bind(micros(now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn callback_token_owner(&self, hash: &str) -> StoreResult<Option<TokenOwner>> {
        let row = sqlx::query("SELECT run_id, attempt FROM callback_tokens WHERE token_hash = ?")
            .bind(hash)
            .fetch_optional(&self.readers)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TokenOwner {
            run_id: super::rows::uuid(&row, "run_id")?,
            attempt: row.try_get("attempt")?,
        }))
    }

    pub async fn callback_run_get(&self, run_id: Uuid) -> StoreResult<CallbackRun> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS}, callback_attempt, callback_deadline FROM runs WHERE run_id = ?"
        ))
        .bind(run_id.to_string())
        .fetch_optional(&self.readers)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(callback_run(&row)?)
    }

    pub async fn run_await_callback(
        &self,
        claim: &RunClaim,
        deadline: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<bool> {
        let at = now();
        let mut tx = self.write().await?;
        let done = sqlx::query(&format!(
            "UPDATE runs SET callback_attempt = attempt, callback_deadline = ?, \
             lease_expires_at = NULL, history = {APPEND} \
             WHERE run_id = ? AND +state = 'running' AND attempt = ? AND instance = ?"
        ))
        .bind(micros(deadline))
        .bind(history_text(
            at,
            Some(RunState::Running),
            RunState::Running,
            Some(&claim.instance),
            reason,
        ))
        .bind(claim.run_id.to_string())
        .bind(claim.attempt)
        .bind(&claim.instance)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn run_callback_progress(
        &self,
        run_id: Uuid,
        attempt: i32,
        progress: &Value,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        let at = now();
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE runs SET progress = ?, progress_updated_at = ? \
             WHERE run_id = ? AND +state = 'running' AND attempt = ?",
        )
        .bind(json_text(progress))
        .bind(micros(at))
        .bind(run_id.to_string())
        .bind(attempt)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((done.rows_affected() == 1).then_some(at))
    }

    pub async fn run_callback_heartbeat(
        &self,
        run_id: Uuid,
        attempt: i32,
        deadline: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE runs SET callback_deadline = ? \
             WHERE run_id = ? AND +state = 'running' AND attempt = ? AND callback_attempt = ?",
        )
        .bind(micros(deadline))
        .bind(run_id.to_string())
        .bind(attempt)
        .bind(attempt)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn run_callbacks_due(&self, limit: i64) -> StoreResult<Vec<CallbackRun>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS}, callback_attempt, callback_deadline FROM runs \
             WHERE state = 'running' AND callback_deadline IS NOT NULL \
               AND callback_attempt = attempt AND (callback_deadline < ? OR cancel_requested) \
             ORDER BY callback_deadline LIMIT ?"
        ))
        .bind(micros(now()))
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(callback_run)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    pub async fn callback_tokens_prune(&self, limit: i64) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "DELETE FROM callback_tokens WHERE token_hash IN (SELECT t.token_hash \
             FROM callback_tokens t WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_id = t.run_id) \
             LIMIT ?)",
        )
        .bind(limit)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}
