//! The `api_tokens` table on the embedded store. Writes run on the one
//! writer connection (so a revocation's count of the other admin tokens
//! cannot race another revocation); `jobsd token` commands write to a
//! served file through the same busy timeout as `jobsd migrate`.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use super::rows::{self, from_micros, micros, opt_micros};
use super::{conflict_on_unique, SqliteStore, StoreError, StoreResult};
use crate::auth::Scope;
use crate::store::{NewToken, TokenKey, TokenRow};

const TOKEN_COLUMNS: &str =
    "id, name, prefix, scope, created_at, expires_at, revoked_at, last_used_at";

/// Live tokens of scope `?1` at `?2`, other than `?3` (if given).
const COUNT_LIVE: &str = "SELECT count(*) FROM api_tokens WHERE scope = ?1 \
     AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?2) \
     AND (?3 IS NULL OR id <> ?3)";

fn token_from_row(row: &SqliteRow) -> Result<TokenRow, sqlx::Error> {
    let scope: String = row.try_get("scope")?;
    let time = |column: &str| -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(row.try_get::<Option<i64>, _>(column)?.map(from_micros))
    };
    Ok(TokenRow {
        id: rows::uuid(row, "id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        scope: scope
            .parse::<Scope>()
            .map_err(|e| sqlx::Error::ColumnDecode {
                index: "scope".into(),
                source: e.into(),
            })?,
        created_at: from_micros(row.try_get("created_at")?),
        expires_at: time("expires_at")?,
        revoked_at: time("revoked_at")?,
        last_used_at: time("last_used_at")?,
    })
}

impl SqliteStore {
    /// Stores a new token; `Conflict` when its prefix or hash is taken.
    pub async fn token_insert(&self, token: &NewToken) -> StoreResult<TokenRow> {
        let mut tx = self.write().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO api_tokens (id, name, prefix, hash, scope, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(token.id.to_string())
        .bind(&token.name)
        .bind(&token.prefix)
        .bind(&token.hash)
        .bind(token.scope.as_str())
        .bind(micros(token.created_at))
        .bind(opt_micros(token.expires_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| conflict_on_unique(e, || "a token with this prefix exists".into()))?;
        let token = token_from_row(&row)?;
        tx.commit().await?;
        Ok(token)
    }

    /// Every token, oldest first.
    pub async fn token_list(&self) -> StoreResult<Vec<TokenRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.iter().map(token_from_row).collect::<Result<_, _>>()?)
    }

    /// The token whose secret hashes to `hash`, whatever its state.
    pub async fn token_find_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRow>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = ?1"
        ))
        .bind(hash)
        .fetch_optional(&self.readers)
        .await?;
        Ok(row.as_ref().map(token_from_row).transpose()?)
    }

    /// Whether any token was ever stored.
    pub async fn token_exists(&self) -> StoreResult<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_tokens)")
                .fetch_one(&self.readers)
                .await?,
        )
    }

    /// Tokens of `scope` live at `now`.
    pub async fn token_count_live(&self, scope: Scope, now: DateTime<Utc>) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(COUNT_LIVE)
            .bind(scope.as_str())
            .bind(micros(now))
            .bind(None::<String>)
            .fetch_one(&self.readers)
            .await?)
    }

    /// Revokes the token `key` names at `now`, unless `check` (given the
    /// token and how many other admin tokens are live) refuses.
    pub async fn token_revoke(
        &self,
        key: &TokenKey,
        now: DateTime<Utc>,
        check: impl FnOnce(&TokenRow, i64) -> Result<(), String>,
    ) -> StoreResult<TokenRow> {
        let mut tx = self.write().await?;
        let select = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens");
        let found = match key {
            TokenKey::Id(id) => {
                sqlx::query(&format!("{select} WHERE id = ?1"))
                    .bind(id.to_string())
                    .fetch_optional(&mut *tx)
                    .await?
            }
            TokenKey::Prefix(prefix) => {
                sqlx::query(&format!("{select} WHERE prefix = ?1"))
                    .bind(prefix)
                    .fetch_optional(&mut *tx)
                    .await?
            }
        };
        let token = token_from_row(&found.ok_or(StoreError::NotFound)?)?;
        let other_admins: i64 = sqlx::query_scalar(COUNT_LIVE)
            .bind(Scope::Admin.as_str())
            .bind(micros(now))
            .bind(Some(token.id.to_string()))
            .fetch_one(&mut *tx)
            .await?;
        check(&token, other_admins).map_err(StoreError::Conflict)?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        let row = sqlx::query(&format!(
            "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(token.id.to_string())
        .bind(micros(now))
        .fetch_one(&mut *tx)
        .await?;
        let token = token_from_row(&row)?;
        tx.commit().await?;
        Ok(token)
    }

    /// Records when tokens were last used; a time older than the one stored
    /// is ignored.
    pub async fn token_touch(&self, used: &[(Uuid, DateTime<Utc>)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for (id, at) in used {
            sqlx::query(
                "UPDATE api_tokens SET last_used_at = max(coalesce(last_used_at, 0), ?2) \
                 WHERE id = ?1",
            )
            .bind(id.to_string())
            .bind(micros(*at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
