//! The `jobs` table on the embedded store.

use chrono::{DateTime, Utc};

use super::{ClaimSlots, JobFilter, JobRow, NewJob, RunRow, SqliteStore, StoreResult};
use crate::domain::JobState;

impl SqliteStore {
    pub async fn job_insert(&self, _job: &NewJob, _instance: &str) -> StoreResult<JobRow> {
        unimplemented!()
    }
    pub async fn job_insert_many(
        &self,
        _jobs: &[NewJob],
        _claim: &ClaimSlots,
    ) -> StoreResult<Vec<RunRow>> {
        unimplemented!()
    }
    pub async fn job_replace(&self, _job: &NewJob, _version: i64) -> StoreResult<JobRow> {
        unimplemented!()
    }
    pub async fn job_get(&self, _job_id: &str) -> StoreResult<JobRow> {
        unimplemented!()
    }
    pub async fn job_list(&self, _filter: &JobFilter) -> StoreResult<(Vec<JobRow>, i64)> {
        unimplemented!()
    }
    pub async fn job_set_state(
        &self,
        _job_id: &str,
        _state: JobState,
        _next_run_at: Option<DateTime<Utc>>,
        _version: i64,
    ) -> StoreResult<JobRow> {
        unimplemented!()
    }
    pub async fn job_delete(&self, _job_id: &str) -> StoreResult<()> {
        unimplemented!()
    }
    pub async fn job_delete_failed(&self) -> StoreResult<u64> {
        unimplemented!()
    }
}
