//! Jobs owned by default-job YAML files, as the upsert sees and plans them.

use super::{JobRow, NewJob};
use crate::domain::JobState;

/// A stored job and the `state` its file declared when last applied.
#[derive(Debug, Clone)]
pub struct FileJobRow {
    pub row: JobRow,
    /// `running` or `paused`; `None` when no file backs the job (an API job,
    /// or one whose file was removed).
    pub file_state: Option<JobState>,
}

/// What to do with a file's job, decided from the stored row.
#[derive(Debug, Clone, PartialEq)]
pub enum FileJobPlan {
    /// The stored job already is what the file asks for.
    Keep,
    /// Insert or replace the job. `file_state` is the state the file declares.
    Write {
        job: Box<NewJob>,
        file_state: JobState,
    },
    /// Leave the stored job alone: the reason names the problem.
    Refuse(String),
}

impl FileJobPlan {
    /// The job to write for `job_id` and the state its file declares; or,
    /// when there is nothing to write, the result to answer at once.
    pub(crate) fn into_write(
        self,
        job_id: &str,
    ) -> Result<(Box<NewJob>, JobState), super::StoreResult<FileUpsertResult>> {
        let answer = |outcome| {
            Err(Ok(FileUpsertResult {
                outcome,
                released: Vec::new(),
            }))
        };
        match self {
            FileJobPlan::Keep => answer(FileUpsert::Unchanged),
            FileJobPlan::Refuse(reason) => answer(FileUpsert::Refused(reason)),
            FileJobPlan::Write { job, .. } if job.job_id != job_id => {
                Err(Err(super::StoreError::Conflict(format!(
                    "the plan for job {job_id:?} wrote job {:?}",
                    job.job_id
                ))))
            }
            FileJobPlan::Write { job, file_state } => Ok((job, file_state)),
        }
    }
}

/// What [`Store::job_upsert_from_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileUpsert {
    Inserted,
    Updated,
    Unchanged,
    Refused(String),
}

/// The outcome of an upsert, and the other jobs of the same file that it let
/// go (the file now defines another `job_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUpsertResult {
    pub outcome: FileUpsert,
    pub released: Vec<String>,
}

impl FileUpsertResult {
    /// The result of writing a file's job that `existed` (or not) before.
    pub(crate) fn new(existed: bool, released: Vec<String>) -> FileUpsertResult {
        let outcome = if existed {
            FileUpsert::Updated
        } else {
            FileUpsert::Inserted
        };
        FileUpsertResult { outcome, released }
    }
}
