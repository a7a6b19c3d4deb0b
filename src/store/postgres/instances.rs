//! The `instances` table: the replicas sharing this database, and which
//! lock keys running runs hold.

use super::{InstanceRow, LockRow, PgStore, StoreResult};

impl PgStore {
    /// Registers or refreshes this replica, and prunes replicas silent for
    /// longer than `prune_after_ms`.
    pub async fn instance_heartbeat(
        &self,
        name: &str,
        version: &str,
        address: Option<&str>,
        prune_after_ms: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO instances (name, version, address) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, address = EXCLUDED.address, \
             heartbeat_at = now()",
        )
        .bind(name)
        .bind(version)
        .bind(address)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM instances WHERE heartbeat_at < now() - $1 * interval '1 millisecond'",
        )
        .bind(prune_after_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes this replica (graceful shutdown).
    pub async fn instance_remove(&self, name: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM instances WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The registered replicas; `alive` means a heartbeat within `alive_ms`.
    pub async fn instance_list(&self, alive_ms: i64) -> StoreResult<Vec<InstanceRow>> {
        Ok(sqlx::query_as::<_, InstanceRow>(
            "SELECT i.name, i.version, i.address, i.started_at, i.heartbeat_at AS last_heartbeat, \
             i.heartbeat_at >= now() - $1 * interval '1 millisecond' AS alive, \
             (SELECT count(*) FROM runs r WHERE r.state = 'running' AND r.instance = i.name) AS running_runs \
             FROM instances i ORDER BY i.name",
        )
        .bind(alive_ms)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Lock keys held by running runs.
    pub async fn lock_list(&self) -> StoreResult<Vec<LockRow>> {
        Ok(sqlx::query_as::<_, LockRow>(
            "SELECT lock_key, run_id, job_id, instance, started_at FROM runs \
             WHERE state = 'running' AND lock_key IS NOT NULL ORDER BY lock_key",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
