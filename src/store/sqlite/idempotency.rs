//! The `idempotency_keys` table on the embedded store: `begin` takes or
//! reads the key in one write transaction (the one writer decides who is
//! first).

use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::sqlite::{Sqlite, SqliteArguments};
use sqlx::Row;
use uuid::Uuid;

use super::rows::{from_micros, micros, opt_json};
use super::{SqliteStore, StoreResult};
use crate::store::idempotency::{headers_from_json, headers_json};
use crate::store::{Begun, IdempotencyBegin, IdempotencyKey, StoredAnswer, StoredKey};

impl SqliteStore {
    pub async fn idempotency_begin(&self, begin: &IdempotencyBegin) -> StoreResult<Begun> {
        let k = &begin.key;
        let mut tx = self.write().await?;
        // An expired row is taken over in place (pruning may lag).
        let taken = sqlx::query(
            "INSERT INTO idempotency_keys (caller, method, route, key, claim, request_hash, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (caller, method, route, key) DO UPDATE SET \
               claim = excluded.claim, request_hash = excluded.request_hash, \
               created_at = excluded.created_at, status = NULL, headers = NULL, \
               body = NULL, completed_at = NULL \
             WHERE idempotency_keys.created_at < ?8 \
             RETURNING claim",
        )
        .bind(&k.caller)
        .bind(&k.method)
        .bind(&k.route)
        .bind(&k.key)
        .bind(begin.claim.to_string())
        .bind(&begin.request_hash)
        .bind(micros(begin.now))
        .bind(micros(begin.expired_before))
        .fetch_optional(&mut *tx)
        .await?;
        if taken.is_some() {
            tx.commit().await?;
            return Ok(Begun::Started);
        }
        let row = sqlx::query(
            "SELECT request_hash, created_at, status, headers, body FROM idempotency_keys \
             WHERE caller = ?1 AND method = ?2 AND route = ?3 AND key = ?4",
        )
        .bind(&k.caller)
        .bind(&k.method)
        .bind(&k.route)
        .bind(&k.key)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let status: Option<i64> = row.try_get("status")?;
        let answer = match status {
            None => None,
            Some(status) => Some(StoredAnswer {
                status: u16::try_from(status).unwrap_or(500),
                headers: headers_from_json(&opt_json(&row, "headers")?.unwrap_or_default()),
                body: row
                    .try_get::<Option<Vec<u8>>, _>("body")?
                    .unwrap_or_default(),
            }),
        };
        Ok(Begun::Existing(StoredKey {
            request_hash: row.try_get("request_hash")?,
            created_at: from_micros(row.try_get("created_at")?),
            answer,
        }))
    }

    pub async fn idempotency_complete(
        &self,
        key: &IdempotencyKey,
        claim: Uuid,
        answer: &StoredAnswer,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let query = sqlx::query(
            "UPDATE idempotency_keys SET status = ?6, headers = ?7, body = ?8, completed_at = ?9 \
             WHERE caller = ?1 AND method = ?2 AND route = ?3 AND key = ?4 AND claim = ?5 \
               AND status IS NULL",
        );
        let done = bind_claim(query, key, claim)
            .bind(i64::from(answer.status))
            .bind(headers_json(&answer.headers).to_string())
            .bind(&answer.body)
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn idempotency_release(
        &self,
        key: &IdempotencyKey,
        claim: Uuid,
    ) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let query = sqlx::query(
            "DELETE FROM idempotency_keys \
             WHERE caller = ?1 AND method = ?2 AND route = ?3 AND key = ?4 AND claim = ?5 \
               AND status IS NULL",
        );
        let done = bind_claim(query, key, claim).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn idempotency_prune_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        let deleted = sqlx::query(
            "DELETE FROM idempotency_keys WHERE rowid IN ( \
               SELECT rowid FROM idempotency_keys WHERE created_at < ?1 \
               ORDER BY created_at LIMIT ?2)",
        )
        .bind(micros(cutoff))
        .bind(limit)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected())
    }
}

/// Binds `$1`–`$5` (`?1`–`?5`): the key's caller, method, route and key,
/// and the claim of the request that holds it.
fn bind_claim<'q>(
    query: Query<'q, Sqlite, SqliteArguments<'q>>,
    key: &'q IdempotencyKey,
    claim: Uuid,
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    query
        .bind(&key.caller)
        .bind(&key.method)
        .bind(&key.route)
        .bind(&key.key)
        .bind(claim.to_string())
}
