//! Alerts as the stores keep them: the feed that turns events into alerts
//! (its cursor, a version every advance bumps, and the last clock check),
//! each job's [`AlertState`] while it holds something, and what the clock
//! checks read.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{EventPosition, Store, StoreResult};
use crate::alerts::rules::{AlertKind, AlertState};
use crate::alerts::settings::JobAlerts;

/// Where the alert feed stands, read with the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertFeed {
    /// The last event taken into account (`None`: none yet).
    pub position: Option<EventPosition>,
    /// Bumped by every advance: an advance computed from this version
    /// writes only if no other replica advanced meanwhile.
    pub version: i64,
    /// When the clock-driven alerts were last checked.
    pub checked_at: Option<DateTime<Utc>>,
    /// Whether any job holds an alert state (none: a success or a change
    /// needs no look at the states).
    pub any_state: bool,
    /// The store's clock when this was read.
    pub now: DateTime<Utc>,
}

/// An alert to write as an event.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    pub kind: AlertKind,
    pub job_id: String,
    /// The run whose end (or length) raised it, if one did.
    pub run_id: Option<Uuid>,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// What one step of the feed writes, in one transaction, if the feed is
/// still at `from_version`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertAdvance {
    pub from_version: i64,
    /// The feed's new position (unchanged when `None`).
    pub to: Option<EventPosition>,
    /// The clock check this step made (unchanged when `None`).
    pub checked_at: Option<DateTime<Utc>>,
    /// Jobs' new states; `None` removes a job's.
    pub states: Vec<(String, Option<AlertState>)>,
    pub alerts: Vec<NewAlert>,
}

/// A job the dead man's check looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedJob {
    pub job_id: String,
    pub alerts: JobAlerts,
    /// Its last change (created, changed, paused or resumed).
    pub changed_at: DateTime<Utc>,
    /// Its newest successful run's end, if one is kept.
    pub last_success: Option<DateTime<Utc>>,
}

/// A running run, for the `max_duration` check.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningRun {
    pub run_id: Uuid,
    pub job_id: String,
    pub started_at: DateTime<Utc>,
    pub alerts: JobAlerts,
}

impl Store {
    pub async fn alert_feed(&self) -> StoreResult<AlertFeed> {
        on_backend!(self, s => s.alert_feed().await)
    }

    /// The stored states of these jobs (those that have one).
    pub async fn alert_states(
        &self,
        job_ids: &[String],
    ) -> StoreResult<HashMap<String, AlertState>> {
        on_backend!(self, s => s.alert_states(job_ids).await)
    }

    /// Writes one step of the feed: its position and clock check, the
    /// jobs' states and the alerts as events, in one transaction; false,
    /// writing nothing, when another replica advanced the feed since
    /// `advance.from_version` was read.
    pub async fn alert_feed_advance(&self, advance: &AlertAdvance) -> StoreResult<bool> {
        on_backend!(self, s => s.alert_feed_advance(advance).await)
    }

    /// Running jobs (not paused, completed or failure records) with a dead
    /// man's window of their own, or all of them when `every`.
    pub async fn alert_watched_jobs(&self, every: bool) -> StoreResult<Vec<WatchedJob>> {
        on_backend!(self, s => s.alert_watched_jobs(every).await)
    }

    /// Running runs of jobs with a `max_duration` of their own, or all of
    /// them when `every`.
    pub async fn alert_running_runs(&self, every: bool) -> StoreResult<Vec<RunningRun>> {
        on_backend!(self, s => s.alert_running_runs(every).await)
    }
}
