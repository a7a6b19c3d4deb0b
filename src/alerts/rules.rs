//! What raises, throttles and closes a job's alerts: pure rules over what
//! the event feed tells of a job, and the clock. No I/O.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// An alert, as its event type names it (`alert.<kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// `failures_before_alert` final failures in a row.
    Failing,
    /// The first success after an alert.
    Recovered,
    /// A scheduled time missed past its misfire grace.
    Missed,
    /// A run still running when its next time came, or longer than
    /// `max_duration`.
    Overrun,
    /// No success within `expect_success_within`.
    DeadMan,
}

impl AlertKind {
    pub const ALL: [AlertKind; 5] = [
        AlertKind::Failing,
        AlertKind::Recovered,
        AlertKind::Missed,
        AlertKind::Overrun,
        AlertKind::DeadMan,
    ];

    /// The event type: `alert.failing`, `alert.dead_man`, ….
    pub const fn event_type(self) -> &'static str {
        match self {
            AlertKind::Failing => "alert.failing",
            AlertKind::Recovered => "alert.recovered",
            AlertKind::Missed => "alert.missed",
            AlertKind::Overrun => "alert.overrun",
            AlertKind::DeadMan => "alert.dead_man",
        }
    }

    /// The name in a job's `alerts_open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AlertKind::Failing => "failing",
            AlertKind::Recovered => "recovered",
            AlertKind::Missed => "missed",
            AlertKind::Overrun => "overrun",
            AlertKind::DeadMan => "dead_man",
        }
    }
}

/// A job's alert settings, its own or the service's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    /// Final failures in a row that raise `alert.failing`; 0: never.
    pub failures_before_alert: u32,
    /// No success for this long raises `alert.dead_man`.
    pub expect_success_within: Option<Duration>,
    /// A run running longer raises `alert.overrun`.
    pub max_duration: Option<Duration>,
    /// At most one alert of a kind per job in this long.
    pub alert_interval: Duration,
}

/// What the feed (or the clock) tells of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// A run ended failed or timed out, with no retry left (`run.failed`,
    /// `run.timed_out`).
    FinalFailure,
    /// A run succeeded.
    Success,
    /// A scheduled time was missed past its misfire grace.
    Missed,
    /// A scheduled time was skipped, or made to wait, because a run was
    /// still running (`max_instances`).
    StillRunning,
    /// A run has run longer than `max_duration`.
    RanTooLong,
    /// No success within `expect_success_within` ([`dead_man_due`]).
    NoSuccess,
    /// The job was created, changed, paused, resumed or deleted.
    Changed,
}

/// What is kept of a job between observations (stored as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertState {
    pub consecutive_failures: u32,
    /// The alerts raised and not closed (never `Recovered`).
    pub open: BTreeSet<AlertKind>,
    /// When each kind was last raised (for the throttle).
    pub last_raised: BTreeMap<AlertKind, DateTime<Utc>>,
}

impl AlertState {
    /// The state worth storing at `now`: without the throttle marks that
    /// no longer throttle anything. `None`: nothing is left to remember
    /// (the job's row can go).
    pub fn kept(mut self, settings: &AlertSettings, now: DateTime<Utc>) -> Option<AlertState> {
        self.last_raised
            .retain(|_, at| now - *at < settings.alert_interval);
        (self != AlertState::default()).then_some(self)
    }
}

/// An alert to write as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raised {
    pub kind: AlertKind,
    pub reason: String,
}

