//! Properties of fire times over random intervals, cron patterns and zones.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;

use super::{format_duration, parse_duration, CronExpr, Schedule};

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/St_Johns",
    "Pacific/Chatham",
    "Pacific/Apia",
    "America/Santiago",
    "Europe/London",
];

const PATTERNS: &[&str] = &[
    "* * * * *",
    "*/15 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "0,30 1-3 * * *",
    "45 1 * * *",
    "0 0 * * 0",
    "15 2 1 * *",
    "*/20 * * * * *",
    "0 */7 * * * *",
    "@daily",
    "@hourly",
];

/// Instants from 2000 to 2040, with sub-second parts half of the time.
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    (
        946_684_800i64..2_208_988_800,
        prop_oneof![Just(0u32), 0u32..1_000_000_000],
    )
        .prop_map(|(s, ns)| Utc.timestamp_opt(s, ns).unwrap())
}

fn cron_schedule() -> impl Strategy<Value = Schedule> {
    (0..PATTERNS.len(), 0..ZONES.len(), instant()).prop_map(|(p, z, not_before)| Schedule::Cron {
        expr: CronExpr::parse(PATTERNS[p], ZONES[z]).unwrap(),
        not_before,
    })
}

fn interval_schedule() -> impl Strategy<Value = Schedule> {
    (instant(), 1i64..400 * 86_400_000_000_000).prop_map(|(anchor, every)| Schedule::Interval {
        anchor,
        every: Duration::nanoseconds(every),
    })
}

fn check(schedule: &Schedule, t: DateTime<Utc>) -> Result<(), TestCaseError> {
    let first = schedule
        .first_at_or_after(t)
        .expect("a recurring schedule has a time");
    prop_assert!(first >= t, "first_at_or_after({t}) = {first}");
    let mut prev = t;
    for _ in 0..50 {
        let next = schedule
            .next_after(prev)
            .expect("a recurring schedule goes on");
        prop_assert!(next > prev, "next_after({prev}) = {next}");
        prev = next;
    }
    prop_assert!(schedule.next_after(t).unwrap() >= first);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn cron_times_increase(schedule in cron_schedule(), t in instant()) {
        check(&schedule, t)?;
        if let Schedule::Cron { not_before, .. } = &schedule {
            prop_assert!(schedule.first_at_or_after(t).unwrap() >= *not_before);
        }
    }

    #[test]
    fn interval_times_increase_and_keep_phase(schedule in interval_schedule(), t in instant()) {
        check(&schedule, t)?;
        if let Schedule::Interval { anchor, every } = &schedule {
            let first = schedule.first_at_or_after(t).unwrap();
            let since = (first - *anchor).num_nanoseconds().unwrap();
            prop_assert_eq!(since % every.num_nanoseconds().unwrap(), 0);
            prop_assert!(first == *anchor || first - *every < t);
        }
    }

    #[test]
    fn durations_round_trip(nanos in 0i64..=i64::MAX) {
        let d = Duration::nanoseconds(nanos);
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }
}
