//! The rules that decide a run's or a job's next state, as pure functions
//! of the stored facts and `now` (the store's clock: the database's on
//! PostgreSQL, the process's on the embedded store). Each store fetches the
//! facts, calls these, and writes what they decide; neither repeats them in
//! its own SQL.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{JobState, RunState, ScheduleKind};

/// Why a run that started too late was recorded `missed`.
pub const LATE_ERROR: &str = "missed: not started within misfire_grace_time";
/// Its history reason.
pub const LATE_REASON: &str = "start was later than misfire_grace_time allows";
/// How every reason of a time skipped for `max_instances` begins (the
/// alerts tell an overrun from a miss by it).
pub const SKIPPED_PREFIX: &str = "skipped: max_instances";
/// Why a scheduled time was skipped for `max_instances`.
pub const SKIPPED: &str =
    "skipped: max_instances runs of this job were queued or executing at its time";

/// Whether a run starts later than its misfire grace allows. Only a first
/// start can be late: retries and runs handed back at shutdown have started
/// before, and manual runs have no grace.
pub fn start_is_late(
    first_start: bool,
    scheduled_for: DateTime<Utc>,
    misfire_grace_ms: Option<i64>,
    now: DateTime<Utc>,
) -> bool {
    match misfire_grace_ms {
        Some(grace) if first_start => now > scheduled_for + Duration::milliseconds(grace),
        _ => false,
    }
}

/// Whether a job being created is due at once: a running one-shot job whose
/// time has come, within its misfire grace. (The store adds "while the
/// service is not paused".)
pub fn due_at_creation(
    kind: ScheduleKind,
    state: JobState,
    next_run_at: Option<DateTime<Utc>>,
    misfire_grace_ms: Option<i64>,
    now: DateTime<Utc>,
) -> bool {
    let Some(at) = next_run_at else { return false };
    may_be_due_at_creation(kind, state, next_run_at)
        && at <= now
        && !start_is_late(true, at, misfire_grace_ms, now)
}

/// Whether [`due_at_creation`] can hold at some `now`: the job is a running
/// one-shot job with a time. A store creating no such job need not read
/// its clock.
pub fn may_be_due_at_creation(
    kind: ScheduleKind,
    state: JobState,
    next_run_at: Option<DateTime<Utc>>,
) -> bool {
    kind == ScheduleKind::Once && state == JobState::Running && next_run_at.is_some()
}

/// What the store knows of a one-shot job when one of its runs ends.
#[derive(Debug, Clone, Copy)]
pub struct OneShotFacts {
    pub kind: ScheduleKind,
    pub state: JobState,
    pub next_run_at: Option<DateTime<Utc>>,
    /// A scheduled (not manual) run of it exists.
    pub has_fired: bool,
    /// Its runs still queued, waiting or running (not counting those ending now).
    pub active_runs: i64,
}

/// A one-shot job is `completed` once it has fired, has no future time and
/// no run queued, waiting or running. Whether it was paused meanwhile does
/// not matter: its run has ended, and resuming it cannot fire it again.
pub fn one_shot_completes(f: &OneShotFacts) -> bool {
    f.kind == ScheduleKind::Once
        && f.state != JobState::Completed
        && f.next_run_at.is_none()
        && f.has_fired
        && f.active_runs == 0
}

/// What a rescue does with a running run whose lease expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostLease {
    /// `queued` (retries remain), `failed`, or `cancelled` (a cancel was
    /// requested: it is never lost to a rescue).
    pub next: RunState,
    pub error: String,
    /// History reasons: for the `running → dead` step, then `dead → next`.
    pub dead_reason: String,
    pub next_reason: &'static str,
}

