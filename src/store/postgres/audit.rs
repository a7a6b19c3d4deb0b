//! The `audit_log` table: appended to, read newest first, pruned by age.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::{PgStore, StoreResult};
use crate::store::{AuditEntry, AuditFilter, AuditMethod};

const AUDIT_COLUMNS: &str = "id, at, actor, token_id, method, path, job_id, run_id, status, reason";

fn entry_from_row(row: &PgRow) -> Result<AuditEntry, sqlx::Error> {
    let method: String = row.try_get("method")?;
    let status: i32 = row.try_get("status")?;
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        token_id: row.try_get("token_id")?,
        method: AuditMethod::parse(&method).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "method".into(),
            source: format!("{method:?} is not an audited method").into(),
        })?,
        path: row.try_get("path")?,
        job_id: row.try_get("job_id")?,
        run_id: row.try_get("run_id")?,
        status: u16::try_from(status).map_err(|e| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: e.into(),
        })?,
        reason: row.try_get("reason")?,
    })
}

impl PgStore {
    pub async fn audit_insert(&self, entry: &AuditEntry) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(entry.id)
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(entry.token_id)
        .bind(entry.method.as_str())
        .bind(&entry.path)
        .bind(&entry.job_id)
        .bind(entry.run_id)
        .bind(i32::from(entry.status))
        .bind(&entry.reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn audit_list(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log \
             WHERE ($1::text IS NULL OR job_id = $1) AND ($2::uuid IS NULL OR id < $2) \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(&filter.job_id)
        .bind(filter.before)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(entry_from_row).collect::<Result<_, _>>()?)
    }

    pub async fn audit_prune_before(&self, cutoff: DateTime<Utc>, limit: i64) -> StoreResult<u64> {
        let deleted = sqlx::query(
            "DELETE FROM audit_log WHERE id IN ( \
               SELECT id FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }
}
