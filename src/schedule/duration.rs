//! Durations (`periodically`, `misfire_grace_time`, `timeout`, …).
//!
//! Accepted, case-insensitive, surrounding whitespace ignored:
//!
//! - a plain number of seconds: `"90"`, `"1.5"`;
//! - numbers with units, one or several, spaces and commas optional:
//!   `"1 week"`, `"2 weeks"`, `"365 days"`, `"32m"`, `"1h30m"`, `"2h 30m 10s"`,
//!   `"500ms"`, `"1.5 hours"`. Units: `ms`/`msec`/`millisecond(s)`,
//!   `s`/`sec(s)`/`second(s)`, `m`/`min(s)`/`minute(s)`, `h`/`hr(s)`/`hour(s)`,
//!   `d`/`day(s)`, `w`/`wk(s)`/`week(s)`;
//! - Python `timedelta` text, `H:MM:SS[.ffffff]` optionally after days:
//!   `"5:00:00"`, `"0:00:30"`, `"1 day, 0:00:00"`, `"3 days, 4:05:06"`;
//! - ISO 8601 durations: `"PT5M"`, `"P1DT2H"`, `"PT0.5S"`, `"P2W"` (fractions
//!   allowed, with `.` or `,`).
//!
//! Refused, each with a message naming the input and showing valid forms:
//! empty input, negative values, unknown units, NaN/infinity, months and years
//! (their length varies: ask for days or weeks instead), and anything longer
//! than [`MAX_DURATION_DAYS`] days (about 10,000 years, far inside what chrono and
//! PostgreSQL can represent, so `anchor + k·every` arithmetic stays safe).
//! Zero is accepted here; callers decide whether zero makes sense.
//!
//! Precision is the nanosecond; finer fractions are truncated.
//!
//! [`format_duration`] writes Python `timedelta` style (`"0:05:00"`,
//! `"1 day, 0:00:00"`, `"0:00:01.500000"`), which [`parse_duration`] reads back.

use chrono::Duration;
use serde_json::Value;

use super::{quote, ParseError};

/// The longest duration accepted, in days (about 10,000 years).
pub const MAX_DURATION_DAYS: i64 = 3_652_500;

const NANOS_PER_SEC: i128 = 1_000_000_000;
const NANOS_PER_DAY: i128 = 86_400 * NANOS_PER_SEC;
const MAX_NANOS: i128 = MAX_DURATION_DAYS as i128 * NANOS_PER_DAY;
const EXAMPLES: &str = "use e.g. \"1 week\", \"5:00:00\", \"32m\", \"PT5M\" or a number of seconds";

/// Why an input is refused; turned into a message by [`not_a_duration`].
#[derive(Debug)]
enum Fail {
    /// Not a form we know: the generic message says enough.
    Invalid,
    Empty,
    Negative,
    MonthsOrYears,
    TooLong,
}

fn not_a_duration(shown: &str, fail: Fail) -> ParseError {
    let reason = match fail {
        Fail::Invalid => return ParseError(format!("{shown} is not a duration; {EXAMPLES}")),
        Fail::Empty => "it is empty".to_string(),
        Fail::Negative => "negative durations are not allowed".to_string(),
        Fail::MonthsOrYears => "months and years are not accepted because their length \
                                varies; use days or weeks (e.g. \"30 days\", \"52 weeks\")"
            .to_string(),
        Fail::TooLong => format!("it is longer than the limit of {MAX_DURATION_DAYS} days"),
    };
    ParseError(format!("{shown} is not a duration: {reason}; {EXAMPLES}"))
}

/// Parses a duration in any of the forms listed in the module docs.
pub fn parse_duration(input: &str) -> Result<Duration, ParseError> {
    parse_nanos(input)
        .and_then(nanos_to_duration)
        .map_err(|fail| not_a_duration(&quote(input), fail))
}

/// Reads a duration from JSON: a number is seconds (may be fractional; must be
/// finite and >= 0), a string goes through [`parse_duration`]. Anything else
/// (including `null`) is an error: callers handle "absent" themselves.
pub fn duration_from_json(value: &Value) -> Result<Duration, ParseError> {
    let shown = || {
        let text = value.to_string();
        match text.char_indices().nth(80) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text,
        }
    };
    let nanos = match value {
        Value::String(s) => return parse_duration(s),
        Value::Number(n) => {
            if let Some(secs) = n.as_u64() {
                Ok(i128::from(secs) * NANOS_PER_SEC)
            } else if n.as_i64().is_some() {
                Err(Fail::Negative)
            } else {
                match n.as_f64() {
                    Some(f) if !f.is_finite() => Err(Fail::Invalid),
                    Some(f) if f < 0.0 => Err(Fail::Negative),
                    Some(f) if f * 1e9 > MAX_NANOS as f64 => Err(Fail::TooLong),
                    // In range: the cast cannot saturate.
                    Some(f) => Ok((f * 1e9).round() as i128),
                    None => Err(Fail::Invalid),
                }
            }
        }
        _ => Err(Fail::Invalid),
    };
    nanos
        .and_then(nanos_to_duration)
        .map_err(|fail| not_a_duration(&shown(), fail))
}

