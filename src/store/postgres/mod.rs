//! The PostgreSQL store: every statement jobsd runs on PostgreSQL, for any
//! number of replicas sharing one database.
//!
//! Database time (`now()`) is the clock for everything that decides when a
//! job fires or a lease expires, so replicas with skewed clocks still agree.

mod alerts;
mod audit;
mod batches;
pub mod bench;
mod callbacks;
mod connect;
mod copy;
pub(crate) mod default_jobs;
pub(crate) mod ends;
pub(crate) mod events;
pub(crate) mod execution;
pub(crate) mod firing;
pub mod hot;
mod idempotency;
pub(crate) mod instances;
pub(crate) mod jobs;
pub(crate) mod notify;
mod retention;
pub(crate) mod runs;
pub(crate) mod service;
pub(crate) mod stats;
pub(crate) mod tokens;
mod webhooks;

use sqlx::PgPool;

pub(crate) use super::{
    ActiveCounts, ClaimSlots, DueBatch, DueJob, FileJobPlan, FileJobRow, FileUpsertResult,
    FiredRun, HeartbeatAck, InstanceRow, JobAdvance, JobFilter, JobRow, JobType, LockRow,
    ManualRun, NewJob, NextDue, RunClaim, RunFilter, RunOutcome, RunRetry, RunRow, StoreError,
    StoreResult,
};

/// Handle to a PostgreSQL database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub fn from_pool(pool: PgPool) -> Self {
        PgStore { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations in `migrations/postgres/` (idempotent; safe
    /// when several replicas start together, sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
    }

    /// Readiness: one round trip to the database.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The database clock.
    pub async fn now(&self) -> StoreResult<chrono::DateTime<chrono::Utc>> {
        Ok(sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await?)
    }
}

/// Maps a unique-constraint violation to `Conflict` with the given message.
pub(crate) fn conflict_on_unique(err: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(message()),
        _ => StoreError::Database(err),
    }
}
