//! The job as the API returns it, built from a stored row, and the run
//! likewise: the one place where their kwargs are redacted (secrets shown
//! as `"***"`, see [`crate::redact`]) for every answer, list or single.

use chrono::{DateTime, Duration, Utc};

use crate::domain::{JobState, RunState};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::alerts::settings::AlertsSpec;
use crate::handlers::HandlerRegistry;
use crate::redact::{scrub_text, scrub_value};
use crate::schedule::format_duration;
use crate::store::{JobRow, RunRow};

/// The newest run of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastRun {
    pub run_id: Uuid,
    pub state: RunState,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The progress of a job's newest run, while it runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobProgress {
    pub run_id: Uuid,
    /// What the run reported last (its handler, or the service it called).
    #[schema(value_type = Object)]
    pub progress: Value,
    pub updated_at: Option<DateTime<Utc>>,
}

/// A job as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub job_id: String,
    pub handler: String,
    /// The handler's arguments; secret values (see the handler's kwargs
    /// schema) are shown as `"***"`.
    #[schema(value_type = Object)]
    pub kwargs: Value,
    /// The interval, Python `timedelta` style (`"7 days, 0:00:00"`).
    pub periodically: Option<String>,
    pub cron: Option<String>,
    pub timezone: String,
    /// The first run time, and the phase of an interval.
    pub when: DateTime<Utc>,
    pub misfire_grace_time: Option<String>,
    pub coalesce: bool,
    pub max_instances: i32,
    pub lock_key: Option<String>,
    pub timeout: Option<String>,
    pub max_retries: i32,
    pub retry_backoff: String,
    /// `running`, `pending` (a due run waits to start), `paused` or `completed`.
    pub state: String,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run: Option<LastRun>,
    /// The newest run's latest progress while it is running (absent
    /// otherwise, and while it has reported none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
    /// Runs by state.
    #[schema(value_type = Object)]
    pub run_counts: Value,
    pub description: Option<String>,
    pub tags: Vec<String>,
    /// `api`, or the default-jobs file the job came from.
    pub source: String,
    /// On failure records: the run that failed.
    pub failed_run_id: Option<Uuid>,
    /// The newest finished runs kept whatever their age (null: the
    /// service's `--retention` applies).
    pub keep_runs: Option<i32>,
    /// Webhooks (by name) that get every event of this job.
    pub notify: Vec<String>,
    /// This job's own alert settings (absent: the service's defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsSpec>,
    /// Its alerts raised and not closed: `failing`, `missed`, `overrun`,
    /// `dead_man`. A success closes them, and so does pausing, changing
    /// or deleting the job.
    pub alerts_open: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl JobView {
    /// The answer for `row`, its secrets masked with its handler's rules.
    pub fn build(row: JobRow, registry: &HandlerRegistry) -> Self {
        let duration = |ms: Option<i64>| ms.map(|ms| format_duration(Duration::milliseconds(ms)));
        // `pending`: the original service's word for a job with a run
        // waiting to start (a view, not a stored state).
        let state = if row.state == JobState::Running && row.has_queued_run() {
            "pending".to_string()
        } else {
            row.state.to_string()
        };
        let last_run = row
            .last_run_id
            .zip(row.last_run_state)
            .map(|(run_id, state)| LastRun {
                run_id,
                state,
                scheduled_for: row.last_run_scheduled_for,
                started_at: row.last_run_started_at,
                finished_at: row.last_run_finished_at,
            });
        let progress = match (row.last_run_id, row.last_run_state, row.last_run_progress) {
            (Some(run_id), Some(RunState::Running), Some(mut progress)) => {
                let secrets = registry.secrets_of(&row.handler, &row.kwargs);
                scrub_value(&mut progress, &secrets);
                Some(JobProgress {
                    run_id,
                    progress,
                    updated_at: row.last_run_progress_updated_at,
                })
            }
            _ => None,
        };
        let kwargs = registry.redact_kwargs(&row.handler, &row.kwargs);
        JobView {
            periodically: duration(row.interval_ms),
            misfire_grace_time: duration(row.misfire_grace_ms),
            timeout: duration(row.timeout_ms),
            retry_backoff: format_duration(Duration::milliseconds(row.retry_backoff_ms)),
            state,
            last_run,
            progress,
            run_counts: row.run_counts.unwrap_or_else(|| Value::Object(Map::new())),
            job_id: row.job_id,
            handler: row.handler,
            kwargs,
            cron: row.cron,
            timezone: row.timezone,
            when: row.start_at,
            coalesce: row.coalesce,
            max_instances: row.max_instances,
            lock_key: row.lock_key,
            max_retries: row.max_retries,
            next_run_at: row.next_run_at,
            description: row.description,
            tags: row.tags,
            source: row.source,
            failed_run_id: row.failed_run_id,
            keep_runs: row.keep_runs,
            notify: row.notify,
            alerts: (!row.alerts.is_empty()).then(|| row.alerts.to_spec()),
            alerts_open: row.alerts_open,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The answer for a run: its kwargs redacted, and every text a handler
/// may have filled from them (error, traceback, result, progress, history
/// reasons) scrubbed of their secrets, however old the run.
pub fn run_view(mut run: RunRow, registry: &HandlerRegistry) -> RunRow {
    let secrets = registry.secrets_of(&run.handler, &run.kwargs);
    run.kwargs = registry.redact_kwargs(&run.handler, &run.kwargs);
    if secrets.is_empty() {
        return run;
    }
    for text in [&mut run.error, &mut run.traceback].into_iter().flatten() {
        *text = scrub_text(text, &secrets);
    }
    for value in [&mut run.result, &mut run.progress].into_iter().flatten() {
        scrub_value(value, &secrets);
    }
    scrub_value(&mut run.history, &secrets);
    run
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobEnvelope {
    pub job: JobView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// How many jobs match the filter (all pages).
    pub jobs_count: i64,
    pub limit: i64,
    pub offset: i64,
}

/// The answer of a delete, as the original jobs service gave it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Removed {
    /// The ids of the jobs removed.
    pub removed: Vec<String>,
}

/// The answer of `DELETE /jobs/clean-failed`: the ids, and how many.
#[derive(Debug, Serialize, ToSchema)]
pub struct RemovedFailed {
    /// The ids of the failure records removed.
    pub removed: Vec<String>,
    /// How many were removed (`removed`'s length).
    pub deleted: usize,
}