/// Formats like Python's `str(timedelta)`: `"0:05:00"`, `"1 day, 0:00:00"`,
/// `"7 days, 0:00:00"`, `"0:00:01.500000"`, `"-1 day, 23:59:59"`. Sub-second
/// parts show 6 digits, or 9 when the value has sub-microsecond nanoseconds.
pub fn format_duration(d: Duration) -> String {
    let total = i128::from(d.num_seconds()) * NANOS_PER_SEC + i128::from(d.subsec_nanos());
    let days = total.div_euclid(NANOS_PER_DAY);
    let rest = total.rem_euclid(NANOS_PER_DAY);
    let secs = rest / NANOS_PER_SEC;
    let sub = rest % NANOS_PER_SEC;
    let mut out = String::new();
    if days != 0 {
        let plural = if days.abs() == 1 { "" } else { "s" };
        out.push_str(&format!("{days} day{plural}, "));
    }
    out.push_str(&format!(
        "{}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    ));
    if sub != 0 {
        if sub % 1000 == 0 {
            out.push_str(&format!(".{:06}", sub / 1000));
        } else {
            out.push_str(&format!(".{sub:09}"));
        }
    }
    out
}

fn nanos_to_duration(nanos: i128) -> Result<Duration, Fail> {
    if nanos < 0 {
        return Err(Fail::Negative);
    }
    if nanos > MAX_NANOS {
        return Err(Fail::TooLong);
    }
    let secs = i64::try_from(nanos / NANOS_PER_SEC).map_err(|_| Fail::TooLong)?;
    let sub = u32::try_from(nanos % NANOS_PER_SEC).map_err(|_| Fail::TooLong)?;
    Duration::new(secs, sub).ok_or(Fail::TooLong)
}

fn parse_nanos(input: &str) -> Result<i128, Fail> {
    let s = input.trim().to_ascii_lowercase();
    if s.is_empty() {
        return Err(Fail::Empty);
    }
    let bytes = s.as_bytes();
    let negative = bytes[0] == b'-'
        || bytes
            .windows(2)
            .any(|w| w[0] == b'-' && (w[1].is_ascii_digit() || w[1] == b'.'));
    if negative {
        return Err(Fail::Negative);
    }
    match s.strip_prefix('p') {
        Some(iso) => parse_iso(iso),
        None => parse_human(&s),
    }
}

/// `[units…][,] H:MM:SS[.f]`, or units alone, or a bare number of seconds.
fn parse_human(s: &str) -> Result<i128, Fail> {
    // The separator may be a multi-byte space (U+00A0): the clock starts
    // after its last byte, not after its first.
    let separator = s
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace() || *c == ',');
    let (units, clock) = match separator {
        Some((i, c)) if s[i + c.len_utf8()..].contains(':') => {
            (&s[..i], Some(&s[i + c.len_utf8()..]))
        }
        None if s.contains(':') => ("", Some(s)),
        _ => (s, None),
    };
    let clock_nanos = match clock {
        Some(c) => parse_clock(c)?,
        None => 0,
    };
    let units = units.trim_end_matches(|c: char| c.is_whitespace() || c == ',');
    if units.contains(':') {
        return Err(Fail::Invalid);
    }
    let unit_nanos = if units.is_empty() {
        if clock.is_none() {
            return Err(Fail::Invalid);
        }
        0
    } else {
        parse_units(units)?
    };
    unit_nanos.checked_add(clock_nanos).ok_or(Fail::TooLong)
}

/// `H:MM:SS` with an optional fraction on the seconds; hours may exceed 23.
fn parse_clock(c: &str) -> Result<i128, Fail> {
    let parts: Vec<&str> = c.split(':').collect();
    let [h, m, s] = parts.as_slice() else {
        return Err(Fail::Invalid);
    };
    let (s_int, s_frac) = s.split_once('.').unwrap_or((s, ""));
    let small = |v: &str| v.len() <= 2 && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    if h.is_empty()
        || !h.bytes().all(|b| b.is_ascii_digit())
        || !small(m)
        || !small(s_int)
        || (s.contains('.') && s_frac.is_empty())
    {
        return Err(Fail::Invalid);
    }
    let hours = decimal(h, 3600 * NANOS_PER_SEC)?;
    let minutes = decimal(m, 60 * NANOS_PER_SEC)?;
    let seconds = decimal(s, NANOS_PER_SEC)?;
    if minutes >= 3600 * NANOS_PER_SEC || seconds >= 60 * NANOS_PER_SEC {
        return Err(Fail::Invalid);
    }
    hours.checked_add(minutes + seconds).ok_or(Fail::TooLong)
}

/// One or more `<number><unit>` items; a single bare number means seconds.
fn parse_units(s: &str) -> Result<i128, Fail> {
    let mut rest = s;
    let mut total: i128 = 0;
    let mut items = 0;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            break;
        }
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_end];
        rest = rest[num_end..].trim_start();
        let word_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let word = &rest[..word_end];
        rest = &rest[word_end..];
        if number.is_empty() {
            return Err(Fail::Invalid);
        }
        let unit = if word.is_empty() {
            // A bare number is only allowed alone: "90", not "1h 30".
            if items > 0 || !rest.trim().is_empty() {
                return Err(Fail::Invalid);
            }
            NANOS_PER_SEC
        } else {
            unit_nanos(word)?
        };
        let item = decimal(number, unit)?;
        total = total.checked_add(item).ok_or(Fail::TooLong)?;
        items += 1;
    }
    if items == 0 {
        return Err(Fail::Invalid);
    }
    Ok(total)
}

