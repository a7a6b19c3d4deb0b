//! Points in time (`when`) and time zones (`timezone`).
//!
//! [`parse_when`] accepts, surrounding whitespace ignored:
//!
//! - RFC 3339 with an offset or `Z`: `"2017-02-20T14:56:00+02:00"`,
//!   `"2017-02-20T12:56:00Z"` (also with a space for the `T`, without seconds,
//!   or with an offset written `+0200`);
//! - naive date-times, **taken as UTC**: `"2017-02-20T14:56:00"`,
//!   `"2017-02-20 14:56:00"`, `"2017-02-20 14:56"`, `"2017-02-20T14:56"`,
//!   `"2017-02-20 14:56:07.123456"`;
//! - a date alone, meaning midnight UTC: `"2017-02-20"`;
//! - any naive form followed by `Z` or `UTC` (with or without a space), which
//!   says the same thing explicitly: `"2017-02-20 14:56 UTC"`.
//!
//! Years must be 1 to 9999. Errors name the input and list the accepted forms;
//! they carry no field name (the caller adds `when:` with
//! [`ParseError::in_field`]).
//!
//! [`parse_timezone`] takes an IANA name (`"Europe/Berlin"`, `"UTC"`), exact
//! or differing only in case. Its errors start with `timezone:` because that
//! is the one field holding a zone.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, Utc};
use chrono_tz::Tz;

use super::{quote, ParseError};

const WHEN_FORMS: &str = "use RFC 3339 (e.g. \"2017-02-20T14:56:00+02:00\" or \
     \"2017-02-20T12:56:00Z\") or a date-time taken as UTC such as \"2017-02-20 14:56\", \
     \"2017-02-20T14:56:07\", \"2017-02-20 14:56:07.123456\" or \"2017-02-20\"";

/// Forms with an explicit numeric offset, beyond what RFC 3339 parsing takes.
const OFFSET_FORMATS: &[&str] = &[
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M%#z",
    "%Y-%m-%d %H:%M%#z",
];

/// Naive forms, taken as UTC.
const NAIVE_FORMATS: &[&str] = &[
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
];

/// Parses a `when` value into a UTC instant (see the module docs for forms).
pub fn parse_when(input: &str) -> Result<DateTime<Utc>, ParseError> {
    let s = input.trim();
    let Some(at) = parse_any(s) else {
        return Err(ParseError(format!(
            "{} is not a date-time; {WHEN_FORMS}",
            quote(input)
        )));
    };
    if !(1..=9999).contains(&at.year()) {
        return Err(ParseError(format!(
            "{} is not a date-time: the year must be 1 to 9999; {WHEN_FORMS}",
            quote(input)
        )));
    }
    Ok(at)
}

fn parse_any(s: &str) -> Option<DateTime<Utc>> {
    // Every accepted form starts with a four-digit year and a dash; this also
    // keeps chrono's signed or longer years ("+12345-…") out.
    let b = s.as_bytes();
    if b.len() < 10 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return None;
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(s) {
        return Some(at.to_utc());
    }
    let with_offset = OFFSET_FORMATS
        .iter()
        .find_map(|f| DateTime::<FixedOffset>::parse_from_str(s, f).ok());
    if let Some(at) = with_offset {
        return Some(at.to_utc());
    }
    let naive = strip_utc_suffix(s);
    let at = NAIVE_FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(naive, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(naive, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })?;
    Some(at.and_utc())
}

/// Removes one trailing `Z` or `UTC` (any case, optional space before it).
fn strip_utc_suffix(s: &str) -> &str {
    let lower = s.to_ascii_lowercase();
    let cut = if lower.ends_with("utc") {
        3
    } else if lower.ends_with('z') {
        1
    } else {
        0
    };
    s[..s.len() - cut].trim_end()
}

