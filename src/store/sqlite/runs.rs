//! The `runs` table on the embedded store: reads, manual triggers,
//! cancellation and operator overrides.

use uuid::Uuid;

use super::{ManualRun, RunFilter, RunRow, SqliteStore, StoreResult};
use crate::domain::RunState;

impl SqliteStore {
    pub async fn run_get(&self, _run_id: Uuid) -> StoreResult<RunRow> {
        unimplemented!()
    }
    pub async fn run_list(&self, _filter: &RunFilter) -> StoreResult<(Vec<RunRow>, i64)> {
        unimplemented!()
    }
    pub async fn run_latest(&self, _job_id: &str) -> StoreResult<RunRow> {
        unimplemented!()
    }
    pub async fn run_trigger(&self, _run: &ManualRun) -> StoreResult<RunRow> {
        unimplemented!()
    }
    pub async fn run_cancel(&self, _run_id: Uuid, _reason: &str) -> StoreResult<RunRow> {
        unimplemented!()
    }
    pub async fn run_override_state(
        &self,
        _run_id: Uuid,
        _state: RunState,
        _reason: &str,
    ) -> StoreResult<RunRow> {
        unimplemented!()
    }
}