fn unit_nanos(word: &str) -> Result<i128, Fail> {
    Ok(match word {
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => NANOS_PER_SEC / 1000,
        "s" | "sec" | "secs" | "second" | "seconds" => NANOS_PER_SEC,
        "m" | "min" | "mins" | "minute" | "minutes" => 60 * NANOS_PER_SEC,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600 * NANOS_PER_SEC,
        "d" | "day" | "days" => NANOS_PER_DAY,
        "w" | "wk" | "wks" | "week" | "weeks" => 7 * NANOS_PER_DAY,
        "mo" | "mon" | "mons" | "month" | "months" | "y" | "yr" | "yrs" | "year" | "years" => {
            return Err(Fail::MonthsOrYears)
        }
        _ => return Err(Fail::Invalid),
    })
}

/// The part after `P` of an ISO 8601 duration, lowercased: `t5m`, `1dt2h`, `2w`.
fn parse_iso(s: &str) -> Result<i128, Fail> {
    let (date, time) = match s.split_once('t') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    // "P" and "P1DT" are incomplete.
    if (date.is_empty() && time.is_none()) || time == Some("") {
        return Err(Fail::Invalid);
    }
    let mut total = iso_part(date, &['y', 'm', 'w', 'd'], true)?;
    if let Some(time) = time {
        let t = iso_part(time, &['h', 'm', 's'], false)?;
        total = total.checked_add(t).ok_or(Fail::TooLong)?;
    }
    Ok(total)
}

/// Components `<number><designator>` in the given order, each at most once.
fn iso_part(s: &str, order: &[char], is_date: bool) -> Result<i128, Fail> {
    let mut rest = s;
    let mut next = 0;
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
            .ok_or(Fail::Invalid)?;
        let number = rest[..end].replace(',', ".");
        let designator = rest[end..].chars().next().ok_or(Fail::Invalid)?;
        rest = &rest[end + designator.len_utf8()..];
        let pos = order[next..]
            .iter()
            .position(|&c| c == designator)
            .ok_or(Fail::Invalid)?;
        next += pos + 1;
        let unit = match (designator, is_date) {
            ('y', true) | ('m', true) => return Err(Fail::MonthsOrYears),
            ('w', true) => 7 * NANOS_PER_DAY,
            ('d', true) => NANOS_PER_DAY,
            ('h', false) => 3600 * NANOS_PER_SEC,
            ('m', false) => 60 * NANOS_PER_SEC,
            ('s', false) => NANOS_PER_SEC,
            _ => return Err(Fail::Invalid),
        };
        total = total
            .checked_add(decimal(&number, unit)?)
            .ok_or(Fail::TooLong)?;
    }
    Ok(total)
}

