//! Schedules: parsing the job fields that say *when* a job runs, and computing
//! its fire times (SPEC §4 and §5).
//!
//! Rules that hold across this module:
//!
//! - **Time is a parameter.** Nothing here reads the clock; callers pass "now"
//!   (the database's time) in. Every function is deterministic.
//! - **All instants are UTC** (`DateTime<Utc>`). A zone matters only for `cron`
//!   (its pattern is read on the zone's wall clock) and for naive inputs to
//!   [`parse_when`], which are taken as UTC.
//! - **Errors are for people.** A [`ParseError`] names the input it refused and
//!   shows forms that would have been accepted. Input echoed back is escaped
//!   and cut to 80 characters. Messages of the parsers shared by several
//!   fields ([`parse_duration`], [`duration_from_json`], [`parse_when`]) do not
//!   name a field; callers may add it with [`ParseError::in_field`], giving
//!   e.g. `periodically: "5 parsecs" is not a duration; use e.g. …`. Messages
//!   tied to one field start with it: `timezone:` ([`parse_timezone`],
//!   [`CronExpr::parse`]), `cron:` ([`CronExpr::parse`]), `periodically:`
//!   ([`Schedule::interval`]).
//!
//! The pieces:
//!
//! - [`parse_duration`], [`duration_from_json`], [`format_duration`]
//!   (`periodically`, `misfire_grace_time`, `timeout`, …): see `duration.rs`.
//! - [`parse_when`], [`parse_timezone`]: see `when.rs`.
//! - [`CronExpr`]: 5- or 6-field cron (croner) with DST rules: see `cron.rs`.
//! - [`Schedule`]: once / interval / cron fire times, and [`TimesIn`], the
//!   fire times of a range (catch-up after downtime): see `recurrence.rs`.

mod cron;
mod duration;
mod recurrence;
mod when;

#[cfg(test)]
mod proptests;

pub use cron::CronExpr;
pub use duration::{duration_from_json, format_duration, parse_duration, MAX_DURATION_DAYS};
pub use recurrence::{Schedule, TimesIn};
pub use when::{parse_timezone, parse_when};

/// A message a person can act on, e.g. "periodically: \"5 parsecs\" is not a duration; use e.g. \"1 week\", \"5:00:00\", \"32m\", \"PT5M\" or a number of seconds"
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    /// Prefixes the message with the job field it is about:
    /// `ParseError("\"x\" is not …").in_field("periodically")` reads
    /// `periodically: "x" is not …`.
    pub fn in_field(self, field: &str) -> ParseError {
        ParseError(format!("{field}: {}", self.0))
    }
}

/// The longest piece of a refused input echoed back in an error message.
const MAX_ECHO_CHARS: usize = 80;

/// Quotes user input for an error message: escaped like a string literal and
/// cut to [`MAX_ECHO_CHARS`] so hostile input cannot flood a response or a log.
pub(crate) fn quote(input: &str) -> String {
    if input.chars().count() <= MAX_ECHO_CHARS {
        format!("{input:?}")
    } else {
        let cut: String = input.chars().take(MAX_ECHO_CHARS).collect();
        format!("{cut:?}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_field_prefixes_the_field_name() {
        let err = parse_duration("5 parsecs")
            .unwrap_err()
            .in_field("periodically");
        assert_eq!(
            err.to_string(),
            "periodically: \"5 parsecs\" is not a duration; use e.g. \"1 week\", \
             \"5:00:00\", \"32m\", \"PT5M\" or a number of seconds"
        );
    }

    #[test]
    fn quote_escapes_and_truncates() {
        assert_eq!(quote("a\"b\n"), "\"a\\\"b\\n\"");
        let long = "x".repeat(500);
        let q = quote(&long);
        assert!(q.len() < 100, "{q}");
        assert!(q.ends_with('…'));
    }
}
