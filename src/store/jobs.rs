//! Jobs as the store takes and returns them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::FromRow;
use uuid::Uuid;

use crate::alerts::settings::JobAlerts;
use crate::domain::{JobState, RunState, ScheduleKind};

/// Which jobs a listing covers: failure records, the others, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    #[default]
    All,
    Failed,
    User,
}

/// A listing's filters and page.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub job_type: JobType,
    pub handler: Option<String>,
    pub state: Option<JobState>,
    pub limit: i64,
    pub offset: i64,
}

/// A validated job definition, ready to store (see `crate::job_spec`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub job_id: String,
    pub handler: String,
    pub kwargs: Value,
    pub schedule_kind: ScheduleKind,
    pub interval_ms: Option<i64>,
    pub cron: Option<String>,
    pub timezone: String,
    pub start_at: DateTime<Utc>,
    pub misfire_grace_ms: Option<i64>,
    pub coalesce: bool,
    pub max_instances: i32,
    pub lock_key: Option<String>,
    pub timeout_ms: Option<i64>,
    pub max_retries: i32,
    pub retry_backoff_ms: i64,
    /// `running` or `paused`.
    pub state: JobState,
    pub next_run_at: Option<DateTime<Utc>>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub source: String,
    pub failed_run_id: Option<Uuid>,
    /// Keep the newest N finished runs whatever their age, instead of the
    /// retention's age rule (`None`: the age rule).
    pub keep_runs: Option<i32>,
    /// Webhooks (by name) that get every event of this job.
    pub notify: Vec<String>,
    /// Its own alert settings (the rest are the service's).
    pub alerts: JobAlerts,
}

/// A stored job with a summary of its newest run.
#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    pub job_id: String,
    pub handler: String,
    pub kwargs: Value,
    pub schedule_kind: ScheduleKind,
    pub interval_ms: Option<i64>,
    pub cron: Option<String>,
    pub timezone: String,
    pub start_at: DateTime<Utc>,
    pub misfire_grace_ms: Option<i64>,
    pub coalesce: bool,
    pub max_instances: i32,
    pub lock_key: Option<String>,
    pub timeout_ms: Option<i64>,
    pub max_retries: i32,
    pub retry_backoff_ms: i64,
    pub state: JobState,
    pub next_run_at: Option<DateTime<Utc>>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub source: String,
    pub failed_run_id: Option<Uuid>,
    pub keep_runs: Option<i32>,
    pub notify: Vec<String>,
    #[sqlx(json)]
    pub alerts: JobAlerts,
    /// Its alerts raised and not closed (`failing`, `dead_man`, ...).
    pub alerts_open: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_run_id: Option<Uuid>,
    pub last_run_state: Option<RunState>,
    pub last_run_scheduled_for: Option<DateTime<Utc>>,
    pub last_run_started_at: Option<DateTime<Utc>>,
    pub last_run_finished_at: Option<DateTime<Utc>>,
    /// The newest run's progress and when it was written (shown while it runs).
    pub last_run_progress: Option<Value>,
    pub last_run_progress_updated_at: Option<DateTime<Utc>>,
    /// Runs by state, e.g. `{"succeeded": 3, "failed": 1}`.
    pub run_counts: Option<Value>,
    /// A scheduled (not manual) run exists: a one-shot job has fired.
    pub has_fired: bool,
    /// The row's version as read (its `xmin`: every write of the row, by
    /// any replica of any version, changes it). Writes that depend on what
    /// was read are conditional on it ([`Store::job_replace`]).
    pub row_version: i64,
}

impl JobRow {
    /// A run of this job is queued. Read from the live counts in
    /// `run_counts` rather than probed again, so a job read makes one probe
    /// of the live runs.
    pub fn has_queued_run(&self) -> bool {
        self.run_count(RunState::Queued) > 0
    }

    /// How many of this job's runs are in `state`.
    pub fn run_count(&self, state: RunState) -> i64 {
        self.run_counts
            .as_ref()
            .and_then(|counts| counts.get(state.as_str()))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    }

    /// A stored job as the definition to insert elsewhere: everything, with
    /// its state and next fire time as they are.
    pub fn definition(&self) -> NewJob {
        NewJob {
            job_id: self.job_id.clone(),
            handler: self.handler.clone(),
            kwargs: self.kwargs.clone(),
            schedule_kind: self.schedule_kind,
            interval_ms: self.interval_ms,
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            start_at: self.start_at,
            misfire_grace_ms: self.misfire_grace_ms,
            coalesce: self.coalesce,
            max_instances: self.max_instances,
            lock_key: self.lock_key.clone(),
            timeout_ms: self.timeout_ms,
            max_retries: self.max_retries,
            retry_backoff_ms: self.retry_backoff_ms,
            state: self.state,
            next_run_at: self.next_run_at,
            description: self.description.clone(),
            tags: self.tags.clone(),
            source: self.source.clone(),
            failed_run_id: self.failed_run_id,
            keep_runs: self.keep_runs,
            notify: self.notify.clone(),
            alerts: self.alerts,
        }
    }
}
