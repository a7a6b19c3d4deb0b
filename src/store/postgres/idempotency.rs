//! The `idempotency_keys` table. Who runs a request under a key is decided
//! by the primary key: of two concurrent inserts, the second waits for the
//! first to commit and then does nothing.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;
use sqlx::Row;
use uuid::Uuid;

use super::{PgStore, StoreResult};
use crate::store::idempotency::{headers_from_json, headers_json};
use crate::store::{Begun, IdempotencyBegin, IdempotencyKey, StoredAnswer, StoredKey};

/// How often `begin` looks again when the key it lost to was released
/// between its insert and its read.
const BEGIN_TRIES: usize = 3;

impl PgStore {
    pub async fn idempotency_begin(&self, begin: &IdempotencyBegin) -> StoreResult<Begun> {
        let k = &begin.key;
        for _ in 0..BEGIN_TRIES {
            // An expired row is taken over in place (pruning may lag).
            let taken = sqlx::query(
                "INSERT INTO idempotency_keys (caller, method, route, key, claim, request_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (caller, method, route, key) DO UPDATE SET \
                   claim = EXCLUDED.claim, request_hash = EXCLUDED.request_hash, \
                   created_at = EXCLUDED.created_at, status = NULL, headers = NULL, \
                   body = NULL, completed_at = NULL \
                 WHERE idempotency_keys.created_at < $8 \
                 RETURNING claim",
            )
            .bind(&k.caller)
            .bind(&k.method)
            .bind(&k.route)
            .bind(&k.key)
            .bind(begin.claim)
            .bind(&begin.request_hash)
            .bind(begin.now)
            .bind(begin.expired_before)
            .fetch_optional(&self.pool)
            .await?;
            if taken.is_some() {
                return Ok(Begun::Started);
            }
            let row = sqlx::query(
                "SELECT request_hash, created_at, status, headers, body FROM idempotency_keys \
                 WHERE caller = $1 AND method = $2 AND route = $3 AND key = $4",
            )
            .bind(&k.caller)
            .bind(&k.method)
            .bind(&k.route)
            .bind(&k.key)
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else { continue };
            let status: Option<i32> = row.try_get("status")?;
            let answer = match status {
                None => None,
                Some(status) => Some(StoredAnswer {
                    status: u16::try_from(status).unwrap_or(500),
                    headers: headers_from_json(
                        &row.try_get::<Option<serde_json::Value>, _>("headers")?
                            .unwrap_or_default(),
                    ),
                    body: row
                        .try_get::<Option<Vec<u8>>, _>("body")?
                        .unwrap_or_default(),
                }),
            };
            return Ok(Begun::Existing(StoredKey {
                request_hash: row.try_get("request_hash")?,
                created_at: row.try_get("created_at")?,
                answer,
            }));
        }
        Err(crate::store::StoreError::Conflict(
            "the Idempotency-Key kept being taken and released; retry".into(),
        ))
    }

    pub async fn idempotency_complete(
        &self,
        key: &IdempotencyKey,
        claim: Uuid,
        answer: &StoredAnswer,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let query = sqlx::query(
            "UPDATE idempotency_keys SET status = $6, headers = $7, body = $8, completed_at = $9 \
             WHERE caller = $1 AND method = $2 AND route = $3 AND key = $4 AND claim = $5 \
               AND status IS NULL",
        );
        let done = bind_claim(query, key, claim)
            .bind(i32::from(answer.status))
            .bind(headers_json(&answer.headers))
            .bind(&answer.body)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn idempotency_release(
        &self,
        key: &IdempotencyKey,
        claim: Uuid,
    ) -> StoreResult<bool> {
        let query = sqlx::query(
            "DELETE FROM idempotency_keys \
             WHERE caller = $1 AND method = $2 AND route = $3 AND key = $4 AND claim = $5 \
               AND status IS NULL",
        );
        let done = bind_claim(query, key, claim).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn idempotency_prune_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<u64> {
        let deleted = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (caller, method, route, key) IN ( \
               SELECT caller, method, route, key FROM idempotency_keys WHERE created_at < $1 \
               ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             AND created_at < $1",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }
}

/// Binds `$1`–`$5` (`?1`–`?5`): the key's caller, method, route and key,
/// and the claim of the request that holds it.
fn bind_claim<'q>(
    query: Query<'q, Postgres, PgArguments>,
    key: &'q IdempotencyKey,
    claim: Uuid,
) -> Query<'q, Postgres, PgArguments> {
    query
        .bind(&key.caller)
        .bind(&key.method)
        .bind(&key.route)
        .bind(&key.key)
        .bind(claim)
}
