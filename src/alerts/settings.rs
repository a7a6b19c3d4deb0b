//! A job's alert settings: as clients and YAML files write them
//! ([`AlertsSpec`], the job's `alerts` field), as the store keeps them
//! ([`JobAlerts`]: only what the job sets), and resolved against the
//! service's defaults ([`AlertDefaults`], from the `--alert-*` flags) into
//! the [`AlertSettings`] the rules apply.

use chrono::Duration;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::rules::AlertSettings;
use crate::job_spec::FieldError;
use crate::schedule::{duration_from_json, format_duration};

/// Most consecutive failures an alert may wait for.
const MAX_FAILURES: u32 = 10_000;

/// A job's `alerts` field. Each setting left out takes the service's
/// default; `0` turns it off for this job.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertsSpec {
    /// Raise `alert.failing` after this many failed runs in a row (final
    /// failures, after their retries); `0`: never.
    #[schema(value_type = Option<u32>, example = 3)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures_before_alert: Option<Value>,
    /// Raise `alert.dead_man` when no run has succeeded for this long
    /// (e.g. `26h` for a daily job); `0`: never.
    #[schema(value_type = Option<String>, example = "26h")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_success_within: Option<Value>,
    /// Raise `alert.overrun` when a run runs longer than this; `0`: never.
    #[schema(value_type = Option<String>, example = "10m")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<Value>,
    /// At most one alert of a kind for this job in this long; `0`: no limit.
    #[schema(value_type = Option<String>, example = "1h")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_interval: Option<Value>,
}

/// What a job sets of its alerts, as stored (JSON; durations in
/// milliseconds, `0` for off). `None`: the service's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct JobAlerts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures_before_alert: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_success_within_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_interval_ms: Option<i64>,
}

/// The service's alert settings, for jobs that do not set their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertDefaults {
    pub failures_before_alert: u32,
    pub expect_success_within: Option<Duration>,
    pub max_duration: Option<Duration>,
    pub alert_interval: Duration,
}

impl Default for AlertDefaults {
    fn default() -> Self {
        AlertDefaults {
            failures_before_alert: 3,
            expect_success_within: None,
            max_duration: None,
            alert_interval: Duration::hours(1),
        }
    }
}

impl AlertDefaults {
    /// Whether every job watched by the clock may need checking, whatever
    /// it sets: a service-wide dead man's window or `max_duration`.
    pub fn watch_every_job(&self) -> bool {
        self.expect_success_within.is_some() || self.max_duration.is_some()
    }
}

/// A duration setting: positive, `None` when `0` (off).
fn on(ms: i64) -> Option<Duration> {
    (ms > 0).then(|| Duration::milliseconds(ms))
}

impl JobAlerts {
    /// Nothing set: every setting is the service's.
    pub fn is_empty(&self) -> bool {
        *self == JobAlerts::default()
    }

    /// The settings in force for a job setting `self`.
    pub fn resolve(&self, defaults: &AlertDefaults) -> AlertSettings {
        AlertSettings {
            failures_before_alert: self
                .failures_before_alert
                .unwrap_or(defaults.failures_before_alert),
            expect_success_within: match self.expect_success_within_ms {
                Some(ms) => on(ms),
                None => defaults.expect_success_within,
            },
            max_duration: match self.max_duration_ms {
                Some(ms) => on(ms),
                None => defaults.max_duration,
            },
            alert_interval: match self.alert_interval_ms {
                Some(ms) => Duration::milliseconds(ms.max(0)),
                None => defaults.alert_interval,
            },
        }
    }

    /// The spec that reproduces these settings (a job's view, a PATCH's base).
    pub fn to_spec(&self) -> AlertsSpec {
        let duration = |ms: Option<i64>| {
            ms.map(|ms| match ms {
                0 => Value::from(0),
                ms => Value::String(format_duration(Duration::milliseconds(ms))),
            })
        };
        AlertsSpec {
            failures_before_alert: self.failures_before_alert.map(Value::from),
            expect_success_within: duration(self.expect_success_within_ms),
            max_duration: duration(self.max_duration_ms),
            alert_interval: duration(self.alert_interval_ms),
        }
    }
}

