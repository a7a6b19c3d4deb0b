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

/// `latest_at_or_before(t)` is a fire time <= t with none after it up to t.
fn check_latest(schedule: &Schedule, t: DateTime<Utc>) -> Result<(), TestCaseError> {
    match schedule.latest_at_or_before(t) {
        Some(latest) => {
            prop_assert!(latest <= t, "latest_at_or_before({t}) = {latest}");
            prop_assert!(schedule.next_after(latest).is_none_or(|n| n > t));
            prop_assert_eq!(schedule.first_at_or_after(latest), Some(latest));
        }
        None => prop_assert!(schedule
            .first_at_or_after(DateTime::<Utc>::MIN_UTC)
            .is_none_or(|first| first > t)),
    }
    Ok(())
}

/// `times_in` agrees with walking `next_after` over a window of up to a day.
fn check_times_in(
    schedule: &Schedule,
    from: DateTime<Utc>,
    span: Duration,
) -> Result<(), TestCaseError> {
    let to = from + span;
    let mut walked = Vec::new();
    let mut cursor = schedule.first_at_or_after(from).filter(|t| *t <= to);
    while let Some(t) = cursor {
        walked.push(t);
        cursor = schedule.next_after(t).filter(|t| *t <= to);
    }
    let times = schedule.times_in(from, to, 3, u64::MAX);
    prop_assert_eq!(times.count, walked.len() as u64);
    prop_assert!(!times.more);
    prop_assert_eq!(times.first, walked.first().copied());
    prop_assert_eq!(&times.newest[..], &walked[walked.len().saturating_sub(3)..]);
    // Cron counting stopped early still reports the true newest times.
    if walked.len() > 2 && matches!(schedule, Schedule::Cron { .. }) {
        let capped = schedule.times_in(from, to, 3, 2);
        prop_assert_eq!(capped.count, 2);
        prop_assert!(capped.more);
        prop_assert_eq!(capped.newest, times.newest);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn latest_at_or_before_is_the_last_time_up_to_t(
        cron in cron_schedule(),
        interval in interval_schedule(),
        t in instant(),
    ) {
        check_latest(&cron, t)?;
        check_latest(&interval, t)?;
    }

    #[test]
    fn times_in_counts_what_next_after_walks(
        cron in cron_schedule(),
        from in instant(),
        secs in 0i64..86_400,
    ) {
        check_times_in(&cron, from, Duration::seconds(secs))?;
        let interval = Schedule::Interval { anchor: from, every: Duration::seconds(secs.max(1) / 7 + 1) };
        check_times_in(&interval, from - Duration::seconds(secs / 3), Duration::seconds(secs))?;
    }

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