/// The rescue rule: a run whose instance stopped heartbeating is queued
/// again while retries remain (its attempt counted), else it fails.
pub fn after_lost_lease(
    cancel_requested: bool,
    attempt: i32,
    max_retries: i32,
    instance: Option<&str>,
) -> LostLease {
    let instance = instance.unwrap_or("?");
    let (next, error, next_reason) = if cancel_requested {
        (
            RunState::Cancelled,
            format!("cancelled; its instance {instance} stopped heartbeating before it had stopped the run"),
            "cancel requested before the lease was lost",
        )
    } else if attempt <= max_retries {
        (
            RunState::Queued,
            format!("lease expired: instance {instance} stopped heartbeating"),
            "re-queued after a lost lease",
        )
    } else {
        (
            RunState::Failed,
            format!("lease expired: instance {instance} stopped heartbeating"),
            "no retries left after a lost lease",
        )
    };
    LostLease {
        next,
        error,
        dead_reason: format!("lease expired on {instance}"),
        next_reason,
    }
}

/// How a run waiting for a `max_instances` slot is decided when the runs
/// holding its job's slots end. It waited because every slot was held by a
/// running run when it came due; if the first of those to end had returned
/// by its scheduled time (`first_end`), the slot was in truth free then
/// (only the outcome was not written yet) and it is queued; otherwise a run
/// was still executing at its time, and the time is skipped.
pub fn release_waiting(first_end: DateTime<Utc>, scheduled_for: DateTime<Utc>) -> Released {
    if first_end <= scheduled_for {
        Released {
            state: RunState::Queued,
            error: None,
            result: None,
            reason: "the run holding its slot had ended by its time",
        }
    } else {
        Released {
            state: RunState::Missed,
            error: Some(SKIPPED),
            result: Some(json!({"skipped": "max_instances"})),
            reason: SKIPPED,
        }
    }
}

/// A waiting run's decision (see [`release_waiting`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Released {
    pub state: RunState,
    pub error: Option<&'static str>,
    pub result: Option<Value>,
    pub reason: &'static str,
}

/// The facts of a failed run that its failure record describes.
#[derive(Debug, Clone)]
pub struct FailedRun<'a> {
    pub run_id: Uuid,
    pub job_id: &'a str,
    pub handler: &'a str,
    pub kwargs: &'a Value,
    pub state: RunState,
    pub error: Option<&'a str>,
    pub traceback: Option<&'a str>,
}

/// A failure record: the original service's inert `ErrorHandler` job
/// (paused, never fires) whose kwargs describe the failure, one per failed
/// run, so failures are listed and re-run like jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRecord {
    pub job_id: String,
    pub kwargs: Value,
    pub description: String,
    pub failed_run_id: Uuid,
}

/// The failure record of a run that ended `failed` or `timed_out`.
pub fn failure_record(run: &FailedRun<'_>) -> FailureRecord {
    FailureRecord {
        job_id: format!("failed-{}", run.run_id),
        kwargs: json!({
            "exc_str": run.error.unwrap_or("failed"),
            "exc_traceback": run.traceback,
            "failed_job_id": run.job_id,
            "failed_job_handler": run.handler,
            "failed_handler_kwargs": run.kwargs,
            "failed_run_id": run.run_id.to_string(),
        }),
        description: format!(
            "run {} of job {} ended {}",
            run.run_id, run.job_id, run.state
        ),
        failed_run_id: run.run_id,
    }
}

/// One step of a run's `history`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry<'a> {
    pub at: DateTime<Utc>,
    pub from: Option<RunState>,
    pub to: RunState,
    pub instance: Option<&'a str>,
    pub reason: &'a str,
}

