//! The `service_state` table: service-wide switches.

use super::notify::{self, FireHint, Notice};
use super::{PgStore, StoreResult};

impl PgStore {
    /// Whether scheduling is paused service-wide.
    pub async fn service_paused(&self) -> StoreResult<bool> {
        Ok(
            sqlx::query_scalar("SELECT paused FROM service_state WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or(false),
        )
    }

    /// Pauses or resumes all scheduling; wakes every replica's scheduler.
    pub async fn service_set_paused(&self, paused: bool) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO service_state (id, paused, updated_at) VALUES (1, $1, now()) \
             ON CONFLICT (id) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()",
        )
        .bind(paused)
        .execute(&mut *tx)
        .await?;
        notify::send(&mut *tx, &Notice::jobs(FireHint::Recheck)).await?;
        tx.commit().await?;
        Ok(())
    }
}
