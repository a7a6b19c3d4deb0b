//! The embedded store: one SQLite file, for a single replica (a try-out,
//! a small deployment, tests), with no server to install.
//!
//! - **One writer.** Every write runs on the one connection of the writer
//!   pool, as a `BEGIN IMMEDIATE` transaction: it takes the file's write
//!   lock at its start, so a transaction never reads and then fails to
//!   upgrade (a deferred one would get `SQLITE_BUSY` at once, without the
//!   busy timeout applying). In-process writers queue for that connection;
//!   another process (`jobsd migrate`) waits up to the busy timeout. Reads
//!   use a pool of read-only connections and never wait for the writer
//!   (WAL).
//! - **No row locks are needed.** With one writer, a transaction sees and
//!   decides everything alone: claims select their runs and update them by
//!   id in the same transaction (River, Oban Lite and apalis-sqlite do the
//!   same), and `max_instances` and lock keys are counted exactly.
//! - **The clock is this process's** (`Utc::now()`, to the microsecond, as
//!   PostgreSQL keeps it): there is no other replica to agree with.
//! - **Wake-ups are an in-process broadcast** of the same [`Notice`]s
//!   PostgreSQL sends with NOTIFY, sent after each commit.
//! - **Durability.** WAL with `synchronous=NORMAL` (the default): a killed
//!   process loses nothing it acknowledged; a power loss or an OS crash may
//!   lose the last transactions. `--sqlite-synchronous full` syncs every
//!   commit instead.
//!
//! The rules every backend applies (lateness, completion, rescue, failure
//! records, waiting runs) come from [`crate::domain::rules`].

mod alerts;
mod audit;
mod batches;
pub mod bench;
mod callbacks;
mod connect;
mod copy;
pub(crate) mod default_jobs;
mod events;
pub(crate) mod execution;
pub(crate) mod firing;
mod idempotency;
pub(crate) mod instances;
pub(crate) mod jobs;
mod retention;
mod rows;
pub(crate) mod runs;
pub(crate) mod service;
pub(crate) mod stats;
pub(crate) mod tokens;
mod webhooks;

use chrono::{DateTime, Utc};
use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::broadcast;

pub(crate) use super::{
    ActiveCounts, ClaimSlots, DueBatch, DueJob, FileJobPlan, FileJobRow, FileUpsertResult,
    FiredRun, HeartbeatAck, InstanceRow, JobAdvance, JobFilter, JobRow, JobType, LockRow,
    ManualRun, NewJob, NextDue, Notice, RunClaim, RunFilter, RunOutcome, RunRetry, RunRow,
    StoreError, StoreResult,
};
pub use connect::{ServeLock, SqliteOptions, Synchronous};

/// Handle to the embedded store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection: every write.
    writer: SqlitePool,
    /// Read-only connections.
    readers: SqlitePool,
    wake: broadcast::Sender<Notice>,
    /// Bumped when the writer commits events (`events.rs`).
    event_commits: tokio::sync::watch::Sender<u64>,
    path: std::path::PathBuf,
}

/// The process clock, at the store's precision (microseconds).
pub(crate) fn now() -> DateTime<Utc> {
    rows::from_micros(rows::micros(Utc::now()))
}

impl SqliteStore {
    /// Applies the migrations in `migrations/sqlite/` (idempotent).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.writer)
            .await
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    pub async fn now(&self) -> StoreResult<DateTime<Utc>> {
        Ok(now())
    }

    /// A write transaction (`BEGIN IMMEDIATE`) on the writer connection.
    ///
    /// Begun in a task of its own: a caller dropped while `BEGIN` is in
    /// flight (a timed-out heartbeat, a client gone) would otherwise leave
    /// the one writer connection inside a transaction that sqlx no longer
    /// tracks, and every later write would fail ("begin_with at non-zero
    /// transaction depth"). The task always finishes the `BEGIN`; if its
    /// caller is gone, the transaction it made is dropped, so rolled back.
    pub(crate) async fn write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        let writer = self.writer.clone();
        let begun = tokio::spawn(async move { writer.begin_with("BEGIN IMMEDIATE").await })
            .await
            // The task panicked, or the runtime is shutting down.
            .map_err(|_| StoreError::Database(sqlx::Error::WorkerCrashed))?;
        Ok(begun?)
    }

    /// A receiver of this process's notices.
    pub fn listen(&self) -> broadcast::Receiver<Notice> {
        self.wake.subscribe()
    }

    /// Delivers `notice` to this process's listeners (after the commit of
    /// the change it announces).
    pub async fn notify(&self, notice: &Notice) -> StoreResult<()> {
        self.send(notice);
        Ok(())
    }

    pub(crate) fn send(&self, notice: &Notice) {
        send(&self.wake, notice);
    }

    pub(crate) fn wake(&self) -> &broadcast::Sender<Notice> {
        &self.wake
    }

    /// Takes a consistent copy of the live store into `target` (which must
    /// not exist), without stopping it.
    pub async fn backup(&self, target: &std::path::Path) -> StoreResult<()> {
        sqlx::query("VACUUM INTO ?")
            .bind(target.to_string_lossy().into_owned())
            .execute(&self.readers)
            .await?;
        Ok(())
    }
}

/// Sends a non-empty notice; nobody listening is not an error.
pub(crate) fn send(wake: &broadcast::Sender<Notice>, notice: &Notice) {
    if !notice.is_empty() {
        let _ = wake.send(notice.clone());
    }
}

/// Maps a unique-constraint violation to `Conflict` with the given message.
pub(crate) fn conflict_on_unique(err: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(message()),
        _ => StoreError::Database(err),
    }
}
