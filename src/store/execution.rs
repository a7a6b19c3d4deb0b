//! What the workers tell the store: claims, outcomes, retries, heartbeats.

use serde_json::Value;
use uuid::Uuid;

use crate::domain::RunState;

/// Who claims runs, for how long, and how many at most (the worker slots
/// reserved for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimSlots {
    pub instance: String,
    pub lease_ms: i64,
    pub limit: i64,
}

impl ClaimSlots {
    /// Claims nothing: for writers with no workers to hand runs to.
    pub fn none(instance: &str) -> Self {
        ClaimSlots {
            instance: instance.to_string(),
            lease_ms: 0,
            limit: 0,
        }
    }
}

/// Fences a write to the run this worker claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunClaim {
    pub run_id: Uuid,
    pub attempt: i32,
    pub instance: String,
}

/// How an attempt ended, to record.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// `succeeded`, `failed`, `timed_out` or `cancelled`.
    pub state: RunState,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub traceback: Option<String>,
    pub reason: String,
    /// How long ago the handler returned (set as the outcome is written):
    /// `finished_at` is that instant, by database time, and a run waiting
    /// for this one's slot is decided by it.
    pub ended_ago_ms: i64,
}

/// A failed attempt to try again after `delay_ms`.
#[derive(Debug, Clone)]
pub struct RunRetry {
    pub delay_ms: i64,
    pub error: String,
    pub traceback: Option<String>,
    pub reason: String,
}

/// The latest state of a running attempt, as its heartbeat sees it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HeartbeatAck {
    pub run_id: Uuid,
    pub attempt: i32,
    pub cancel_requested: bool,
}
