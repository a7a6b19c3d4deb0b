//! The pure rules of remote completion: a callback run's deadline, what a
//! heartbeat makes of it, and whether a call may act on its run. Time is a
//! parameter; nothing here reads a clock or the database.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::RunState;

/// How long a callback run may take: its `timeout`, else `default`
/// (`--callback-timeout`).
pub fn window(timeout_ms: Option<i64>, default: Duration) -> Duration {
    match timeout_ms {
        Some(ms) if ms > 0 => Duration::from_millis(ms as u64),
        _ => default,
    }
}

fn plus(at: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(window)
        .ok()
        .and_then(|w| at.checked_add_signed(w))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The deadline of a callback run accepted by its service: the window
/// counts end to end, from the attempt's start (not from the answer).
pub fn deadline(started_at: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    plus(started_at, window)
}

/// The deadline after a heartbeat at `now`: a full window from now, never
/// earlier than it was. A service that heartbeats keeps its run alive as
/// long as it does (the window becomes an inactivity limit); one that
/// stops has a window from its last heartbeat.
pub fn heartbeat_deadline(
    now: DateTime<Utc>,
    window: Duration,
    current: DateTime<Utc>,
) -> DateTime<Utc> {
    plus(now, window).max(current)
}

/// The owner of a presented callback token, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenOwner {
    pub run_id: Uuid,
    pub attempt: i32,
}

/// What a call finds of the run its path names (None: no such run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunNow {
    pub state: RunState,
    pub attempt: i32,
}

/// The answer to a callback call, before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// 401: nothing is known of this token for this run.
    Unauthorized(String),
    /// 409: the token is this run's but can no longer act on it.
    Conflict(String),
    /// The call may act on the run's current attempt.
    Proceed,
}

/// Whether a call on `path_run` with a token owned by `owner` may act on
/// the run as it is now (`run`). A token authorises its own run only; an
/// earlier attempt's token, or any call once the run has ended (a second
/// complete), is a conflict.
pub fn fence(owner: Option<TokenOwner>, path_run: Uuid, run: Option<RunNow>) -> Fence {
    let Some(owner) = owner.filter(|o| o.run_id == path_run) else {
        return Fence::Unauthorized(format!("the callback token is not one of run {path_run}'s"));
    };
    let Some(run) = run else {
        return Fence::Conflict(format!("run {path_run} no longer exists"));
    };
    if owner.attempt != run.attempt {
        return Fence::Conflict(format!(
            "the callback token is attempt {}'s; run {path_run} is at attempt {} now",
            owner.attempt, run.attempt
        ));
    }
    if run.state != RunState::Running {
        return Fence::Conflict(format!(
            "run {path_run} is {} already; its attempt {} has ended",
            run.state, run.attempt
        ));
    }
    Fence::Proceed
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn the_window_is_the_runs_timeout_else_the_default() {
        let default = Duration::from_secs(3600);
        assert_eq!(window(Some(90_000), default), Duration::from_secs(90));
        assert_eq!(window(None, default), default);
        assert_eq!(window(Some(0), default), default);
    }

    #[test]
    fn the_deadline_counts_from_the_start_and_heartbeats_only_extend_it() {
        let w = Duration::from_secs(60);
        assert_eq!(deadline(at(0), w), at(60));
        // A heartbeat at 30 s moves it to 90 s; an earlier one never
        // shortens a later deadline.
        assert_eq!(heartbeat_deadline(at(30), w, at(60)), at(90));
        assert_eq!(
            heartbeat_deadline(at(10), Duration::from_secs(5), at(60)),
            at(60)
        );
        // An absurd window saturates instead of overflowing.
        assert_eq!(
            deadline(at(0), Duration::from_secs(u64::MAX)),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[test]
    fn fencing_by_run_and_attempt() {
        let run = Uuid::new_v4();
        let other = Uuid::new_v4();
        let owner = |attempt| {
            Some(TokenOwner {
                run_id: run,
                attempt,
            })
        };
        let now = |state, attempt| Some(RunNow { state, attempt });
        assert_eq!(
            fence(owner(2), run, now(RunState::Running, 2)),
            Fence::Proceed
        );
        assert!(matches!(
            fence(None, run, now(RunState::Running, 2)),
            Fence::Unauthorized(_)
        ));
        // Another run's token authorises nothing here.
        assert!(matches!(
            fence(
                Some(TokenOwner {
                    run_id: other,
                    attempt: 2
                }),
                run,
                now(RunState::Running, 2)
            ),
            Fence::Unauthorized(_)
        ));
        // An earlier attempt's token: 409, whatever the run's state.
        for state in [RunState::Running, RunState::Queued, RunState::Succeeded] {
            let Fence::Conflict(m) = fence(owner(1), run, now(state, 2)) else {
                panic!("{state}")
            };
            assert!(m.contains("attempt 1"), "{m}");
        }
        // A second complete: the attempt has ended.
        for state in [
            RunState::Succeeded,
            RunState::Failed,
            RunState::TimedOut,
            RunState::Cancelled,
        ] {
            assert!(matches!(
                fence(owner(2), run, now(state, 2)),
                Fence::Conflict(_)
            ));
        }
        assert!(matches!(fence(owner(2), run, None), Fence::Conflict(_)));
    }
}
