//! A job's schedule and its fire times (SPEC §5).
//!
//! - `Once { at }` fires once, at `at`, even if `at` is already past: a
//!   one-shot job in the past is simply due. It has no time after its one.
//! - `Interval { anchor, every }` fires at `anchor + k·every` for `k >= 0`:
//!   it keeps its phase and never drifts by run length or lateness. A
//!   non-positive `every` fires only at `anchor` (use [`Schedule::interval`]
//!   to refuse it up front).
//! - `Cron { expr, not_before }` fires at the cron's instants (DST rules in
//!   `cron.rs`), never before `not_before`.
//!
//! Two questions are asked of a schedule, with `t` always passed in:
//! [`Schedule::first_at_or_after`] (the first fire time `>= t`: where a new
//! or resumed job starts) and [`Schedule::next_after`] (the first fire time
//! `> t`: what follows a run scheduled for `t`). Arithmetic is exact to the
//! nanosecond; `None` means no fire time is left (or it is past chrono's range).

use chrono::{DateTime, Duration, Utc};

use super::{CronExpr, ParseError};

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// When a job fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Fires once at `at` (even if `at` is in the past: then it is simply due).
    Once { at: DateTime<Utc> },
    /// Fires at anchor + k*every for k >= 0; keeps its phase, never drifts.
    Interval {
        anchor: DateTime<Utc>,
        every: Duration,
    },
    /// Fires at the cron's times, never before `not_before`.
    Cron {
        expr: CronExpr,
        not_before: DateTime<Utc>,
    },
}

impl Schedule {
    /// An interval schedule, refusing a zero or negative `every` with a
    /// message for the `periodically` field.
    pub fn interval(anchor: DateTime<Utc>, every: Duration) -> Result<Schedule, ParseError> {
        if every <= Duration::zero() {
            return Err(ParseError(format!(
                "periodically: the interval must be longer than zero (got {:?}); use e.g. \
                 \"1 week\", \"5:00:00\", \"32m\", \"PT5M\" or a number of seconds",
                super::format_duration(every)
            )));
        }
        Ok(Schedule::Interval { anchor, every })
    }

    /// The first fire time >= t. Once: Some(at) whatever t is (a one-shot job in the past is due at once).
    pub fn first_at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Once { at } => Some(*at),
            Schedule::Interval { anchor, every } => {
                if t <= *anchor {
                    return Some(*anchor);
                }
                let every = positive_nanos(*every)?;
                let since = nanos(t - *anchor);
                // Ceiling division: the first k with anchor + k·every >= t.
                let k = (since + every - 1) / every;
                add_nanos(*anchor, k * every)
            }
            Schedule::Cron { expr, not_before } => {
                let from = t.max(*not_before);
                match from.checked_sub_signed(Duration::nanoseconds(1)) {
                    Some(just_before) => expr.next_after(just_before),
                    None => expr.next_after(from),
                }
            }
        }
    }

    /// The first fire time strictly > t. Once: None.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Once { .. } => None,
            Schedule::Interval { anchor, every } => {
                if t < *anchor {
                    return Some(*anchor);
                }
                let every = positive_nanos(*every)?;
                let k = nanos(t - *anchor) / every + 1;
                add_nanos(*anchor, k * every)
            }
            Schedule::Cron { expr, not_before } => {
                let floor = not_before
                    .checked_sub_signed(Duration::nanoseconds(1))
                    .unwrap_or(*not_before);
                expr.next_after(t.max(floor))
            }
        }
    }
}

fn nanos(d: Duration) -> i128 {
    i128::from(d.num_seconds()) * NANOS_PER_SEC + i128::from(d.subsec_nanos())
}

fn positive_nanos(d: Duration) -> Option<i128> {
    Some(nanos(d)).filter(|n| *n > 0)
}

