//! Replicas and held lock keys, as the API shows them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use utoipa::ToSchema;
use uuid::Uuid;

/// A replica as the API shows it.
#[derive(Debug, Clone, FromRow, Serialize, ToSchema)]
pub struct InstanceRow {
    pub name: String,
    pub version: String,
    /// The HTTP address it listens on.
    pub address: Option<String>,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    /// Heartbeat seen within two leases.
    pub alive: bool,
    /// Runs it is executing now.
    pub running_runs: i64,
}

/// A lock key held by a running run.
#[derive(Debug, Clone, FromRow, Serialize, ToSchema)]
pub struct LockRow {
    pub lock_key: String,
    pub run_id: Uuid,
    pub job_id: String,
    pub instance: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
}
