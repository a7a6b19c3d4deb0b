//! The scheduler's statements on the embedded store.

use sqlx::{Sqlite, Transaction};
use tokio::sync::broadcast;

use super::{
    ClaimSlots, DueBatch, FiredRun, JobAdvance, NextDue, Notice, RunRow, SqliteStore, StoreResult,
};

/// The open firing transaction of a [`DueBatch`] on the embedded store.
pub(crate) struct SqliteDueTx {
    pub(crate) tx: Transaction<'static, Sqlite>,
    pub(crate) now: chrono::DateTime<chrono::Utc>,
    pub(crate) wake: broadcast::Sender<Notice>,
}

impl SqliteStore {
    pub async fn due_jobs_claim(&self, _limit: i64) -> StoreResult<DueBatch> {
        unimplemented!()
    }
    pub async fn due_jobs_next(&self) -> StoreResult<Option<NextDue>> {
        unimplemented!()
    }
}

/// [`DueBatch::commit`] on the embedded store.
pub(crate) async fn commit(
    _due: SqliteDueTx,
    _runs: &[FiredRun],
    _advances: &[JobAdvance],
    _claim: &ClaimSlots,
) -> StoreResult<Vec<RunRow>> {
    unimplemented!()
}