/// Applies `observation`, made at `at`, to `state`; returns the alert it
/// raises, if any. An alert of a kind raised less than `alert_interval`
/// ago is not raised again (and does not open).
pub fn observe(
    state: &mut AlertState,
    settings: &AlertSettings,
    observation: Observation,
    at: DateTime<Utc>,
) -> Option<Raised> {
    let candidate = match observation {
        Observation::FinalFailure => {
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            let n = settings.failures_before_alert;
            (n > 0 && state.consecutive_failures >= n && !state.open.contains(&AlertKind::Failing))
                .then(|| Raised {
                    kind: AlertKind::Failing,
                    reason: match state.consecutive_failures {
                        1 => "a run failed".to_string(),
                        n => format!("{n} failed runs in a row"),
                    },
                })
        }
        Observation::Success => {
            state.consecutive_failures = 0;
            let was_open = !state.open.is_empty();
            let closed: Vec<&str> = state.open.iter().map(|k| k.as_str()).collect();
            let reason = format!("a run succeeded after {}", closed.join(", "));
            state.open.clear();
            was_open.then_some(Raised {
                kind: AlertKind::Recovered,
                reason,
            })
        }
        Observation::Missed => Some(Raised {
            kind: AlertKind::Missed,
            reason: "a scheduled time was missed past its misfire grace".into(),
        }),
        Observation::StillRunning => Some(Raised {
            kind: AlertKind::Overrun,
            reason: "a run was still running when the next scheduled time came".into(),
        }),
        Observation::RanTooLong => Some(Raised {
            kind: AlertKind::Overrun,
            reason: match settings.max_duration {
                Some(d) => format!(
                    "a run has run longer than max_duration ({}s)",
                    d.num_seconds()
                ),
                None => "a run has run longer than max_duration".into(),
            },
        }),
        Observation::NoSuccess => (!state.open.contains(&AlertKind::DeadMan)).then(|| Raised {
            kind: AlertKind::DeadMan,
            reason: match settings.expect_success_within {
                Some(d) => format!("no successful run within {}s", d.num_seconds()),
                None => "no successful run".into(),
            },
        }),
        Observation::Changed => {
            state.consecutive_failures = 0;
            state.open.clear();
            None
        }
    };
    let raised = candidate?;
    if let Some(last) = state.last_raised.get(&raised.kind) {
        if at - *last < settings.alert_interval {
            return None;
        }
    }
    state.last_raised.insert(raised.kind, at);
    if raised.kind != AlertKind::Recovered {
        state.open.insert(raised.kind);
    }
    Some(raised)
}

/// Whether the dead man's alert is due at `now`: a window is set, it has
/// passed since `since` (the job's last success, or its last change if
/// later), and the alert is not open already.
pub fn dead_man_due(
    state: &AlertState,
    settings: &AlertSettings,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    match settings.expect_success_within {
        Some(window) => now - since >= window && !state.open.contains(&AlertKind::DeadMan),
        None => false,
    }
}

/// Whether a run started at `started_at` went past `max_duration` after the
/// previous clock check (`checked_at`) and by `now`: each run is seen
/// crossing once, however often the clock is checked.
pub fn ran_too_long(
    settings: &AlertSettings,
    started_at: DateTime<Utc>,
    checked_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    let Some(max) = settings.max_duration else {
        return false;
    };
    let crossed = started_at + max;
    crossed <= now && checked_at.is_none_or(|checked| crossed > checked)
}

