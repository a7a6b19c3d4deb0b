//! Cron expressions in a time zone, with explicit DST rules (SPEC §5).
//!
//! Syntax (parsed by croner, the parser tokio-cron-scheduler is built on):
//!
//! - 5 fields `minute hour day-of-month month day-of-week` (fires at second 0),
//!   or 6 fields with a leading `second`. Ranges, lists, steps, month and
//!   weekday names, `?`, `L`, `W` and `#` work as croner documents. When both
//!   day-of-month and day-of-week are restricted, either may match (Vixie cron).
//! - Aliases (any case): `@yearly` = `@annually` = `0 0 1 1 *`,
//!   `@monthly` = `0 0 1 * *`, `@weekly` = `0 0 * * 0`,
//!   `@daily` = `@midnight` = `0 0 * * *`, `@hourly` = `0 * * * *`.
//!   `@reboot` and every other `@word` are refused.
//! - Patterns that can never fire (e.g. `0 0 30 2 *`) are refused.
//!
//! Evaluation: the pattern is matched against the zone's **wall clock**
//! (croner runs on naive local time, handed to it as if it were UTC, so its
//! own DST handling never comes into play). Each matching local time is then
//! mapped to one instant by these rules:
//!
//! - a local time that exists once is that instant;
//! - a local time that occurs twice (fall back) fires **once, at its first
//!   occurrence** (the earlier instant, still on summer time). Matches during
//!   the repeated hour's second pass are not fired again;
//! - a local time that does not exist (spring forward gap) fires **once at the
//!   first valid instant after the gap**, i.e. the transition instant itself
//!   (Europe/Berlin 2024-03-31 02:30 → 03:00 CEST = 01:00Z). Several matches
//!   in one gap, and a match at the first local time after it, all map to that
//!   instant and fire once.
//!
//! [`CronExpr::next_after`] returns the first mapped instant strictly after
//! `t`, so iterating it gives strictly increasing instants and never the same
//! instant twice. Whole seconds only: sub-second parts of `t` are ignored
//! except that the result is always strictly greater than `t`. Zones with
//! 30-minute shifts (Australia/Lord_Howe) follow the same rules.

use std::sync::Arc;

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;

use super::{parse_timezone, quote, ParseError};

const CRON_FORMS: &str = "use 5 fields \"minute hour day-of-month month day-of-week\" \
     (e.g. \"*/15 * * * *\", \"30 2 * * 1-5\"), 6 fields with leading seconds \
     (e.g. \"0 */5 * * * *\"), or one of @yearly, @annually, @monthly, @weekly, \
     @daily, @midnight, @hourly";

/// Longest daylight-saving (or calendar) gap searched for its end, in minutes.
/// The longest in the tz database is a skipped day (Pacific/Apia 2011).
const MAX_GAP_MINUTES: i64 = 3 * 24 * 60;

/// A parsed cron pattern bound to an IANA time zone.
#[derive(Debug, Clone)]
pub struct CronExpr {
    /// The expression as given (trimmed), e.g. `"@daily"` or `"*/5 * * * *"`.
    expr: String,
    tz: Tz,
    /// The parsed pattern (aliases expanded); shared, as it is large and
    /// never changes.
    cron: Arc<Cron>,
}

/// Two expressions are equal when their text and zone are.
impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

impl Eq for CronExpr {}

