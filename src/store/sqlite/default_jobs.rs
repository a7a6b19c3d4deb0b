//! Default-job files' jobs on the embedded store (see the PostgreSQL
//! store's module of the same name for the contract). With one writer, the
//! upsert's transaction alone makes concurrent loaders safe.

use super::{FileJobPlan, FileJobRow, FileUpsertResult, SqliteStore, StoreResult};
use crate::domain::JobState;

impl SqliteStore {
    pub async fn job_upsert_from_file(
        &self,
        _job_id: &str,
        _plan: impl FnOnce(Option<&FileJobRow>) -> FileJobPlan,
    ) -> StoreResult<FileUpsertResult> {
        unimplemented!()
    }
    pub async fn job_release_files(
        &self,
        _dir_prefix: &str,
        _present: &[String],
    ) -> StoreResult<Vec<String>> {
        unimplemented!()
    }
    pub async fn job_file_state(&self, _job_id: &str) -> StoreResult<Option<JobState>> {
        unimplemented!()
    }
}
