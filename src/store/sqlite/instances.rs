//! The `instances` table on the embedded store (one replica, but the same
//! API), and held lock keys.

use sqlx::Row;

use super::rows::{self, from_micros};
use super::{InstanceRow, LockRow, SqliteStore, StoreResult};

impl SqliteStore {
    /// Registers or refreshes this replica, and prunes replicas silent for
    /// longer than `prune_after_ms` (by this process's clock).
    pub async fn instance_heartbeat(
        &self,
        name: &str,
        version: &str,
        address: Option<&str>,
        prune_after_ms: i64,
    ) -> StoreResult<()> {
        let now = rows::micros(super::now());
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO instances (name, version, address, started_at, heartbeat_at) \
             VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT (name) DO UPDATE SET version = excluded.version, \
             address = excluded.address, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(name)
        .bind(version)
        .bind(address)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM instances WHERE heartbeat_at < ?1")
            .bind(now.saturating_sub(prune_after_ms.saturating_mul(1000)))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes this replica (graceful shutdown).
    pub async fn instance_remove(&self, name: &str) -> StoreResult<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM instances WHERE name = ?1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The registered replicas; `alive` means a heartbeat within `alive_ms`.
    pub async fn instance_list(&self, alive_ms: i64) -> StoreResult<Vec<InstanceRow>> {
        let since = rows::micros(super::now()).saturating_sub(alive_ms.saturating_mul(1000));
        let found = sqlx::query(
            "SELECT i.name, i.version, i.address, i.started_at, i.heartbeat_at, \
             i.heartbeat_at >= ?1 AS alive, \
             (SELECT count(*) FROM runs r WHERE r.state = 'running' AND r.instance = i.name) AS running_runs \
             FROM instances i ORDER BY i.name",
        )
        .bind(since)
        .fetch_all(&self.readers)
        .await?;
        found
            .iter()
            .map(|row| {
                Ok(InstanceRow {
                    name: row.try_get("name")?,
                    version: row.try_get("version")?,
                    address: row.try_get("address")?,
                    started_at: from_micros(row.try_get("started_at")?),
                    last_heartbeat: from_micros(row.try_get("heartbeat_at")?),
                    alive: row.try_get("alive")?,
                    running_runs: row.try_get("running_runs")?,
                })
            })
            .collect()
    }

    /// Lock keys held by running runs.
    pub async fn lock_list(&self) -> StoreResult<Vec<LockRow>> {
        let found = sqlx::query(
            "SELECT lock_key, run_id, job_id, instance, started_at FROM runs \
             WHERE state = 'running' AND lock_key IS NOT NULL ORDER BY lock_key",
        )
        .fetch_all(&self.readers)
        .await?;
        found
            .iter()
            .map(|row| {
                Ok(LockRow {
                    lock_key: row.try_get("lock_key")?,
                    run_id: rows::uuid(row, "run_id")?,
                    job_id: row.try_get("job_id")?,
                    instance: row.try_get("instance")?,
                    started_at: row
                        .try_get::<Option<i64>, _>("started_at")?
                        .map(from_micros),
                })
            })
            .collect()
    }
}
