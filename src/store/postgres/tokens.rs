//! The `api_tokens` table: tokens stored by the hash of their secret.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use super::{conflict_on_unique, PgStore, StoreError, StoreResult};
use crate::auth::Scope;
use crate::store::{NewToken, TokenKey, TokenRow};

/// Serializes revocations across replicas, so that two replicas revoking
/// the last two admin tokens at once cannot both see the other one live.
const REVOKE_LOCK: i64 = 0x6a6f_6273_645f_746b; // "jobsd_tk"

const TOKEN_COLUMNS: &str =
    "id, name, prefix, scope, created_at, expires_at, revoked_at, last_used_at";

/// Live tokens of scope `$1` at `$2`, other than `$3` (if given).
const COUNT_LIVE: &str = "SELECT count(*) FROM api_tokens WHERE scope = $1 \
     AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2) \
     AND ($3::uuid IS NULL OR id <> $3)";

fn token_from_row(row: &PgRow) -> Result<TokenRow, sqlx::Error> {
    let scope: String = row.try_get("scope")?;
    Ok(TokenRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        scope: scope
            .parse::<Scope>()
            .map_err(|e| sqlx::Error::ColumnDecode {
                index: "scope".into(),
                source: e.into(),
            })?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

impl PgStore {
    /// Stores a new token; `Conflict` when its prefix or hash is taken.
    pub async fn token_insert(&self, token: &NewToken) -> StoreResult<TokenRow> {
        let row = sqlx::query(&format!(
            "INSERT INTO api_tokens (id, name, prefix, hash, scope, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(token.id)
        .bind(&token.name)
        .bind(&token.prefix)
        .bind(&token.hash)
        .bind(token.scope.as_str())
        .bind(token.created_at)
        .bind(token.expires_at)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict_on_unique(e, || "a token with this prefix exists".into()))?;
        Ok(token_from_row(&row)?)
    }

    /// Every token, oldest first.
    pub async fn token_list(&self) -> StoreResult<Vec<TokenRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(token_from_row).collect::<Result<_, _>>()?)
    }

    /// The token whose secret hashes to `hash`, whatever its state.
    pub async fn token_find_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRow>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(token_from_row).transpose()?)
    }

    /// Whether any token was ever stored.
    pub async fn token_exists(&self) -> StoreResult<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_tokens)")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Tokens of `scope` live at `now`.
    pub async fn token_count_live(&self, scope: Scope, now: DateTime<Utc>) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(COUNT_LIVE)
            .bind(scope.as_str())
            .bind(now)
            .bind(None::<Uuid>)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Revokes the token `key` names at `now`, unless `check` (given the
    /// token and how many other admin tokens are live) refuses. See
    /// [`crate::store::Store::token_revoke`].
    pub async fn token_revoke(
        &self,
        key: &TokenKey,
        now: DateTime<Utc>,
        check: impl FnOnce(&TokenRow, i64) -> Result<(), String>,
    ) -> StoreResult<TokenRow> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(REVOKE_LOCK)
            .execute(&mut *tx)
            .await?;
        let select = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens");
        let found = match key {
            TokenKey::Id(id) => {
                sqlx::query(&format!("{select} WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
            }
            TokenKey::Prefix(prefix) => {
                sqlx::query(&format!("{select} WHERE prefix = $1"))
                    .bind(prefix)
                    .fetch_optional(&mut *tx)
                    .await?
            }
        };
        let token = token_from_row(&found.ok_or(StoreError::NotFound)?)?;
        let other_admins: i64 = sqlx::query_scalar(COUNT_LIVE)
            .bind(Scope::Admin.as_str())
            .bind(now)
            .bind(Some(token.id))
            .fetch_one(&mut *tx)
            .await?;
        check(&token, other_admins).map_err(StoreError::Conflict)?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        let row = sqlx::query(&format!(
            "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(token.id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(token_from_row(&row)?)
    }

    /// Records when tokens were last used; a time older than the one stored
    /// is ignored.
    pub async fn token_touch(&self, used: &[(Uuid, DateTime<Utc>)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        let (ids, ats): (Vec<Uuid>, Vec<DateTime<Utc>>) = used.iter().copied().unzip();
        sqlx::query(
            "UPDATE api_tokens t SET last_used_at = GREATEST(t.last_used_at, u.at) \
             FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at) WHERE t.id = u.id",
        )
        .bind(&ids)
        .bind(&ats)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
