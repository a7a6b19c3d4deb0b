//! What to record when an attempt ends: the final state, a retry, a hand
//! back, or nothing. Pure (the jitter is a parameter), so every branch of
//! the run lifecycle is unit-tested here.

use std::time::Duration;

use super::execute::{bound_result, bound_text, Execution, StopReason};
use super::retry::retry_delay;
use crate::domain::RunState;
use crate::store::{RunOutcome, RunRetry, RunRow};

/// The write an ended attempt calls for.
#[derive(Debug, Clone)]
pub enum Write {
    /// The run ends in `RunOutcome::state`.
    Finish(RunOutcome),
    /// The run is queued again after a backoff.
    Retry(RunRetry),
    /// Shutdown: back to the queue at once, the attempt not counted.
    HandBack,
    /// The lease was lost: the run is another instance's now.
    Nothing,
    /// A callback run's request was accepted: the run stays `running`,
    /// waiting for its service to report back until `deadline`.
    AwaitCallback {
        deadline: chrono::DateTime<chrono::Utc>,
        reason: String,
    },
}

fn finish(
    state: RunState,
    result: Option<serde_json::Value>,
    error: Option<String>,
    traceback: Option<String>,
    reason: String,
) -> Write {
    Write::Finish(RunOutcome {
        state,
        result,
        error,
        traceback,
        reason,
        // Set by the completer when it writes the outcome.
        ended_ago_ms: 0,
    })
}

/// Decides the write for `run`'s attempt that ended as `execution`.
/// Failures and timeouts are retried while `attempt <= max_retries`
/// (fatal handler errors never are); `jitter` in 0..1 spreads the backoff.
/// Results and error texts are bounded by `max_result_bytes` each.
pub fn decide(run: &RunRow, execution: Execution, max_result_bytes: usize, jitter: f64) -> Write {
    let retries_left = run.attempt <= run.max_retries;
    let retry = |error: String, traceback: Option<String>, what: &str| {
        let base = Duration::from_millis(run.retry_backoff_ms.max(0) as u64);
        let delay = retry_delay(base, run.attempt, jitter);
        Write::Retry(RunRetry {
            delay_ms: delay.as_millis() as i64,
            reason: format!(
                "{what}; retry {} of {} in {:.1}s",
                run.attempt,
                run.max_retries,
                delay.as_secs_f64()
            ),
            error,
            traceback,
        })
    };
    match execution {
        Execution::Succeeded(value) => finish(
            RunState::Succeeded,
            Some(bound_result(value, max_result_bytes)),
            None,
            None,
            "handler returned".into(),
        ),
        Execution::Failed {
            error,
            traceback,
            retryable,
        } => {
            let error = bound_text(&error, max_result_bytes);
            let traceback = bound_text(&traceback, max_result_bytes);
            if retryable && retries_left {
                retry(error, Some(traceback), "failed")
            } else {
                let reason = if retryable {
                    "failed; no retries left"
                } else {
                    "failed; not retryable"
                };
                finish(
                    RunState::Failed,
                    None,
                    Some(error),
                    Some(traceback),
                    reason.into(),
                )
            }
        }
        Execution::TimedOut(after) => {
            let error = format!("timed out after {:.1}s", after.as_secs_f64());
            if retries_left {
                retry(error, None, "timed out")
            } else {
                finish(RunState::TimedOut, None, Some(error.clone()), None, error)
            }
        }
        Execution::Stopped(StopReason::Cancelled(reason)) => finish(
            RunState::Cancelled,
            None,
            Some(reason.clone()),
            None,
            reason,
        ),
        Execution::Stopped(StopReason::LeaseLost) => Write::Nothing,
        Execution::Stopped(StopReason::Shutdown) => Write::HandBack,
    }
}