impl AlertsSpec {
    /// Checks each setting; every problem is named `alerts/<setting>`.
    pub fn validate(&self) -> Result<JobAlerts, Vec<FieldError>> {
        let mut problems = Vec::new();
        let failures_before_alert = match &self.failures_before_alert {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n <= u64::from(MAX_FAILURES) => Some(n as u32),
                _ => {
                    problems.push(FieldError::new(
                        "alerts/failures_before_alert",
                        format!(
                            "must be a whole number from 0 (never) to {MAX_FAILURES}; got {}",
                            shown(v)
                        ),
                    ));
                    None
                }
            },
        };
        let mut duration = |field: &str, value: &Option<Value>| -> Option<i64> {
            let v = match value {
                None | Some(Value::Null) => return None,
                Some(v) => v,
            };
            match duration_from_json(v) {
                Ok(d) if d >= Duration::zero() => Some(d.num_milliseconds()),
                Ok(_) => {
                    problems.push(FieldError::new(
                        format!("alerts/{field}"),
                        "must not be negative (0 turns it off)",
                    ));
                    None
                }
                Err(e) => {
                    problems.push(FieldError::new(format!("alerts/{field}"), e.to_string()));
                    None
                }
            }
        };
        let alerts = JobAlerts {
            failures_before_alert,
            expect_success_within_ms: duration(
                "expect_success_within",
                &self.expect_success_within,
            ),
            max_duration_ms: duration("max_duration", &self.max_duration),
            alert_interval_ms: duration("alert_interval", &self.alert_interval),
        };
        if problems.is_empty() {
            Ok(alerts)
        } else {
            Err(problems)
        }
    }
}

/// A refused value, cut short.
fn shown(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> AlertsSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn settings_left_out_take_the_defaults_and_zero_turns_one_off() {
        let defaults = AlertDefaults {
            expect_success_within: Some(Duration::hours(26)),
            max_duration: Some(Duration::minutes(5)),
            ..AlertDefaults::default()
        };
        let none = JobAlerts::default().resolve(&defaults);
        assert_eq!(none.failures_before_alert, 3);
        assert_eq!(none.expect_success_within, Some(Duration::hours(26)));
        assert_eq!(none.alert_interval, Duration::hours(1));
        let own = spec(json!({
            "failures_before_alert": 0,
            "expect_success_within": 0,
            "max_duration": "10m",
            "alert_interval": "30s"
        }))
        .validate()
        .unwrap()
        .resolve(&defaults);
        assert_eq!(own.failures_before_alert, 0);
        assert_eq!(own.expect_success_within, None);
        assert_eq!(own.max_duration, Some(Duration::minutes(10)));
        assert_eq!(own.alert_interval, Duration::seconds(30));
    }

    #[test]
    fn a_spec_round_trips_through_what_is_stored() {
        let alerts = spec(
            json!({"failures_before_alert": 2, "expect_success_within": "26h", "max_duration": 0}),
        )
        .validate()
        .unwrap();
        assert_eq!(alerts.expect_success_within_ms, Some(26 * 3_600_000));
        let stored = serde_json::to_value(alerts).unwrap();
        assert_eq!(
            stored,
            json!({"failures_before_alert": 2, "expect_success_within_ms": 93_600_000, "max_duration_ms": 0})
        );
        let back: JobAlerts = serde_json::from_value(stored).unwrap();
        assert_eq!(back.to_spec().validate().unwrap(), alerts);
        assert!(JobAlerts::default().is_empty());
    }

    #[test]
    fn bad_settings_are_named() {
        let problems = spec(json!({
            "failures_before_alert": -1,
            "expect_success_within": "soon",
            "max_duration": "-5m",
        }))
        .validate()
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "alerts/failures_before_alert",
                "alerts/expect_success_within",
                "alerts/max_duration"
            ]
        );
        assert!(serde_json::from_value::<AlertsSpec>(json!({"failures": 3})).is_err());
    }
}
