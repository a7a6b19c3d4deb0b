//! Runs as the store returns them, and the requests that create them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::FromRow;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{RunState, Trigger};

/// A run as stored, and as the API returns it.
#[derive(Debug, Clone, FromRow, Serialize, ToSchema)]
pub struct RunRow {
    pub run_id: Uuid,
    pub job_id: String,
    pub handler: String,
    #[schema(value_type = Object)]
    pub kwargs: Value,
    pub trigger: Trigger,
    pub scheduled_for: DateTime<Utc>,
    /// A queued run is not started before this (retry backoff).
    pub run_after: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub state: RunState,
    /// Attempts started so far.
    pub attempt: i32,
    pub max_retries: i32,
    pub retry_backoff_ms: i64,
    pub timeout_ms: Option<i64>,
    pub misfire_grace_ms: Option<i64>,
    pub lock_key: Option<String>,
    /// The replica running (or that last ran) it.
    pub instance: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<String>,
    pub traceback: Option<String>,
    /// The latest progress the run reported (its handler in jobsd, or the
    /// service it called back through `POST /api/v1/runs/{id}/progress`).
    #[schema(value_type = Option<Object>)]
    pub progress: Option<Value>,
    /// When `progress` was last written.
    pub progress_updated_at: Option<DateTime<Utc>>,
    /// Every transition: `{"at", "from", "to", "instance", "reason"}`.
    #[schema(value_type = Vec<Object>)]
    pub history: Value,
}

/// A job's runs that hold or wait for one of its `max_instances` slots.
#[derive(Debug, Clone, Default, FromRow)]
pub struct ActiveCounts {
    pub job_id: String,
    /// Queued or running.
    pub active: i64,
    pub running: i64,
    pub waiting: i64,
}

impl ActiveCounts {
    /// Runs that take a slot: queued, running, or waiting for one.
    pub fn taken(&self) -> i64 {
        self.active + self.waiting
    }
}

/// Filters and page of a run listing.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub job_id: Option<String>,
    pub state: Option<RunState>,
    pub handler: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    pub limit: i64,
    pub offset: i64,
}

/// A manual run to queue.
#[derive(Debug, Clone)]
pub struct ManualRun {
    pub job_id: String,
    /// Overrides of the job's handler and kwargs (re-running a failure record).
    pub handler: Option<String>,
    pub kwargs: Option<Value>,
    pub reason: String,
}

/// A free slot for one more run of `job_id`, which has `taken` of its
/// `max_instances` slots held now; `Conflict` when there is none.
pub(crate) fn free_slot(job_id: &str, taken: i64, max_instances: i32) -> super::StoreResult<()> {
    if taken < i64::from(max_instances) {
        return Ok(());
    }
    Err(super::StoreError::Conflict(format!(
        "job {job_id:?} already has {taken} run(s) queued, running or waiting; its max_instances is {max_instances}"
    )))
}

/// Checks an operator's override of run `run_id` from `current` to
/// `requested`. True when it queues an ended run again, which takes a slot
/// of its job: the caller then checks [`requeue_slot`] under its lock.
pub(crate) fn override_takes_slot(
    run_id: uuid::Uuid,
    current: RunState,
    requested: RunState,
) -> super::StoreResult<bool> {
    if current == requested {
        return Err(super::StoreError::Conflict(format!(
            "run {run_id} is already {requested}"
        )));
    }
    Ok(requested == RunState::Queued && !current.is_active())
}

/// A slot for a run an operator queues again: its job (`max_instances`,
/// `None` when the job was deleted) keeps at most that many runs active.
pub(crate) fn requeue_slot(
    job_id: &str,
    max_instances: Option<i32>,
    taken: i64,
) -> super::StoreResult<()> {
    let max = max_instances.ok_or_else(|| {
        super::StoreError::Conflict(format!(
            "job {job_id:?} no longer exists; its run cannot be queued again"
        ))
    })?;
    free_slot(job_id, taken, max)
}