impl CronExpr {
    /// Parses `expr` (see the module docs) for the IANA zone `timezone`.
    /// Errors start with `cron:` or `timezone:`, the fields they are about.
    pub fn parse(expr: &str, timezone: &str) -> Result<CronExpr, ParseError> {
        let tz = parse_timezone(timezone)?;
        let trimmed = expr.trim();
        let invalid = |why: &str| {
            ParseError(format!(
                "cron: {} is not a cron expression: {why}; {CRON_FORMS}",
                quote(expr)
            ))
        };
        if trimmed.is_empty() {
            return Err(invalid("it is empty"));
        }
        let pattern = expand_alias(trimmed).map_err(|why| invalid(&why))?;
        let fields = pattern.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(invalid(&format!("it has {fields} fields")));
        }
        let cron = Cron::new(pattern)
            .with_seconds_optional()
            .parse()
            .map_err(|e| invalid(&e.to_string()))?;
        // The calendar repeats every 400 years and croner searches up to year
        // 5000: a pattern with no match from 4500 on has no match at all.
        let probe = NaiveDate::from_ymd_opt(4500, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|n| n.and_utc());
        if let Some(probe) = probe {
            if cron.find_next_occurrence(&probe, true).is_err() {
                return Err(invalid("no date ever matches it"));
            }
        }
        Ok(CronExpr {
            expr: trimmed.to_string(),
            tz,
            cron: Arc::new(cron),
        })
    }

    /// The expression as given (trimmed), aliases not expanded.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The zone whose wall clock the pattern is read on.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `t`.
    ///
    /// `None` only when no match is left before croner's search limit
    /// (year 5000).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Whole seconds: croner's matches are whole seconds, and every match
        // after the truncated local time is also after `t` itself.
        let mut cursor = t.with_timezone(&self.tz).naive_local().with_nanosecond(0)?;
        loop {
            let local = self
                .cron
                .find_next_occurrence(&cursor.and_utc(), false)
                .ok()?
                .naive_utc();
            // A match may map to `t` or earlier: during the second pass of a
            // repeated hour (it fired on the first pass) or when it collapses
            // into a gap's end that already fired. Skip to the next match.
            if let Some(at) = local_to_instant(self.tz, local) {
                if at > t {
                    return Some(at);
                }
            }
            cursor = local;
        }
    }
}

/// Replaces an `@alias` by its pattern; other text is returned unchanged.
fn expand_alias(expr: &str) -> Result<&str, String> {
    if !expr.starts_with('@') {
        if expr.contains('@') {
            return Err("\"@\" may only start an alias such as @daily".to_string());
        }
        return Ok(expr);
    }
    Ok(match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        "@reboot" => {
            return Err("@reboot is not supported (jobsd schedules by time; \
                        for a single run give only \"when\")"
                .to_string())
        }
        _ => return Err("unknown alias".to_string()),
    })
}

/// Maps a wall-clock time in `tz` to the instant it fires at (module docs):
/// the only or the earlier instant, or for a time in a gap, the gap's end.
/// `None` only if no valid local time follows within [`MAX_GAP_MINUTES`].
pub(crate) fn local_to_instant(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(at) => Some(at.to_utc()),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).to_utc()),
        LocalResult::None => gap_end(tz, local),
    }
}