/// The history reason of a claim.
pub fn claimed_reason(attempt: i32) -> String {
    format!("claimed (attempt {attempt})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_900_000_000 + s, 0).unwrap()
    }

    #[test]
    fn lateness_applies_to_first_starts_with_a_grace_only() {
        assert!(!start_is_late(true, t(0), Some(1000), t(1)));
        assert!(start_is_late(true, t(0), Some(1000), t(2)));
        assert!(!start_is_late(false, t(0), Some(1000), t(60)));
        assert!(!start_is_late(true, t(0), None, t(3600)));
    }

    #[test]
    fn a_one_shot_job_is_due_at_creation_within_its_grace() {
        let due =
            |state, at, grace, now| due_at_creation(ScheduleKind::Once, state, at, grace, now);
        assert!(due(JobState::Running, Some(t(0)), None, t(5)));
        assert!(due(JobState::Running, Some(t(0)), Some(5000), t(5)));
        assert!(!due(JobState::Running, Some(t(0)), Some(4000), t(5)));
        assert!(!due(JobState::Running, Some(t(6)), None, t(5)));
        assert!(!due(JobState::Paused, Some(t(0)), None, t(5)));
        assert!(!due(JobState::Running, None, None, t(5)));
        assert!(!due_at_creation(
            ScheduleKind::Interval,
            JobState::Running,
            Some(t(0)),
            None,
            t(5)
        ));
    }

    #[test]
    fn only_a_running_one_shot_job_with_a_time_may_be_due_at_creation() {
        let may = |kind, state, at| may_be_due_at_creation(kind, state, at);
        assert!(may(ScheduleKind::Once, JobState::Running, Some(t(0))));
        assert!(!may(ScheduleKind::Once, JobState::Running, None));
        assert!(!may(ScheduleKind::Once, JobState::Paused, Some(t(0))));
        assert!(!may(ScheduleKind::Cron, JobState::Running, Some(t(0))));
        // Whenever it may not be, it is not, at any time.
        for now in [t(-3600), t(0), t(3600)] {
            for (kind, state, at) in [
                (ScheduleKind::Once, JobState::Running, None),
                (ScheduleKind::Once, JobState::Paused, Some(t(0))),
                (ScheduleKind::Interval, JobState::Running, Some(t(0))),
            ] {
                assert!(!may(kind, state, at));
                assert!(!due_at_creation(kind, state, at, None, now));
            }
        }
    }

    #[test]
    fn a_one_shot_job_completes_when_fired_and_idle() {
        let done = OneShotFacts {
            kind: ScheduleKind::Once,
            state: JobState::Paused,
            next_run_at: None,
            has_fired: true,
            active_runs: 0,
        };
        assert!(one_shot_completes(&done));
        assert!(!one_shot_completes(&OneShotFacts {
            active_runs: 1,
            ..done
        }));
        assert!(!one_shot_completes(&OneShotFacts {
            has_fired: false,
            ..done
        }));
        assert!(!one_shot_completes(&OneShotFacts {
            next_run_at: Some(t(0)),
            ..done
        }));
        assert!(!one_shot_completes(&OneShotFacts {
            state: JobState::Completed,
            ..done
        }));
        assert!(!one_shot_completes(&OneShotFacts {
            kind: ScheduleKind::Cron,
            ..done
        }));
    }

    #[test]
    fn a_lost_lease_retries_while_attempts_remain_and_never_loses_a_cancel() {
        assert_eq!(
            after_lost_lease(false, 1, 1, Some("a")).next,
            RunState::Queued
        );
        let failed = after_lost_lease(false, 2, 1, Some("a"));
        assert_eq!(failed.next, RunState::Failed);
        assert_eq!(
            failed.error,
            "lease expired: instance a stopped heartbeating"
        );
        assert_eq!(failed.dead_reason, "lease expired on a");
        assert_eq!(after_lost_lease(true, 1, 5, None).next, RunState::Cancelled);
    }

    #[test]
    fn a_waiting_run_is_queued_only_if_its_slot_was_free_at_its_time() {
        assert_eq!(release_waiting(t(10), t(10)).state, RunState::Queued);
        let skipped = release_waiting(t(11), t(10));
        assert_eq!(skipped.state, RunState::Missed);
        assert_eq!(skipped.result, Some(json!({"skipped": "max_instances"})));
        assert!(SKIPPED.starts_with(SKIPPED_PREFIX));
    }

    #[test]
    fn a_failure_record_describes_the_run() {
        let id = Uuid::nil();
        let kwargs = json!({"a": 1});
        let record = failure_record(&FailedRun {
            run_id: id,
            job_id: "j",
            handler: "echo",
            kwargs: &kwargs,
            state: RunState::TimedOut,
            error: None,
            traceback: Some("tb"),
        });
        assert_eq!(record.job_id, format!("failed-{id}"));
        assert_eq!(record.kwargs["exc_str"], "failed");
        assert_eq!(record.kwargs["failed_handler_kwargs"], kwargs);
        assert_eq!(
            record.description,
            format!("run {id} of job j ended timed_out")
        );
    }
}