/// Parses an IANA time zone name; the match is exact, or else ignores case.
pub fn parse_timezone(name: &str) -> Result<Tz, ParseError> {
    let trimmed = name.trim();
    if let Ok(tz) = trimmed.parse::<Tz>() {
        return Ok(tz);
    }
    if !trimmed.is_empty() {
        let found = chrono_tz::TZ_VARIANTS
            .iter()
            .find(|tz| tz.name().eq_ignore_ascii_case(trimmed));
        if let Some(tz) = found {
            return Ok(*tz);
        }
    }
    Err(ParseError(format!(
        "timezone: {} is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")",
        quote(name)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn accepts_every_documented_form() {
        let base = utc(2017, 2, 20, 14, 56, 0);
        let frac = utc(2017, 2, 20, 14, 56, 7) + chrono::Duration::microseconds(123_456);
        let cases = [
            ("2017-02-20T14:56:00+02:00", utc(2017, 2, 20, 12, 56, 0)),
            ("2017-02-20T14:56:00-05:30", utc(2017, 2, 20, 20, 26, 0)),
            ("2017-02-20T14:56:00Z", base),
            ("2017-02-20t14:56:00z", base),
            ("2017-02-20 14:56:00+02:00", utc(2017, 2, 20, 12, 56, 0)),
            ("2017-02-20T14:56+02:00", utc(2017, 2, 20, 12, 56, 0)),
            ("2017-02-20 14:56:00+0200", utc(2017, 2, 20, 12, 56, 0)),
            ("2017-02-20T14:56:07.123456+00:00", frac),
            ("2017-02-20T14:56:00", base),
            ("2017-02-20 14:56:00", base),
            ("2017-02-20 14:56", base),
            ("2017-02-20T14:56", base),
            ("2017-02-20 14:56:07.123456", frac),
            ("2017-02-20T14:56:07.123456", frac),
            ("2017-02-20", utc(2017, 2, 20, 0, 0, 0)),
            ("2017-02-20Z", utc(2017, 2, 20, 0, 0, 0)),
            ("2017-02-20 14:56Z", base),
            ("2017-02-20 14:56 UTC", base),
            ("2017-02-20 14:56:00 UTC", base),
            ("2017-02-20T14:56:00UTC", base),
            ("2017-02-20 14:56:07.123456 utc", frac),
            ("2017-02-20 UTC", utc(2017, 2, 20, 0, 0, 0)),
            ("  2017-02-20 14:56  ", base),
        ];
        for (input, want) in cases {
            assert_eq!(parse_when(input), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn refuses_bad_input_with_the_input_and_forms() {
        let cases = [
            "",
            "now",
            "tomorrow",
            "2017-02-30",
            "2017-13-01 00:00",
            "2017-02-20 25:00",
            "2017-02-20 14:61",
            "20-02-2017",
            "2017/02/20",
            "2017-02-20 14",
            "2017-02-20T14:56:00+25:00",
            "2017-02-20 14:56 CET",
            "2017-02-20 14:56 UTC UTC",
            "0000-01-01",
            "+12345-01-01T00:00:00Z",
            "1487602560",
        ];
        for input in cases {
            let err = parse_when(input).expect_err(input).0;
            assert!(err.starts_with(&quote(input)), "{input:?}: {err}");
            assert!(
                err.contains("RFC 3339") && err.contains("\"2017-02-20\""),
                "{err}"
            );
        }
        assert!(parse_when("0000-06-01 00:00")
            .unwrap_err()
            .0
            .contains("1 to 9999"));
    }

    #[test]
    fn timezones() {
        assert_eq!(parse_timezone("Europe/Berlin"), Ok(Tz::Europe__Berlin));
        assert_eq!(parse_timezone("UTC"), Ok(Tz::UTC));
        assert_eq!(
            parse_timezone(" america/new_york "),
            Ok(Tz::America__New_York)
        );
        assert_eq!(
            parse_timezone("Australia/Lord_Howe"),
            Ok(Tz::Australia__Lord_Howe)
        );
        assert_eq!(
            parse_timezone("Mars/Base").unwrap_err().0,
            "timezone: \"Mars/Base\" is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")"
        );
        assert!(parse_timezone("").is_err());
        assert!(parse_timezone("+02:00").is_err());
    }
}