/// The first instant after the gap containing `local`: the instant of the
/// first local time after `local` that exists. Steps by minutes to the first
/// valid minute, then bisects the last minute to the second.
fn gap_end(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let valid = |l: NaiveDateTime| !matches!(tz.from_local_datetime(&l), LocalResult::None);
    let minute = Duration::minutes(1);
    let mut hi = (1..=MAX_GAP_MINUTES)
        .map_while(|i| local.checked_add_signed(Duration::minutes(i)))
        .find(|l| valid(*l))?;
    let mut lo = hi - minute; // not valid: either `local` or a tested minute
    while hi - lo > Duration::seconds(1) {
        let mid = lo + (hi - lo) / 2;
        let mid = mid.with_nanosecond(0).unwrap_or(mid);
        if valid(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    match tz.from_local_datetime(&hi) {
        LocalResult::Single(at) => Some(at.to_utc()),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).to_utc()),
        LocalResult::None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::parse_when;

    fn at(s: &str) -> DateTime<Utc> {
        parse_when(s).unwrap()
    }

    fn fires(expr: &str, zone: &str, from: &str, n: usize) -> Vec<DateTime<Utc>> {
        let cron = CronExpr::parse(expr, zone).unwrap();
        let mut t = at(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = cron.next_after(t).unwrap();
            out.push(t);
        }
        out
    }

    /// (zone, pattern, start (UTC), expected fire times (UTC), what it shows)
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static str,
    );

    const DST_CASES: &[Case] = &[
        // Europe/Berlin spring 2024-03-31: 02:00 CET -> 03:00 CEST at 01:00Z.
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2024-03-29T12:00Z",
            &[
                "2024-03-30T01:30Z",
                "2024-03-31T01:00Z",
                "2024-04-01T00:30Z",
            ],
            "daily at a skipped time fires at the gap's end",
        ),
        (
            "Europe/Berlin",
            "*/15 * * * *",
            "2024-03-31T00:30Z",
            &[
                "2024-03-31T00:45Z",
                "2024-03-31T01:00Z",
                "2024-03-31T01:15Z",
                "2024-03-31T01:30Z",
            ],
            "02:00..02:45 and 03:00 collapse into one run at 01:00Z",
        ),
        (
            "Europe/Berlin",
            "0,30 2,3 * * *",
            "2024-03-31T00:00Z",
            &[
                "2024-03-31T01:00Z",
                "2024-03-31T01:30Z",
                "2024-04-01T00:00Z",
                "2024-04-01T00:30Z",
            ],
            "several matches in a gap fire once",
        ),
        // Europe/Berlin fall 2024-10-27: 03:00 CEST -> 02:00 CET at 01:00Z.
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2024-10-25T12:00Z",
            &[
                "2024-10-26T00:30Z",
                "2024-10-27T00:30Z",
                "2024-10-28T01:30Z",
            ],
            "daily at a repeated time fires once, at the first occurrence",
        ),
        (
            "Europe/Berlin",
            "*/15 * * * *",
            "2024-10-26T23:30Z",
            &[
                "2024-10-26T23:45Z",
                "2024-10-27T00:00Z",
                "2024-10-27T00:15Z",
                "2024-10-27T00:30Z",
                "2024-10-27T00:45Z",
                "2024-10-27T02:00Z",
                "2024-10-27T02:15Z",
            ],
            "the repeated hour's second pass does not fire",
        ),
        (
            "Europe/Berlin",
            "*/15 * * * *",
            "2024-10-27T01:10Z",
            &["2024-10-27T02:00Z"],
            "starting inside the second pass skips to after it",
        ),
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2024-10-27T00:30Z",
            &["2024-10-28T01:30Z"],
            "a repeated time that fired is not fired again",
        ),
        // America/New_York spring 2024-03-10: 02:00 EST -> 03:00 EDT at 07:00Z.
        (
            "America/New_York",
            "30 2 * * *",
            "2024-03-08T12:00Z",
            &[
                "2024-03-09T07:30Z",
                "2024-03-10T07:00Z",
                "2024-03-11T06:30Z",
            ],
            "daily at a skipped time",
        ),
        (
            "America/New_York",
            "*/15 * * * *",
            "2024-03-10T06:30Z",
            &[
                "2024-03-10T06:45Z",
                "2024-03-10T07:00Z",
                "2024-03-10T07:15Z",
                "2024-03-10T07:30Z",
            ],
            "every 15 minutes across spring forward",
        ),
        // America/New_York fall 2024-11-03: 02:00 EDT -> 01:00 EST at 06:00Z.
        (
            "America/New_York",
            "30 1 * * *",
            "2024-11-01T12:00Z",
            &[
                "2024-11-02T05:30Z",
                "2024-11-03T05:30Z",
                "2024-11-04T06:30Z",
            ],
            "daily at a repeated time",
        ),
        (
            "America/New_York",
            "*/15 * * * *",
            "2024-11-03T04:30Z",
            &[
                "2024-11-03T04:45Z",
                "2024-11-03T05:00Z",
                "2024-11-03T05:15Z",
                "2024-11-03T05:30Z",
                "2024-11-03T05:45Z",
                "2024-11-03T07:00Z",
                "2024-11-03T07:15Z",
            ],
            "every 15 minutes across fall back",
        ),
        // Australia/Lord_Howe fall 2024-04-07: 02:00 (+11) -> 01:30 (+10:30) at 04-06 15:00Z.
        (
            "Australia/Lord_Howe",
            "45 1 * * *",
            "2024-04-05T00:00Z",
            &[
                "2024-04-05T14:45Z",
                "2024-04-06T14:45Z",
                "2024-04-07T15:15Z",
            ],
            "daily at a time repeated by a 30-minute shift",
        ),
        (
            "Australia/Lord_Howe",
            "*/15 * * * *",
            "2024-04-06T14:00Z",
            &[
                "2024-04-06T14:15Z",
                "2024-04-06T14:30Z",
                "2024-04-06T14:45Z",
                "2024-04-06T15:30Z",
                "2024-04-06T15:45Z",
            ],
            "every 15 minutes across a 30-minute fall back",
        ),
        // Australia/Lord_Howe spring 2024-10-06: 02:00 (+10:30) -> 02:30 (+11) at 10-05 15:30Z.
        (
            "Australia/Lord_Howe",
            "15 2 * * *",
            "2024-10-04T00:00Z",
            &[
                "2024-10-04T15:45Z",
                "2024-10-05T15:30Z",
                "2024-10-06T15:15Z",
            ],
            "daily at a time skipped by a 30-minute shift",
        ),
        (
            "Australia/Lord_Howe",
            "*/15 * * * *",
            "2024-10-05T15:00Z",
            &[
                "2024-10-05T15:15Z",
                "2024-10-05T15:30Z",
                "2024-10-05T15:45Z",
                "2024-10-05T16:00Z",
            ],
            "every 15 minutes across a 30-minute spring forward",
        ),
    ];

    #[test]
    fn dst_table() {
        for (zone, expr, from, want, what) in DST_CASES {
            let want: Vec<_> = want.iter().map(|s| at(s)).collect();
            let got = fires(expr, zone, from, want.len());
            assert_eq!(got, want, "{zone} {expr:?} from {from}: {what}");
        }
    }

    /// Independent reference: the instant a local minute fires at is the first
    /// instant whose local time is at or past it (this is the earlier
    /// occurrence of a repeated time, and the end of a gap for a skipped one).
    /// Every minute of 3 days around each transition is checked.
    #[test]
    fn matches_a_brute_force_reference_around_transitions() {
        let transitions = [
            ("Europe/Berlin", "2024-03-31T01:00Z"),
            ("Europe/Berlin", "2024-10-27T01:00Z"),
            ("America/New_York", "2024-03-10T07:00Z"),
            ("America/New_York", "2024-11-03T06:00Z"),
            ("Australia/Lord_Howe", "2024-04-06T15:00Z"),
            ("Australia/Lord_Howe", "2024-10-05T15:30Z"),
        ];
        let patterns = [
            "* * * * *",
            "*/15 * * * *",
            "*/7 * * * *",
            "30 2 * * *",
            "0 2 * * *",
            "45 1 * * *",
            "59 1 * * *",
            "0,30 1-3 * * *",
            "0 3 * * *",
        ];
        for (zone, transition) in transitions {
            let tz: Tz = zone.parse().unwrap();
            let start = at(transition) - Duration::hours(36);
            let end = at(transition) + Duration::hours(36);
            let instants: Vec<_> = (0..=72 * 60)
                .map(|m| start + Duration::minutes(m))
                .collect();
            let mut high = NaiveDateTime::MIN;
            let running_max: Vec<_> = instants
                .iter()
                .map(|u| {
                    high = high.max(u.with_timezone(&tz).naive_local());
                    high
                })
                .collect();
            let first_local = start.with_timezone(&tz).naive_local();
            let last_local = end.with_timezone(&tz).naive_local();
            for expr in patterns {
                let cron = CronExpr::parse(expr, zone).unwrap();
                let mut want = Vec::new();
                let mut l = first_local;
                while l <= last_local {
                    if cron.cron.is_time_matching(&l.and_utc()).unwrap() {
                        let i = running_max.partition_point(|m| *m < l);
                        if let Some(u) = instants.get(i).filter(|u| **u > start) {
                            want.push(*u);
                        }
                    }
                    l += Duration::minutes(1);
                }
                want.sort();
                want.dedup();
                want.retain(|u| *u <= end - Duration::hours(12));
                let mut got = Vec::new();
                let mut t = start;
                while let Some(next) = cron
                    .next_after(t)
                    .filter(|n| *n <= end - Duration::hours(12))
                {
                    got.push(next);
                    t = next;
                }
                assert!(!want.is_empty());
                assert_eq!(got, want, "{zone} {expr:?} around {transition}");
            }
        }
    }

    #[test]
    fn gap_end_maps_to_the_transition_instant() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let local = |s: &str| at(s).naive_utc();
        assert_eq!(
            local_to_instant(berlin, local("2024-03-31 02:30:17")),
            Some(at("2024-03-31T01:00:00Z"))
        );
        assert_eq!(
            local_to_instant(berlin, local("2024-10-27 02:30")),
            Some(at("2024-10-27T00:30Z"))
        );
        // Samoa skipped all of 2011-12-30.
        let apia: Tz = "Pacific/Apia".parse().unwrap();
        assert_eq!(
            local_to_instant(apia, local("2011-12-30 12:00")),
            Some(at("2011-12-30T10:00Z"))
        );
    }

    #[test]
    fn five_and_six_fields() {
        assert_eq!(
            fires("*/20 * * * *", "UTC", "2024-01-01T10:05:00Z", 3),
            vec![
                at("2024-01-01T10:20Z"),
                at("2024-01-01T10:40Z"),
                at("2024-01-01T11:00Z")
            ]
        );
        assert_eq!(
            fires("30 0 0 * * *", "UTC", "2024-01-01T00:00:30Z", 2),
            vec![at("2024-01-02T00:00:30Z"), at("2024-01-03T00:00:30Z")]
        );
        assert_eq!(
            fires("*/10 * * * * *", "UTC", "2024-01-01T00:00:00Z", 2),
            vec![at("2024-01-01T00:00:10Z"), at("2024-01-01T00:00:20Z")]
        );
        assert_eq!(
            fires("0 9 * * MON-FRI", "Europe/Berlin", "2024-01-05T09:00Z", 2),
            vec![at("2024-01-08T08:00Z"), at("2024-01-09T08:00Z")]
        );
    }

    #[test]
    fn next_after_is_strict_and_ignores_sub_seconds() {
        let every_second = CronExpr::parse("* * * * * *", "UTC").unwrap();
        let t = at("2024-01-01T10:00:00.5Z");
        assert_eq!(every_second.next_after(t), Some(at("2024-01-01T10:00:01Z")));
        let every_minute = CronExpr::parse("* * * * *", "UTC").unwrap();
        assert_eq!(every_minute.next_after(t), Some(at("2024-01-01T10:01:00Z")));
        let on_time = at("2024-01-01T10:01:00Z");
        assert_eq!(
            every_minute.next_after(on_time),
            Some(at("2024-01-01T10:02:00Z"))
        );
    }

    #[test]
    fn aliases() {
        let from = "2024-05-15T10:20:00Z";
        let cases = [
            ("@hourly", "2024-05-15T11:00Z"),
            ("@daily", "2024-05-16T00:00Z"),
            ("@midnight", "2024-05-16T00:00Z"),
            ("@weekly", "2024-05-19T00:00Z"),
            ("@monthly", "2024-06-01T00:00Z"),
            ("@yearly", "2025-01-01T00:00Z"),
            ("@annually", "2025-01-01T00:00Z"),
            ("@DAILY", "2024-05-16T00:00Z"),
        ];
        for (alias, want) in cases {
            assert_eq!(fires(alias, "UTC", from, 1), vec![at(want)], "{alias}");
            assert_eq!(CronExpr::parse(alias, "UTC").unwrap().expr(), alias);
        }
        assert_eq!(
            fires("@daily", "America/New_York", from, 1),
            vec![at("2024-05-16T04:00Z")]
        );
    }

    #[test]
    fn accessors_and_equality() {
        let c = CronExpr::parse("  0 3 * * *  ", "Europe/Berlin").unwrap();
        assert_eq!(c.expr(), "0 3 * * *");
        assert_eq!(c.timezone(), Tz::Europe__Berlin);
        assert_eq!(c, CronExpr::parse("0 3 * * *", "Europe/Berlin").unwrap());
        assert_ne!(c, CronExpr::parse("0 3 * * *", "UTC").unwrap());
    }

    #[test]
    fn refusals_say_why() {
        let cases = [
            ("", "it is empty"),
            ("@reboot", "@reboot is not supported"),
            ("@every 5m", "unknown alias"),
            ("@fortnightly", "unknown alias"),
            ("0 0 * * * @daily", "\"@\" may only start an alias"),
            ("* * * *", "it has 4 fields"),
            ("* * * * * * *", "it has 7 fields"),
            (
                "60 * * * *",
                "cron: \"60 * * * *\" is not a cron expression",
            ),
            ("* 24 * * *", "is not a cron expression"),
            ("* * 32 * *", "is not a cron expression"),
            ("* * * 13 *", "is not a cron expression"),
            ("hello world", "it has 2 fields"),
            ("a b c d e", "is not a cron expression"),
            ("0 0 30 2 *", "no date ever matches it"),
            ("0 0 31 4,6,9,11 *", "no date ever matches it"),
        ];
        for (expr, want) in cases {
            let err = CronExpr::parse(expr, "UTC").expect_err(expr).0;
            assert!(err.starts_with("cron: "), "{err}");
            assert!(err.contains(want), "{expr:?}: {err}");
            assert!(err.contains("@hourly"), "{err}");
        }
        assert_eq!(
            CronExpr::parse("* * * * *", "Mars/Base").unwrap_err().0,
            "timezone: \"Mars/Base\" is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")"
        );
        // Rare but possible: February 29th.
        assert_eq!(
            fires("0 0 29 2 *", "UTC", "2024-03-01T00:00Z", 1),
            vec![at("2028-02-29T00:00Z")]
        );
    }
}
