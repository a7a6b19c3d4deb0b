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
//!
//! Catching up after downtime asks two more: [`Schedule::latest_at_or_before`]
//! (the newest fire time `<= t`) and [`Schedule::times_in`] (how many fire
//! times a range holds, its first and its newest few). Both cost O(1) for
//! intervals and one-shots however long the range; for cron, `times_in`
//! enumerates at most `limit` times and says when there are more, and
//! `latest_at_or_before` searches in O(log) steps, never walking the range.

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

/// The fire times of a range, as [`Schedule::times_in`] reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimesIn {
    /// How many fire times the range holds: exact, or with `more` only a
    /// lower bound (counting stopped there).
    pub count: u64,
    /// Counting stopped at the limit: the range holds more than `count`.
    pub more: bool,
    /// The earliest of them.
    pub first: Option<DateTime<Utc>>,
    /// The newest of them, oldest first: as many as asked for, or all of
    /// them when the range holds fewer.
    pub newest: Vec<DateTime<Utc>>,
}

impl TimesIn {
    fn empty() -> TimesIn {
        TimesIn::default()
    }

    /// The newest of them.
    pub fn last(&self) -> Option<DateTime<Utc>> {
        self.newest.last().copied()
    }
}

impl Schedule {
    /// The newest fire time <= t (`None` when the first is after `t`).
    /// Intervals: arithmetic. Cron: a search that gallops back from `t`
    /// and then bisects, O(log(t - answer)) calls of `next_after`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Once { at } => Some(*at).filter(|at| *at <= t),
            Schedule::Interval { anchor, every } => {
                if t < *anchor {
                    return None;
                }
                let Some(every) = positive_nanos(*every) else {
                    return Some(*anchor);
                };
                let k = nanos(t - *anchor) / every;
                add_nanos(*anchor, k * every)
            }
            Schedule::Cron { .. } => self.search_latest(t),
        }
    }

    /// The cron case of [`Schedule::latest_at_or_before`]. Invariant:
    /// `next_after(lo) <= t < next_after(hi)`, so the answer is in (lo, hi].
    fn search_latest(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let first = self.first_at_or_after(DateTime::<Utc>::MIN_UTC)?;
        if first > t {
            return None;
        }
        let before_first = first.checked_sub_signed(Duration::nanoseconds(1));
        let at_or_below_t = |x: DateTime<Utc>| self.next_after(x).is_some_and(|n| n <= t);
        let mut hi = t;
        let mut back = Duration::seconds(1);
        let mut lo = loop {
            match t.checked_sub_signed(back) {
                Some(lo) if lo > first => {
                    if at_or_below_t(lo) {
                        break lo;
                    }
                    hi = lo;
                }
                _ => match before_first {
                    Some(b) => break b,
                    None => return Some(first),
                },
            }
            back = back + back;
        };
        // Cron times are whole seconds: a second's precision leaves at most
        // one candidate in (lo, hi]; the walk below settles any remainder.
        while hi - lo > Duration::seconds(1) {
            let mid = lo + (hi - lo) / 2;
            if at_or_below_t(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let mut latest = self.next_after(lo).filter(|n| *n <= t)?;
        while let Some(n) = self.next_after(latest).filter(|n| *n <= t) {
            latest = n;
        }
        Some(latest)
    }

    /// The fire times in `[from, to]`: their count, the first, and the
    /// newest `keep` of them. Intervals and one-shots are counted exactly by
    /// arithmetic, whatever the range. Cron times are enumerated, at most
    /// `limit` of them: past that the count stops (`more` is set) and the
    /// newest are found with [`Schedule::latest_at_or_before`].
    pub fn times_in(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        keep: usize,
        limit: u64,
    ) -> TimesIn {
        if from > to {
            return TimesIn::empty();
        }
        match self {
            Schedule::Once { at } => {
                if (from..=to).contains(at) {
                    TimesIn {
                        count: 1,
                        more: false,
                        first: Some(*at),
                        newest: if keep > 0 { vec![*at] } else { Vec::new() },
                    }
                } else {
                    TimesIn::empty()
                }
            }
            Schedule::Interval { anchor, every } => {
                let Some(every) = positive_nanos(*every) else {
                    let once = Schedule::Once { at: *anchor };
                    return once.times_in(from, to, keep, limit);
                };
                if to < *anchor {
                    return TimesIn::empty();
                }
                // k_lo: the first k with anchor + k·every >= from.
                let k_lo = if from <= *anchor {
                    0
                } else {
                    (nanos(from - *anchor) + every - 1) / every
                };
                let k_hi = nanos(to - *anchor) / every;
                if k_hi < k_lo {
                    return TimesIn::empty();
                }
                let count = k_hi - k_lo + 1;
                let kept = (keep as i128).min(count);
                TimesIn {
                    count: u64::try_from(count).unwrap_or(u64::MAX),
                    more: false,
                    first: add_nanos(*anchor, k_lo * every),
                    newest: (k_hi - kept + 1..=k_hi)
                        .filter_map(|k| add_nanos(*anchor, k * every))
                        .collect(),
                }
            }
            Schedule::Cron { .. } => self.enumerate(from, to, keep, limit),
        }
    }

    /// The cron case of [`Schedule::times_in`].
    fn enumerate(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        keep: usize,
        limit: u64,
    ) -> TimesIn {
        let mut found = TimesIn::empty();
        let mut newest = std::collections::VecDeque::new();
        let mut cursor = self.first_at_or_after(from).filter(|t| *t <= to);
        found.first = cursor;
        while let Some(t) = cursor {
            if found.count >= limit {
                found.more = true;
                break;
            }
            found.count += 1;
            if keep > 0 {
                if newest.len() == keep {
                    newest.pop_front();
                }
                newest.push_back(t);
            }
            cursor = self.next_after(t).filter(|t| *t <= to);
        }
        if found.more {
            // The enumeration stopped early: walk back from `to` instead.
            newest.clear();
            let mut cursor = self.latest_at_or_before(to).filter(|t| *t >= from);
            while let Some(t) = cursor.filter(|_| newest.len() < keep) {
                newest.push_front(t);
                cursor = t
                    .checked_sub_signed(Duration::nanoseconds(1))
                    .and_then(|before| self.latest_at_or_before(before))
                    .filter(|t| *t >= from);
            }
        }
        found.newest = newest.into();
        found
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

    #[test]
    fn interval_latest_at_or_before_is_arithmetic() {
        let s = every("2024-01-01 00:07", "15m");
        assert_eq!(s.latest_at_or_before(at("2024-01-01 00:06")), None);
        assert_eq!(
            s.latest_at_or_before(at("2024-01-01 00:07")),
            Some(at("2024-01-01 00:07"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2024-03-05 10:21:59")),
            Some(at("2024-03-05 10:07"))
        );
        assert_eq!(
            s.latest_at_or_before(at("2024-03-05 10:22")),
            Some(at("2024-03-05 10:22"))
        );
        let once = Schedule::Once {
            at: at("2024-01-01"),
        };
        assert_eq!(once.latest_at_or_before(at("2023-12-31")), None);
        assert_eq!(
            once.latest_at_or_before(at("2025-01-01")),
            Some(at("2024-01-01"))
        );
    }

    #[test]
    fn interval_times_in_a_year_are_counted_exactly() {
        let s = every("2030-01-01", "1s");
        let year = s.times_in(at("2030-01-01"), at("2031-01-01"), 3, 10);
        assert_eq!(year.count, 365 * 86_400 + 1);
        assert!(!year.more, "intervals are never cut at the limit");
        assert_eq!(year.first, Some(at("2030-01-01")));
        assert_eq!(
            year.newest,
            vec![
                at("2030-12-31 23:59:58"),
                at("2030-12-31 23:59:59"),
                at("2031-01-01")
            ]
        );
        // Bounds between times, before the anchor, and empty ranges.
        let part = s.times_in(at("2029-06-01"), at("2030-01-01 00:00:02.5"), 10, 10);
        assert_eq!(part.count, 3);
        assert_eq!(part.newest.len(), 3);
        assert_eq!(
            s.times_in(at("2029-01-01"), at("2029-12-31"), 1, 10).count,
            0
        );
        let between = s.times_in(
            at("2030-01-01 00:00:00.1"),
            at("2030-01-01 00:00:00.9"),
            1,
            10,
        );
        assert_eq!(between, TimesIn::default());
        assert_eq!(
            s.times_in(at("2030-02-01"), at("2030-01-01"), 1, 10),
            TimesIn::default()
        );
        assert!(s
            .times_in(at("2030-01-01"), at("2030-01-02"), 0, 10)
            .newest
            .is_empty());
    }

    fn cron(expr: &str, zone: &str, not_before: &str) -> Schedule {
        Schedule::Cron {
            expr: CronExpr::parse(expr, zone).unwrap(),
            not_before: at(not_before),
        }
    }

    #[test]
    fn cron_latest_at_or_before_searches_back() {
        let hourly = cron("0 * * * *", "UTC", "2024-01-01 10:30");
        assert_eq!(hourly.latest_at_or_before(at("2024-01-01 10:59")), None);
        assert_eq!(
            hourly.latest_at_or_before(at("2024-01-01 11:00")),
            Some(at("2024-01-01 11:00"))
        );
        assert_eq!(
            hourly.latest_at_or_before(at("2030-06-01 05:59:59.999")),
            Some(at("2030-06-01 05:00"))
        );
        // Sparse: the last 29 February.
        let leap = cron("0 12 29 2 *", "UTC", "2000-01-01");
        assert_eq!(
            leap.latest_at_or_before(at("2027-01-01")),
            Some(at("2024-02-29 12:00"))
        );
        // A gap (spring forward): 02:30 Berlin fires at the gap's end, 01:00Z.
        let berlin = cron("30 2 * * *", "Europe/Berlin", "2024-01-01");
        assert_eq!(
            berlin.latest_at_or_before(at("2024-03-31T01:59:00Z")),
            Some(at("2024-03-31T01:00:00Z"))
        );
        // A repeated hour (fall back): only the first 02:30 (00:30Z) fired.
        assert_eq!(
            berlin.latest_at_or_before(at("2024-10-27T01:45:00Z")),
            Some(at("2024-10-27T00:30:00Z"))
        );
    }

    #[test]
    fn cron_times_in_stops_at_the_limit_and_still_finds_the_newest() {
        let per_second = cron("* * * * * *", "UTC", "2030-01-01");
        let weeks = per_second.times_in(at("2030-01-01"), at("2030-01-22 00:00:00.5"), 2, 100_000);
        assert_eq!(weeks.count, 100_000);
        assert!(weeks.more);
        assert_eq!(weeks.first, Some(at("2030-01-01")));
        assert_eq!(
            weeks.newest,
            vec![at("2030-01-21 23:59:59"), at("2030-01-22")]
        );
        let hour = per_second.times_in(at("2030-01-01 01:00"), at("2030-01-01 02:00"), 1, 100_000);
        assert_eq!(hour.count, 3601);
        assert!(!hour.more);
        assert_eq!(hour.last(), Some(at("2030-01-01 02:00")));
    }
}
