//! The `service_state` table on the embedded store.

use super::rows;
use super::{SqliteStore, StoreResult};
use crate::store::notify::{FireHint, Notice};

impl SqliteStore {
    /// Whether scheduling is paused service-wide.
    pub async fn service_paused(&self) -> StoreResult<bool> {
        Ok(
            sqlx::query_scalar("SELECT paused FROM service_state WHERE id = 1")
                .fetch_optional(&self.readers)
                .await?
                .unwrap_or(false),
        )
    }

    /// Pauses or resumes all scheduling; wakes the scheduler.
    pub async fn service_set_paused(&self, paused: bool) -> StoreResult<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO service_state (id, paused, updated_at) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
        )
        .bind(paused)
        .bind(rows::micros(super::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.send(&Notice::jobs(FireHint::Recheck));
        Ok(())
    }
}