/// [`decide`] for an attempt of a callback run (`crate::callbacks`): an
/// accepted request (a success) waits for its callback, until the run's
/// deadline (`window` from its start, end to end); any other end is
/// decided as for every run.
pub fn decide_callback(
    run: &RunRow,
    execution: Execution,
    max_result_bytes: usize,
    jitter: f64,
    window: Duration,
) -> Write {
    match execution {
        Execution::Succeeded(_) => {
            let started = run.started_at.unwrap_or(run.created_at);
            let deadline = crate::callbacks::rules::deadline(started, window);
            Write::AwaitCallback {
                deadline,
                reason: format!(
                    "request accepted; waiting for the callback until {}",
                    deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ),
            }
        }
        other => decide(run, other, max_result_bytes, jitter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Trigger;
    use chrono::Utc;
    use serde_json::json;

    fn run(attempt: i32, max_retries: i32) -> RunRow {
        RunRow {
            run_id: uuid::Uuid::new_v4(),
            job_id: "j".into(),
            handler: "log".into(),
            kwargs: json!({}),
            trigger: Trigger::Manual,
            scheduled_for: Utc::now(),
            run_after: Utc::now(),
            created_at: Utc::now(),
            started_at: Some(Utc::now()),
            finished_at: None,
            state: RunState::Running,
            attempt,
            max_retries,
            retry_backoff_ms: 1000,
            timeout_ms: None,
            misfire_grace_ms: None,
            lock_key: None,
            instance: Some("me".into()),
            lease_expires_at: None,
            cancel_requested: false,
            result: None,
            error: None,
            traceback: None,
            progress: None,
            progress_updated_at: None,
            history: json!([]),
        }
    }

    fn failed(retryable: bool) -> Execution {
        Execution::Failed {
            error: "boom".into(),
            traceback: "trace".into(),
            retryable,
        }
    }

    fn state(write: &Write) -> String {
        match write {
            Write::Finish(o) => o.state.to_string(),
            Write::Retry(_) => "retry".into(),
            Write::HandBack => "hand back".into(),
            Write::Nothing => "nothing".into(),
            Write::AwaitCallback { .. } => "await".into(),
        }
    }

    #[test]
    fn an_accepted_callback_request_waits_until_the_deadline_from_the_start() {
        let mut r = run(1, 1);
        let started = Utc::now() - chrono::Duration::seconds(10);
        r.started_at = Some(started);
        let write = decide_callback(
            &r,
            Execution::Succeeded(json!({"status": 202})),
            1024,
            0.0,
            Duration::from_secs(60),
        );
        let Write::AwaitCallback { deadline, reason } = write else {
            panic!("{write:?}")
        };
        assert_eq!(deadline, started + chrono::Duration::seconds(60));
        assert!(reason.starts_with("request accepted"), "{reason}");
        // A refused request fails the attempt as any failure does.
        let w = Duration::from_secs(60);
        assert_eq!(
            state(&decide_callback(&r, failed(true), 1024, 0.0, w)),
            "retry"
        );
        assert_eq!(
            state(&decide_callback(&run(2, 1), failed(true), 1024, 0.0, w)),
            "failed"
        );
    }

    #[test]
    fn success_stores_the_bounded_result() {
        let write = decide(
            &run(1, 0),
            Execution::Succeeded(json!({"ok": true})),
            1024,
            0.5,
        );
        let Write::Finish(o) = write else {
            panic!("{write:?}")
        };
        assert_eq!(
            (o.state.as_str(), o.result),
            ("succeeded", Some(json!({"ok": true})))
        );
    }

    #[test]
    fn retryable_failures_retry_while_attempts_remain() {
        let write = decide(&run(1, 2), failed(true), 1024, 1.0);
        let Write::Retry(r) = write else {
            panic!("{write:?}")
        };
        assert_eq!(r.delay_ms, 1000);
        assert_eq!(r.reason, "failed; retry 1 of 2 in 1.0s");
        assert_eq!(r.traceback.as_deref(), Some("trace"));
        let Write::Retry(r) = decide(&run(2, 2), failed(true), 1024, 1.0) else {
            panic!()
        };
        assert_eq!(r.delay_ms, 2000, "doubles");
        assert_eq!(
            state(&decide(&run(3, 2), failed(true), 1024, 1.0)),
            "failed",
            "last attempt"
        );
    }

    #[test]
    fn fatal_failures_never_retry() {
        let Write::Finish(o) = decide(&run(1, 5), failed(false), 1024, 0.0) else {
            panic!()
        };
        assert_eq!(
            (o.state.as_str(), o.reason.as_str()),
            ("failed", "failed; not retryable")
        );
        assert_eq!(o.error.as_deref(), Some("boom"));
    }

    #[test]
    fn timeouts_retry_then_end_timed_out() {
        let after = Execution::TimedOut(Duration::from_millis(1500));
        assert_eq!(
            state(&decide(&run(1, 1), after.clone(), 1024, 0.0)),
            "retry"
        );
        let Write::Finish(o) = decide(&run(2, 1), after, 1024, 0.0) else {
            panic!()
        };
        assert_eq!(o.state, RunState::TimedOut);
        assert_eq!(o.error.as_deref(), Some("timed out after 1.5s"));
    }

    #[test]
    fn stops_map_to_cancelled_nothing_or_hand_back() {
        let cancelled = Execution::Stopped(StopReason::Cancelled("by operator".into()));
        assert_eq!(
            state(&decide(&run(1, 3), cancelled, 1024, 0.0)),
            "cancelled",
            "no retry after a cancel"
        );
        assert_eq!(
            state(&decide(
                &run(1, 3),
                Execution::Stopped(StopReason::LeaseLost),
                1024,
                0.0
            )),
            "nothing"
        );
        assert_eq!(
            state(&decide(
                &run(1, 3),
                Execution::Stopped(StopReason::Shutdown),
                1024,
                0.0
            )),
            "hand back"
        );
    }
}
