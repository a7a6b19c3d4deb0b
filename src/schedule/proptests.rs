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

/// Text a client may send where a duration, a time or a zone is expected:
/// anything at all, and pieces of the grammars glued together at random
/// (which reach deeper into the parsers than random characters do).
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("1"),
        Just("0"),
        Just("99999999999999999999999"),
        Just("1e308"),
        Just("-"),
        Just("+"),
        Just(":"),
        Just("."),
        Just(","),
        Just(" "),
        Just("P"),
        Just("T"),
        Just("W"),
        Just("D"),
        Just("H"),
        Just("M"),
        Just("S"),
        Just("Z"),
        Just("day"),
        Just("days"),
        Just("week"),
        Just("ms"),
        Just("2030-02-20"),
        Just("14:56"),
        Just("+25:00"),
        Just("Europe/Berlin"),
        Just("\u{0}"),
        Just("é"),
        Just("😀"),
    ];
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat()),
    ]
}

/// Cron-like text: fields of numbers, names, ranges, steps, lists and
/// croner's specials, in any number, or an `@` word, or anything.
fn hostile_cron() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("*".to_string()),
        Just("?".to_string()),
        Just("L".to_string()),
        Just("W".to_string()),
        Just("MON".to_string()),
        Just("JAN".to_string()),
        (0u64..100).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
    ];
    let field = proptest::collection::vec(
        (
            atom,
            prop_oneof![
                Just(""),
                Just("-"),
                Just("/"),
                Just(","),
                Just("#"),
                Just("L"),
                Just("W")
            ],
        ),
        1..4,
    )
    .prop_map(|parts| {
        parts
            .into_iter()
            .map(|(a, sep)| format!("{a}{sep}"))
            .collect::<String>()
    });
    prop_oneof![
        proptest::collection::vec(field, 0..8).prop_map(|fields| fields.join(" ")),
        "@[a-z]{0,10}",
        any::<String>(),
    ]
}

fn hostile_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    prop_oneof![
        hostile_text().prop_map(Value::String),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|n| serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        Just(json!([1, "2"])),
        Just(json!({"seconds": 5})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every parser of client input answers Ok or a ParseError, never a
    /// panic; a cron pattern that parses also computes its next times.
    #[test]
    fn client_input_parsers_never_panic(
        text in hostile_text(),
        json in hostile_json(),
        cron in hostile_cron(),
        zone in prop_oneof![Just("UTC".to_string()), Just("Pacific/Apia".to_string()), hostile_text()],
        t in instant(),
    ) {
        let _ = parse_duration(&text);
        let _ = super::duration_from_json(&json);
        let _ = super::parse_when(&text);
        let _ = super::parse_timezone(&zone);
        if let Ok(expr) = CronExpr::parse(&cron, &zone) {
            let schedule = Schedule::Cron { expr, not_before: t };
            let _ = schedule.first_at_or_after(t);
            let _ = schedule.latest_at_or_before(t);
        }
    }
}
