//! Label values, each from a fixed set: no label takes its value from what
//! a client sends (a raw path, an unknown method), so the series stay few.

use axum::http::Method;
use serde_json::Value;

use crate::domain::RunState;
use crate::store::FiredRun;

/// The `route` of a request no route matched (a 404 from the fallback).
pub const UNMATCHED: &str = "unmatched";

/// The `method` label: the usual methods by name, anything else `other`.
pub fn method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The `route` label: the template the router matched
/// (`/api/v1/jobs/{id}`), never the raw path; [`UNMATCHED`] when no
/// route matched, or only a fallback's catch-all did (axum names those
/// with a `__private__` parameter).
pub fn route(matched: Option<&str>) -> &str {
    match matched {
        Some(template) if !template.contains("__private__") => template,
        _ => UNMATCHED,
    }
}

/// Why scheduled times were missed (`jobsd_missed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MissedReason {
    /// Later than the job's `misfire_grace_time`: found so at firing
    /// (the service was down, or the scheduler behind), or at the claim
    /// (the queue was behind).
    MisfireGrace,
    /// Every `max_instances` slot of the job was taken.
    MaxInstances,
    /// Beyond the runs one firing queues when `coalesce` is false.
    MaxRunsPerFiring,
}

impl MissedReason {
    pub const ALL: [MissedReason; 3] = [
        MissedReason::MisfireGrace,
        MissedReason::MaxInstances,
        MissedReason::MaxRunsPerFiring,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            MissedReason::MisfireGrace => "misfire_grace",
            MissedReason::MaxInstances => "max_instances",
            MissedReason::MaxRunsPerFiring => "max_runs_per_firing",
        }
    }
}

/// For a fired `missed` record: why, and how many scheduled times it
/// stands for (one record may count many, see `crate::scheduler::plan`).
/// `None` for a run that was queued or left waiting.
pub fn missed_of(run: &FiredRun) -> Option<(MissedReason, u64)> {
    if run.state != RunState::Missed {
        return None;
    }
    let result = run.result.as_ref();
    let count = result
        .and_then(|r| r.get("missed_count"))
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1);
    let reason = match result
        .and_then(|r| r.get("skipped"))
        .and_then(Value::as_str)
    {
        Some("max_instances") => MissedReason::MaxInstances,
        Some("max_runs_per_firing") => MissedReason::MaxRunsPerFiring,
        _ => MissedReason::MisfireGrace,
    };
    Some((reason, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Trigger;
    use serde_json::json;

    #[test]
    fn routes_are_templates_and_fallbacks_one_fixed_label() {
        assert_eq!(route(Some("/api/v1/jobs/{id}")), "/api/v1/jobs/{id}");
        assert_eq!(route(Some("/metrics")), "/metrics");
        assert_eq!(route(None), UNMATCHED);
        assert_eq!(
            route(Some("/api/v1/{*__private__axum_fallback}")),
            UNMATCHED
        );
    }

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method(&Method::GET), "GET");
        assert_eq!(method(&Method::DELETE), "DELETE");
        assert_eq!(method(&Method::from_bytes(b"PROPFIND").unwrap()), "other");
        assert_eq!(method(&Method::TRACE), "other");
    }

    fn fired(state: RunState, result: Option<Value>) -> FiredRun {
        FiredRun {
            job_id: "j".into(),
            scheduled_for: chrono::Utc::now(),
            trigger: Trigger::Schedule,
            state,
            reason: String::new(),
            result,
        }
    }

    #[test]
    fn missed_records_count_the_times_they_stand_for() {
        assert_eq!(missed_of(&fired(RunState::Queued, None)), None);
        assert_eq!(missed_of(&fired(RunState::Waiting, None)), None);
        assert_eq!(
            missed_of(&fired(
                RunState::Missed,
                Some(json!({"missed_count": 12, "more_not_counted": false}))
            )),
            Some((MissedReason::MisfireGrace, 12))
        );
        assert_eq!(
            missed_of(&fired(
                RunState::Missed,
                Some(json!({"skipped": "max_instances"}))
            )),
            Some((MissedReason::MaxInstances, 1))
        );
        assert_eq!(
            missed_of(&fired(
                RunState::Missed,
                Some(json!({"missed_count": 7, "skipped": "max_runs_per_firing"}))
            )),
            Some((MissedReason::MaxRunsPerFiring, 7))
        );
        // A record without a count stands for one time.
        assert_eq!(
            missed_of(&fired(RunState::Missed, None)),
            Some((MissedReason::MisfireGrace, 1))
        );
    }

    #[test]
    fn reasons_have_distinct_names() {
        let names: std::collections::HashSet<_> =
            MissedReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), MissedReason::ALL.len());
    }
}