/// What an event of the feed tells of its job, by its type; a missed run's
/// history reason tells a time skipped because a run still ran
/// (`max_instances`, an overrun) from one missed past its grace.
pub fn observation_of(event_type: &str, reason: Option<&str>) -> Option<Observation> {
    let skipped_for_max_instances =
        reason.is_some_and(|r| r.starts_with(crate::domain::rules::SKIPPED_PREFIX));
    Some(match event_type {
        "run.failed" | "run.timed_out" => Observation::FinalFailure,
        "run.succeeded" => Observation::Success,
        "run.waiting" => Observation::StillRunning,
        "run.missed" if skipped_for_max_instances => Observation::StillRunning,
        "run.missed" => Observation::Missed,
        "job.created" | "job.updated" | "job.paused" | "job.resumed" | "job.deleted" => {
            Observation::Changed
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(failures: u32) -> AlertSettings {
        AlertSettings {
            failures_before_alert: failures,
            expect_success_within: Some(Duration::hours(26)),
            max_duration: Some(Duration::minutes(10)),
            alert_interval: Duration::hours(1),
        }
    }

    fn t(minutes: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap() + Duration::minutes(minutes)
    }

    fn kinds(raised: &[Option<Raised>]) -> Vec<Option<AlertKind>> {
        raised.iter().map(|r| r.as_ref().map(|r| r.kind)).collect()
    }

    #[test]
    fn failing_fires_once_per_episode_at_the_nth_failure_and_recovery_closes_it() {
        let s = settings(3);
        let mut st = AlertState::default();
        let got: Vec<_> = (0..6)
            .map(|i| observe(&mut st, &s, Observation::FinalFailure, t(i)))
            .collect();
        assert_eq!(
            kinds(&got),
            [None, None, Some(AlertKind::Failing), None, None, None]
        );
        assert!(st.open.contains(&AlertKind::Failing));
        let r = observe(&mut st, &s, Observation::Success, t(10)).unwrap();
        assert_eq!(r.kind, AlertKind::Recovered);
        assert!(r.reason.contains("failing"), "{}", r.reason);
        assert!(st.open.is_empty());
        assert_eq!(st.consecutive_failures, 0);
        // A second success raises nothing: nothing is open.
        assert_eq!(observe(&mut st, &s, Observation::Success, t(11)), None);
    }

    #[test]
    fn a_success_between_failures_starts_the_count_again() {
        let s = settings(2);
        let mut st = AlertState::default();
        assert_eq!(observe(&mut st, &s, Observation::FinalFailure, t(0)), None);
        assert_eq!(observe(&mut st, &s, Observation::Success, t(1)), None);
        assert_eq!(observe(&mut st, &s, Observation::FinalFailure, t(2)), None);
        assert_eq!(
            observe(&mut st, &s, Observation::FinalFailure, t(3)).map(|r| r.kind),
            Some(AlertKind::Failing)
        );
    }

    #[test]
    fn failures_before_alert_zero_never_raises_failing() {
        let s = settings(0);
        let mut st = AlertState::default();
        for i in 0..10 {
            assert_eq!(observe(&mut st, &s, Observation::FinalFailure, t(i)), None);
        }
    }

    #[test]
    fn a_second_episode_within_the_interval_is_throttled() {
        let s = settings(1);
        let mut st = AlertState::default();
        let got = [
            observe(&mut st, &s, Observation::FinalFailure, t(0)),
            observe(&mut st, &s, Observation::Success, t(5)),
            // A new episode 10 minutes after the first alert: throttled,
            // and not open, so its success raises no recovery.
            observe(&mut st, &s, Observation::FinalFailure, t(10)),
            observe(&mut st, &s, Observation::Success, t(15)),
            // An hour after the first: raised again.
            observe(&mut st, &s, Observation::FinalFailure, t(61)),
        ];
        assert_eq!(
            kinds(&got),
            [
                Some(AlertKind::Failing),
                Some(AlertKind::Recovered),
                None,
                None,
                Some(AlertKind::Failing)
            ]
        );
    }

    #[test]
    fn missed_and_overrun_are_raised_at_most_once_an_interval_and_stay_open() {
        let s = settings(3);
        let mut st = AlertState::default();
        let got = [
            observe(&mut st, &s, Observation::Missed, t(0)),
            observe(&mut st, &s, Observation::Missed, t(1)),
            observe(&mut st, &s, Observation::StillRunning, t(2)),
            observe(&mut st, &s, Observation::RanTooLong, t(3)),
            observe(&mut st, &s, Observation::Missed, t(60)),
        ];
        assert_eq!(
            kinds(&got),
            [
                Some(AlertKind::Missed),
                None,
                Some(AlertKind::Overrun),
                None,
                Some(AlertKind::Missed)
            ]
        );
        assert_eq!(
            st.open,
            BTreeSet::from([AlertKind::Missed, AlertKind::Overrun])
        );
    }

    #[test]
    fn a_change_closes_open_alerts_silently_and_restarts_the_windows() {
        let s = settings(1);
        let mut st = AlertState::default();
        observe(&mut st, &s, Observation::FinalFailure, t(0)).unwrap();
        assert_eq!(observe(&mut st, &s, Observation::Changed, t(1)), None);
        assert!(st.open.is_empty());
        assert_eq!(st.consecutive_failures, 0);
        assert_eq!(observe(&mut st, &s, Observation::Success, t(2)), None);
    }

    #[test]
    fn the_dead_man_is_due_once_the_window_passes_without_a_success() {
        let s = settings(3);
        let mut st = AlertState::default();
        assert!(!dead_man_due(&st, &s, t(0), t(26 * 60 - 1)));
        assert!(dead_man_due(&st, &s, t(0), t(26 * 60)));
        let r = observe(&mut st, &s, Observation::NoSuccess, t(26 * 60)).unwrap();
        assert_eq!(r.kind, AlertKind::DeadMan);
        assert!(!dead_man_due(&st, &s, t(0), t(27 * 60)), "open already");
        assert_eq!(
            observe(&mut st, &s, Observation::Success, t(28 * 60)).map(|r| r.kind),
            Some(AlertKind::Recovered)
        );
        // The window starts again at the success.
        assert!(!dead_man_due(&st, &s, t(28 * 60), t(29 * 60)));
        assert!(dead_man_due(&st, &s, t(28 * 60), t(54 * 60)));
        let none = AlertSettings {
            expect_success_within: None,
            ..settings(3)
        };
        assert!(!dead_man_due(&st, &none, t(0), t(100 * 60)));
    }

    #[test]
    fn a_long_run_is_seen_crossing_max_duration_once() {
        let s = settings(3); // max_duration 10 minutes
        assert!(!ran_too_long(&s, t(0), None, t(9)));
        assert!(ran_too_long(&s, t(0), None, t(10)));
        assert!(ran_too_long(&s, t(0), Some(t(9)), t(11)));
        assert!(!ran_too_long(&s, t(0), Some(t(10)), t(12)), "seen already");
        let none = AlertSettings {
            max_duration: None,
            ..settings(3)
        };
        assert!(!ran_too_long(&none, t(0), None, t(100)));
    }

    #[test]
    fn only_what_still_matters_is_kept() {
        let s = settings(1);
        let mut st = AlertState::default();
        assert_eq!(st.clone().kept(&s, t(0)), None);
        observe(&mut st, &s, Observation::FinalFailure, t(0)).unwrap();
        observe(&mut st, &s, Observation::Success, t(1)).unwrap();
        // The throttle still holds for an hour after the alert.
        let kept = st.clone().kept(&s, t(30)).unwrap();
        assert_eq!(kept.last_raised.len(), 2);
        assert_eq!(st.kept(&s, t(61)), None);
    }

    #[test]
    fn events_tell_failures_successes_misses_overruns_and_changes() {
        assert_eq!(
            observation_of("run.failed", None),
            Some(Observation::FinalFailure)
        );
        assert_eq!(
            observation_of("run.timed_out", None),
            Some(Observation::FinalFailure)
        );
        assert_eq!(observation_of("run.retried", None), None);
        assert_eq!(observation_of("run.dead", None), None);
        assert_eq!(observation_of("run.cancelled", None), None);
        assert_eq!(
            observation_of("run.missed", None),
            Some(Observation::Missed)
        );
        assert_eq!(
            observation_of("run.missed", Some(crate::domain::rules::SKIPPED)),
            Some(Observation::StillRunning)
        );
        assert_eq!(
            observation_of(
                "run.missed",
                Some("skipped: max_instances runs of this job are already queued or running")
            ),
            Some(Observation::StillRunning)
        );
        assert_eq!(
            observation_of("run.missed", Some(crate::domain::rules::LATE_REASON)),
            Some(Observation::Missed)
        );
        assert_eq!(
            observation_of("run.waiting", None),
            Some(Observation::StillRunning)
        );
        assert_eq!(
            observation_of("job.paused", None),
            Some(Observation::Changed)
        );
        assert_eq!(observation_of("job.completed", None), None);
        assert_eq!(observation_of("alert.failing", None), None);
    }

    #[test]
    fn every_kind_has_an_alert_event_type() {
        for kind in AlertKind::ALL {
            assert!(
                crate::domain::event_types::EVENT_TYPES.contains(&kind.event_type()),
                "{kind:?} is not a known event type"
            );
            assert_eq!(
                kind.event_type(),
                format!("alert.{}", kind.as_str()),
                "{kind:?}"
            );
        }
    }
}
