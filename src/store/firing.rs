//! What the scheduler reads and writes when it fires jobs.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::FromRow;

use super::ActiveCounts;
use crate::domain::{RunState, ScheduleKind, Trigger};

/// A job whose `next_run_at` has come, locked for this transaction.
#[derive(Debug, Clone, FromRow)]
pub struct DueJob {
    pub job_id: String,
    pub schedule_kind: ScheduleKind,
    pub interval_ms: Option<i64>,
    pub cron: Option<String>,
    pub timezone: String,
    pub start_at: DateTime<Utc>,
    pub misfire_grace_ms: Option<i64>,
    pub coalesce: bool,
    pub max_instances: i32,
    /// The job's runs that take its slots, counted under the row lock
    /// (not a column: read by a second statement, see
    /// [`Store::due_jobs_claim`]).
    #[sqlx(skip)]
    pub runs: ActiveCounts,
    pub next_run_at: DateTime<Utc>,
    /// Database time of the claim.
    pub db_now: DateTime<Utc>,
}

/// A run the scheduler creates: `queued`, `waiting` (for a slot held by a
/// running run), or `missed` (recorded, never run).
#[derive(Debug, Clone, PartialEq)]
pub struct FiredRun {
    pub job_id: String,
    pub scheduled_for: DateTime<Utc>,
    /// `schedule` or `catch-up`.
    pub trigger: Trigger,
    /// `queued`, `waiting` or `missed`.
    pub state: RunState,
    pub reason: String,
    /// For missed runs: how many times were missed, and when.
    pub result: Option<Value>,
}

/// Where a fired job goes next.
#[derive(Debug, Clone, PartialEq)]
pub struct JobAdvance {
    pub job_id: String,
    pub next_run_at: Option<DateTime<Utc>>,
    /// A one-shot job whose only run was missed is completed at once.
    pub complete: bool,
}

/// When the scheduler should look next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextDue {
    /// The earliest `next_run_at` (database time).
    pub at: DateTime<Utc>,
    /// How long until then, from the database's now.
    pub wait: std::time::Duration,
}

/// Due jobs held locked until [`DueBatch::commit`].
pub struct DueBatch {
    pub jobs: Vec<DueJob>,
    pub(crate) tx: DueTx,
}

/// The open transaction of a [`DueBatch`], per backend.
pub(crate) enum DueTx {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(super::sqlite::firing::SqliteDueTx),
}

impl DueBatch {
    /// Inserts the runs, advances the jobs and commits. Up to `claim.limit`
    /// of the queued runs (without a `lock_key`, whose check needs the claim
    /// lock) are inserted claimed by `claim.instance`, as
    /// [`super::Store::run_claim`] would claim them, and returned to be
    /// started; when others are left queued, the workers are woken.
    pub async fn commit(
        self,
        runs: &[FiredRun],
        advances: &[JobAdvance],
        claim: &super::ClaimSlots,
    ) -> super::StoreResult<Vec<super::RunRow>> {
        match self.tx {
            DueTx::Postgres(tx) => super::postgres::firing::commit(tx, runs, advances, claim).await,
            DueTx::Sqlite(due) => super::sqlite::firing::commit(due, runs, advances, claim).await,
        }
    }
}