/// `digits[.digits]` times `unit` nanoseconds, exactly (fraction truncated to
/// the nanosecond). Too many digits is [`Fail::TooLong`], not a panic.
fn decimal(number: &str, unit: i128) -> Result<i128, Fail> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |v: &str| v.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return Err(Fail::Invalid);
    }
    let mut whole: i128 = 0;
    for b in int.bytes() {
        whole = whole
            .checked_mul(10)
            .and_then(|w| w.checked_add(i128::from(b - b'0')))
            .ok_or(Fail::TooLong)?;
    }
    let mut value = whole.checked_mul(unit).ok_or(Fail::TooLong)?;
    let frac = &frac[..frac.len().min(18)];
    if !frac.is_empty() {
        let digits: i128 = frac.parse().map_err(|_| Fail::Invalid)?;
        let scale = 10i128.pow(frac.len() as u32);
        value = value
            .checked_add(digits * unit / scale)
            .ok_or(Fail::TooLong)?;
    }
    if value > MAX_NANOS {
        return Err(Fail::TooLong);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secs(s: i64) -> Duration {
        Duration::seconds(s)
    }

    #[test]
    fn accepts_every_documented_form() {
        let ms = Duration::milliseconds;
        let cases: &[(&str, Duration)] = &[
            ("1 week", secs(7 * 86_400)),
            ("2 weeks", secs(14 * 86_400)),
            ("5:00:00", secs(5 * 3600)),
            ("0:00:30", secs(30)),
            ("32m", secs(32 * 60)),
            ("1 day, 0:00:00", secs(86_400)),
            ("3 days, 4:05:06", secs(3 * 86_400 + 4 * 3600 + 5 * 60 + 6)),
            ("365 days", secs(365 * 86_400)),
            ("365 days, 0:00:00", secs(365 * 86_400)),
            ("PT5M", secs(300)),
            ("P1DT2H", secs(86_400 + 7200)),
            ("PT0.5S", ms(500)),
            ("P2W", secs(14 * 86_400)),
            (
                "P1W2DT3H4M5.25S",
                ms((9 * 86_400 + 3 * 3600 + 4 * 60 + 5) * 1000 + 250),
            ),
            ("pt1,5h", secs(5400)),
            ("90", secs(90)),
            ("1.5", ms(1500)),
            (".5", ms(500)),
            ("1h30m", secs(5400)),
            ("2h 30m 10s", secs(2 * 3600 + 30 * 60 + 10)),
            ("500ms", ms(500)),
            ("1.5 hours", secs(5400)),
            ("1 day, 2 hours", secs(86_400 + 7200)),
            ("1 second", secs(1)),
            ("2 seconds", secs(2)),
            ("3 sec", secs(3)),
            ("4 secs", secs(4)),
            ("5s", secs(5)),
            ("1 minute", secs(60)),
            ("2 minutes", secs(120)),
            ("3 min", secs(180)),
            ("4 mins", secs(240)),
            ("1 hour", secs(3600)),
            ("2 hours", secs(7200)),
            ("3 hr", secs(3 * 3600)),
            ("4 hrs", secs(4 * 3600)),
            ("5h", secs(5 * 3600)),
            ("1 day", secs(86_400)),
            ("2d", secs(2 * 86_400)),
            ("3w", secs(21 * 86_400)),
            ("250 milliseconds", ms(250)),
            ("1 millisecond", ms(1)),
            ("  1 WEEK  ", secs(7 * 86_400)),
            ("\t2H30M\n", secs(9000)),
            ("0:00:01.500000", ms(1500)),
            ("36:00:00", secs(36 * 3600)),
            ("0", secs(0)),
            ("0s", secs(0)),
            ("PT0S", secs(0)),
            ("0:00:00", secs(0)),
            ("0.000000001", Duration::nanoseconds(1)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(*want), "input {input:?}");
        }
    }

    #[test]
    fn refuses_bad_input_with_the_input_and_examples() {
        let cases = [
            "",
            "   ",
            "-5",
            "-1 day, 23:59:59",
            "5 parsecs",
            "1h 30",
            "h",
            "1..5s",
            "nan",
            "inf",
            "NaN seconds",
            "infinity",
            "P",
            "P1DT",
            "PT",
            "P1H",
            "PT1D",
            "PT5M3H",
            "5:00",
            "1:60:00",
            "1:00:60",
            "1:00:00:00",
            "1::00",
            "1.5:00:00",
            "12:00:00 5m",
            "1 ms s",
            "99999999999999 weeks",
            "3652501 days",
            "1e3",
            "P1M",
            "P1Y",
            "3 months",
            "1 year",
            "2y",
            "5 mo",
            "PT-5M",
            "1.5.5",
            "0x10",
            "1 day,, 0:00:00x",
        ];
        for input in cases {
            let err = parse_duration(input).expect_err(input).0;
            assert!(err.contains(&quote(input)), "{input:?}: {err}");
            assert!(
                err.contains("\"1 week\", \"5:00:00\", \"32m\", \"PT5M\""),
                "{err}"
            );
        }
    }

    #[test]
    fn error_reasons_are_specific() {
        let reason = |input: &str| parse_duration(input).unwrap_err().0;
        assert!(reason("-5m").contains("negative durations are not allowed"));
        assert!(reason("3 months").contains("months and years are not accepted"));
        assert!(reason("P1Y").contains("months and years are not accepted"));
        assert!(reason("99999999999999 weeks").contains("longer than the limit"));
        assert!(reason("").contains("it is empty"));
        assert_eq!(
            reason("5 parsecs"),
            "\"5 parsecs\" is not a duration; use e.g. \"1 week\", \"5:00:00\", \"32m\", \
             \"PT5M\" or a number of seconds"
        );
    }

    #[test]
    fn multi_byte_spaces_separate_like_spaces() {
        // Found by the property test: slicing inside U+00A0 panicked.
        assert!(parse_duration("A\u{a0}a").is_err());
        assert_eq!(parse_duration("1 day,\u{a0}0:00:01"), Ok(secs(86_401)));
        assert_eq!(parse_duration("2\u{a0}days"), Ok(secs(2 * 86_400)));
        assert!(parse_duration("x\u{3000}1:00:00").is_err());
    }

    #[test]
    fn max_is_accepted_and_one_more_is_not() {
        assert_eq!(
            parse_duration(&format!("{MAX_DURATION_DAYS} days")),
            Ok(Duration::days(MAX_DURATION_DAYS))
        );
        assert!(parse_duration(&format!("{MAX_DURATION_DAYS} days 1ms")).is_err());
        assert!(parse_duration(&"9".repeat(60)).is_err());
        assert!(parse_duration(&format!("1.{}s", "9".repeat(60))).is_ok());
    }

    #[test]
    fn json_numbers_are_seconds_and_strings_are_parsed() {
        assert_eq!(duration_from_json(&json!(90)), Ok(secs(90)));
        assert_eq!(duration_from_json(&json!(0)), Ok(secs(0)));
        assert_eq!(
            duration_from_json(&json!(1.5)),
            Ok(Duration::milliseconds(1500))
        );
        assert_eq!(
            duration_from_json(&json!(0.25)),
            Ok(Duration::milliseconds(250))
        );
        assert_eq!(duration_from_json(&json!("PT5M")), Ok(secs(300)));
        assert_eq!(duration_from_json(&json!("1 week")), Ok(secs(604_800)));
        for bad in [
            json!(-1),
            json!(-0.5),
            json!(1e300),
            json!(u64::MAX),
            json!(null),
            json!(true),
            json!([1]),
            json!({"s": 1}),
            json!("5 parsecs"),
        ] {
            let err = duration_from_json(&bad).expect_err(&bad.to_string()).0;
            assert!(err.contains("is not a duration"), "{err}");
            assert!(err.contains("\"PT5M\""), "{err}");
        }
        assert!(duration_from_json(&json!(-1))
            .unwrap_err()
            .0
            .starts_with("-1 is not a duration: negative"));
    }

    #[test]
    fn formats_like_python_timedelta() {
        let cases = [
            (secs(300), "0:05:00"),
            (secs(86_400), "1 day, 0:00:00"),
            (secs(7 * 86_400), "7 days, 0:00:00"),
            (secs(365 * 86_400), "365 days, 0:00:00"),
            (secs(3 * 86_400 + 4 * 3600 + 5 * 60 + 6), "3 days, 4:05:06"),
            (Duration::milliseconds(1500), "0:00:01.500000"),
            (Duration::nanoseconds(1), "0:00:00.000000001"),
            (secs(0), "0:00:00"),
            (secs(36 * 3600), "1 day, 12:00:00"),
            (secs(-1), "-1 day, 23:59:59"),
            (secs(-2 * 86_400), "-2 days, 0:00:00"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want);
        }
    }

    #[test]
    fn format_then_parse_round_trips() {
        for d in [
            secs(0),
            secs(59),
            secs(86_399),
            secs(86_400),
            Duration::nanoseconds(1_234_567_891),
            Duration::days(MAX_DURATION_DAYS),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
