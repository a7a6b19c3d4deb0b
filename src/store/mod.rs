//! All SQL lives here, behind typed functions named noun-then-verb
//! (`job_insert`, `run_claim`, ...). The scheduler, the workers and the API
//! call these and never build SQL themselves; this boundary is what would let
//! another storage engine stand in later.
//!
//! Database time (`now()`) is the clock for everything that decides when a
//! job fires or a lease expires, so replicas with skewed clocks still agree.

pub mod bench;
mod connect;
pub mod default_jobs;
pub mod execution;
pub mod firing;
pub mod hot;
pub mod instances;
pub mod jobs;
pub mod notify;
pub mod runs;
pub mod service;

use sqlx::PgPool;

pub use connect::{redact_url, ConnectError};
pub use default_jobs::{FileJobPlan, FileJobRow, FileUpsert, FileUpsertResult};
pub use execution::{ClaimSlots, HeartbeatAck, RunClaim, RunOutcome, RunRetry};
pub use firing::{DueBatch, DueJob, FiredRun, JobAdvance, NextDue};
pub use instances::{InstanceRow, LockRow};
pub use jobs::{JobFilter, JobRow, JobType, NewJob};
pub use runs::{ActiveCounts, ManualRun, RunFilter, RunRow};

/// Errors of the storage layer. `NotFound` and `Conflict` are the caller's
/// to explain; `Database` is a fault (logged, answered with a 500).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// A conditional write found the row changed since it was read: re-read
    /// and apply the change again.
    #[error("the row was changed since it was read")]
    Stale,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn from_pool(pool: PgPool) -> Self {
        Store { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations in `migrations/` (idempotent; safe when several
    /// replicas start together, sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        sqlx::migrate!("./migrations").run(&self.pool).await
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
