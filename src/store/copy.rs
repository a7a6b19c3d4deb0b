//! Moving one store's contents into another (`jobsd copy`): runs inserted
//! as they are, and what a job row keeps beyond its definition ([`NewJob`]
//! carries neither its timestamps nor the state its default-jobs file
//! declared).
//!
//! [`NewJob`]: super::NewJob

use chrono::{DateTime, Utc};

use super::{RunRow, Store, StoreResult};
use crate::domain::JobState;

/// A copied job's timestamps and file state, as the source had them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobImportMeta {
    pub job_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The state its default-jobs file declared when last applied (`None`:
    /// no file backs it).
    pub file_state: Option<JobState>,
}

impl Store {
    /// Inserts runs exactly as they are (ids, states, attempts, times,
    /// leases, results, history), all or none, and returns how many were
    /// inserted. A run is skipped when its `run_id` is present already, when
    /// its job's scheduled time has a run already (the exactly-once index),
    /// or when the store has no job `job_id`. Wakes the workers when a
    /// queued run was inserted.
    pub async fn run_import(&self, runs: &[RunRow]) -> StoreResult<u64> {
        on_backend!(self, s => s.run_import(runs).await)
    }

    /// Sets the timestamps and file state of jobs that exist (as
    /// [`Store::job_insert_many`] wrote them); returns how many it found.
    /// Each job's row version changes.
    pub async fn job_import_meta(&self, jobs: &[JobImportMeta]) -> StoreResult<u64> {
        on_backend!(self, s => s.job_import_meta(jobs).await)
    }
}
