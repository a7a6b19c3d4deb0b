//! Audit log entries as the store takes and returns them (see
//! `crate::audit` for what is recorded).

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// The mutating methods an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum AuditMethod {
    Post,
    Put,
    Patch,
    Delete,
}

impl AuditMethod {
    pub const ALL: [AuditMethod; 4] = [
        AuditMethod::Post,
        AuditMethod::Put,
        AuditMethod::Patch,
        AuditMethod::Delete,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AuditMethod::Post => "POST",
            AuditMethod::Put => "PUT",
            AuditMethod::Patch => "PATCH",
            AuditMethod::Delete => "DELETE",
        }
    }

    /// The audited method `method` is, if it is one.
    pub fn of(method: &axum::http::Method) -> Option<AuditMethod> {
        Self::parse(method.as_str())
    }

    pub fn parse(name: &str) -> Option<AuditMethod> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

impl std::fmt::Display for AuditMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AuditEntry {
    /// A UUIDv7: entries sort by it as by time. The cursor of the next page.
    pub id: Uuid,
    /// When the call was answered.
    pub at: DateTime<Utc>,
    /// The token's name, or `anonymous` (auth off, or no accepted token).
    #[schema(example = "ci")]
    pub actor: String,
    /// The token's id (none for `anonymous` and the bootstrap token).
    pub token_id: Option<Uuid>,
    pub method: AuditMethod,
    /// The path called (without the query string).
    #[schema(example = "/api/v1/jobs/nightly")]
    pub path: String,
    /// The job the call was about, if any.
    pub job_id: Option<String>,
    /// The run the call was about, if any.
    pub run_id: Option<Uuid>,
    /// The status answered.
    pub status: u16,
    /// The operator's reason, for a run state override.
    pub reason: Option<String>,
}

/// Which entries to read: newest first, older than `before` if given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub job_id: Option<String>,
    /// Only entries with an id below this (the previous page's last).
    pub before: Option<Uuid>,
    pub limit: i64,
}