fn add_nanos(base: DateTime<Utc>, n: i128) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(n.div_euclid(NANOS_PER_SEC)).ok()?;
    let sub = u32::try_from(n.rem_euclid(NANOS_PER_SEC)).ok()?;
    base.checked_add_signed(Duration::new(secs, sub)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{parse_duration, parse_when};

    fn at(s: &str) -> DateTime<Utc> {
        parse_when(s).unwrap()
    }

    fn every(anchor: &str, d: &str) -> Schedule {
        Schedule::interval(at(anchor), parse_duration(d).unwrap()).unwrap()
    }

    #[test]
    fn once_is_due_whatever_t_is() {
        let s = Schedule::Once {
            at: at("2020-01-01 00:00"),
        };
        assert_eq!(
            s.first_at_or_after(at("2024-01-01")),
            Some(at("2020-01-01"))
        );
        assert_eq!(
            s.first_at_or_after(at("2019-01-01")),
            Some(at("2020-01-01"))
        );
        assert_eq!(s.next_after(at("2019-01-01")), None);
        assert_eq!(s.next_after(at("2024-01-01")), None);
    }

    #[test]
    fn interval_keeps_its_phase() {
        let s = every("2024-01-01 00:07", "15m");
        // Anchor in the future: its first time is the anchor.
        assert_eq!(
            s.first_at_or_after(at("2023-12-31 12:00")),
            Some(at("2024-01-01 00:07"))
        );
        assert_eq!(
            s.next_after(at("2023-12-31 12:00")),
            Some(at("2024-01-01 00:07"))
        );
        // Anchor in the past: the phase is anchor + k·every, not t + every.
        assert_eq!(
            s.first_at_or_after(at("2024-03-05 10:00")),
            Some(at("2024-03-05 10:07"))
        );
        assert_eq!(
            s.next_after(at("2024-03-05 10:00:01")),
            Some(at("2024-03-05 10:07"))
        );
        assert_eq!(
            s.first_at_or_after(at("2024-03-05 10:08")),
            Some(at("2024-03-05 10:22"))
        );
        // t exactly on a fire time.
        assert_eq!(
            s.first_at_or_after(at("2024-03-05 10:22")),
            Some(at("2024-03-05 10:22"))
        );
        assert_eq!(
            s.next_after(at("2024-03-05 10:22")),
            Some(at("2024-03-05 10:37"))
        );
        assert_eq!(
            s.first_at_or_after(at("2024-01-01 00:07")),
            Some(at("2024-01-01 00:07"))
        );
        assert_eq!(
            s.next_after(at("2024-01-01 00:07")),
            Some(at("2024-01-01 00:22"))
        );
        // A nanosecond past a fire time.
        let just_after = at("2024-03-05 10:22") + Duration::nanoseconds(1);
        assert_eq!(
            s.first_at_or_after(just_after),
            Some(at("2024-03-05 10:37"))
        );
    }

    #[test]
    fn interval_exact_with_fractions_and_long_spans() {
        let s = every("2000-01-01", "PT0.3S");
        assert_eq!(
            s.first_at_or_after(at("2000-01-01 00:00:01")),
            Some(at("2000-01-01 00:00:01.2"))
        );
        // 10 years of weekly runs land on the exact weekday and time.
        let weekly = every("2017-02-20 14:56", "1 week");
        assert_eq!(
            weekly.first_at_or_after(at("2027-02-20 00:00")),
            Some(at("2027-02-22 14:56"))
        );
        let near_end = DateTime::<Utc>::MAX_UTC - Duration::days(1);
        let s = Schedule::interval(near_end, Duration::weeks(1)).unwrap();
        assert_eq!(s.first_at_or_after(near_end), Some(near_end));
        assert_eq!(s.next_after(near_end), None, "past chrono's range is None");
    }

    #[test]
    fn interval_refuses_zero() {
        let err = Schedule::interval(at("2024-01-01"), Duration::zero()).unwrap_err();
        assert!(err
            .0
            .starts_with("periodically: the interval must be longer than zero"));
        let degenerate = Schedule::Interval {
            anchor: at("2024-01-01"),
            every: Duration::zero(),
        };
        assert_eq!(
            degenerate.first_at_or_after(at("2023-01-01")),
            Some(at("2024-01-01"))
        );
        assert_eq!(degenerate.first_at_or_after(at("2025-01-01")), None);
        assert_eq!(degenerate.next_after(at("2024-01-01")), None);
    }

    #[test]
    fn cron_respects_not_before() {
        let expr = CronExpr::parse("0 * * * *", "UTC").unwrap();
        let s = Schedule::Cron {
            expr,
            not_before: at("2024-01-01 10:00"),
        };
        // Before not_before: the first time is not_before itself if it matches.
        assert_eq!(
            s.first_at_or_after(at("2023-06-01")),
            Some(at("2024-01-01 10:00"))
        );
        assert_eq!(s.next_after(at("2023-06-01")), Some(at("2024-01-01 10:00")));
        // On a fire time: at-or-after keeps it, after moves on.
        assert_eq!(
            s.first_at_or_after(at("2024-01-02 05:00")),
            Some(at("2024-01-02 05:00"))
        );
        assert_eq!(
            s.next_after(at("2024-01-02 05:00")),
            Some(at("2024-01-02 06:00"))
        );
        assert_eq!(
            s.first_at_or_after(at("2024-01-02 05:00:01")),
            Some(at("2024-01-02 06:00"))
        );
        let later = Schedule::Cron {
            expr: CronExpr::parse("0 * * * *", "UTC").unwrap(),
            not_before: at("2024-01-01 10:30"),
        };
        assert_eq!(
            later.first_at_or_after(at("2024-01-01")),
            Some(at("2024-01-01 11:00"))
        );
    }
}
