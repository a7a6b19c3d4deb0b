//! Job definitions as clients and YAML files write them, and their
//! validation into a [`NewJob`] the store can keep.
//!
//! Both the API and the default-jobs loader go through [`JobSpec::validate`],
//! so a job means the same thing whichever way it arrived. Validation reports
//! every problem at once, each naming its field.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::alerts::settings::{AlertsSpec, JobAlerts};
use crate::domain::{JobState, ScheduleKind};
use crate::guard::text::find_nul;
use crate::handlers::{HandlerRegistry, ERROR_HANDLER};
use crate::redact;
use crate::schedule::{self, format_duration, CronExpr, Schedule};
use crate::store::{JobRow, NewJob};

/// One problem with a job definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field, e.g. `periodically` or `kwargs/url`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    /// A problem of `field`; a message that already starts with the field's
    /// name (as schedule errors do) is not prefixed twice.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        let message = match message.strip_prefix(&format!("{field}: ")) {
            Some(rest) => rest.to_string(),
            None => message,
        };
        FieldError { field, message }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A job definition as written by a client or a YAML file. Everything but
/// `handler` is optional; see the README for defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Unique id; a UUID is generated when omitted.
    #[schema(example = "nightly-report")]
    pub job_id: Option<String>,
    /// A registered handler name (`GET /api/v1/handlers`).
    #[schema(example = "log")]
    pub handler: Option<String>,
    /// Arguments for the handler, checked against its schema.
    #[schema(value_type = Option<Object>, example = json!({"message": "hello"}))]
    pub kwargs: Option<Value>,
    /// Interval: `"1 week"`, `"5:00:00"`, `"32m"`, `"1 day, 0:00:00"`, `"PT5M"` or seconds.
    #[schema(value_type = Option<String>, example = "1 week")]
    pub periodically: Option<Value>,
    /// Cron expression (5 fields, or 6 with seconds, or `@hourly`-style aliases).
    #[schema(example = "0 3 * * *")]
    pub cron: Option<String>,
    /// IANA time zone for `cron` (default UTC).
    #[schema(example = "Europe/Berlin")]
    pub timezone: Option<String>,
    /// First run time: RFC 3339, or a naive date-time taken as UTC. Default: now.
    #[schema(example = "2030-02-20 14:56")]
    pub when: Option<String>,
    /// How late a run may still start; null or omitted: no limit.
    #[schema(value_type = Option<String>, example = "10m")]
    pub misfire_grace_time: Option<Value>,
    /// After downtime, run missed times once (true, default) or each.
    pub coalesce: Option<bool>,
    /// Concurrent runs allowed (default 1).
    pub max_instances: Option<i32>,
    /// Jobs sharing a lock key never run at the same time.
    pub lock_key: Option<String>,
    /// Run time limit (a duration); none by default.
    #[schema(value_type = Option<String>, example = "30s")]
    pub timeout: Option<Value>,
    /// Retries after a failed attempt (default 0).
    pub max_retries: Option<i32>,
    /// Base delay of the exponential retry backoff (default 1s).
    #[schema(value_type = Option<String>, example = "5s")]
    pub retry_backoff: Option<Value>,
    /// `running` (alias `active`) or `paused`. Default `running`.
    #[schema(example = "running")]
    pub state: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    /// Keep this job's newest N finished runs whatever their age, instead of
    /// the service's `--retention` (a whole number, at least 1). Default:
    /// none (the retention applies).
    #[schema(value_type = Option<i32>, minimum = 1, example = 10)]
    pub keep_runs: Option<Value>,
    /// Webhooks, by name, that get every event of this job whatever their
    /// own filters say (a name no webhook has yet is kept, for one made
    /// later).
    #[schema(example = json!(["ops"]))]
    pub notify: Option<Vec<String>>,
    /// This job's alerts (README "Alerts"); each setting left out takes
    /// the service's `--alert-*` default, `0` turns it off.
    pub alerts: Option<AlertsSpec>,
}

/// Limits that keep one definition from hurting the service.
const MAX_ID_LEN: usize = 200;
const MAX_INSTANCES: i32 = 1000;
const MAX_RETRIES: i32 = 100;
const MAX_TAGS: usize = 50;
const MAX_TEXT_LEN: usize = 10_000;
const MAX_KEEP_RUNS: i64 = 1_000_000;
/// Ids the API uses as path words.
pub const RESERVED_IDS: &[&str] = &["clean-failed", "bulk"];

/// What validation needs besides the spec.
pub struct ValidationContext<'a> {
    pub registry: &'a HandlerRegistry,
    /// Database time: defaults (`when`) and the first fire time count from it.
    pub now: DateTime<Utc>,
    /// `api` or the YAML file's path.
    pub source: String,
}

/// Whether a duration field may be zero.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    /// `misfire_grace_time`, `retry_backoff`: zero is a meaningful value.
    Allowed,
    /// `periodically`, `timeout`: the value must be at least 1 ms.
    Refused,
}

/// Reads a duration field. Durations are stored in whole milliseconds, so
/// the value is truncated to the millisecond here, and the job is built
/// (its first run time included) from what will be stored. A field that
/// must be positive refuses anything under 1 ms with a message, rather
/// than storing 0 (its database CHECK would answer 500); one that allows
/// zero takes a sub-millisecond value as 0.
fn duration_field(
    problems: &mut Vec<FieldError>,
    field: &str,
    value: &Option<Value>,
    zero: Zero,
) -> Option<Duration> {
    let d = match value {
        None | Some(Value::Null) => return None,
        Some(v) => match schedule::duration_from_json(v) {
            Ok(d) => d,
            Err(e) => {
                problems.push(FieldError::new(field, e.to_string()));
                return None;
            }
        },
    };
    let kept = Duration::milliseconds(d.num_milliseconds());
    if zero == Zero::Refused && kept < Duration::milliseconds(1) {
        let message = if d == Duration::zero() {
            "must be longer than zero".to_string()
        } else {
            format!(
                "must be at least 1 millisecond (durations are kept in whole                  milliseconds); got {}",
                format_duration(d)
            )
        };
        problems.push(FieldError::new(field, message));
        return None;
    }
    Some(kept)
}

/// `keep_runs`: absent or null for none, else a whole number from 1.
fn keep_runs_field(value: &Option<Value>) -> Result<Option<i32>, String> {
    let refused = || {
        format!("must be a whole number from 1 to {MAX_KEEP_RUNS} (the finished runs to keep), or null for none")
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(n) if (1..=MAX_KEEP_RUNS).contains(&n) => {
                Ok(Some(i32::try_from(n).map_err(|_| refused())?))
            }
            _ => Err(refused()),
        },
        Some(other) => Err(format!("{}; got {other}", refused())),
    }
}

fn millis(d: Option<Duration>) -> Option<i64> {
    d.map(|d| d.num_milliseconds())
}

impl JobSpec {
    /// Checks every field and builds the job to store, or lists every problem.
    pub fn validate(&self, ctx: &ValidationContext<'_>) -> Result<NewJob, Vec<FieldError>> {
        let mut problems = Vec::new();

        let job_id = match &self.job_id {
            None => Uuid::now_v7().to_string(),
            Some(id) => {
                if let Err(message) = check_job_id(id) {
                    problems.push(FieldError::new("job_id", message));
                }
                id.clone()
            }
        };

        let handler = self.handler.clone().unwrap_or_default();
        let kwargs = self.kwargs.clone().unwrap_or_else(|| json!({}));
        problems.extend(self.nul_problems());
        let max_kwargs = ctx.registry.max_kwargs_bytes();
        let kwargs_bytes = json_len(&kwargs);
        if kwargs_bytes > max_kwargs {
            problems.push(FieldError::new(
                "kwargs",
                format!(
                    "{kwargs_bytes} bytes as JSON, more than the limit of {max_kwargs} \
                     (--max-kwargs-bytes)"
                ),
            ));
        }
        if handler.is_empty() {
            problems.push(FieldError::new(
                "handler",
                "required: name a registered handler (GET /api/v1/handlers)",
            ));
        } else if handler == ERROR_HANDLER {
            problems.push(FieldError::new(
                "handler",
                "ErrorHandler jobs are failure records that jobsd writes itself; they cannot be created",
            ));
        } else if let Some(h) = ctx.registry.get(&handler) {
            if let Some(reason) = h.disabled_reason() {
                problems.push(FieldError::new("handler", reason));
            } else if !kwargs.is_object() {
                problems.push(FieldError::new("kwargs", "must be a JSON object"));
            } else if kwargs_bytes > max_kwargs {
                // Too large to be worth checking against the schema.
            } else {
                // A `"***"` left in a secret field stands for nothing (a PATCH
                // replaced those it could, `redact::keep_stored`).
                let secrets = ctx.registry.secret_fields(&handler);
                if let Err(masks) = redact::keep_stored(&kwargs, None, secrets) {
                    problems.extend(masks.into_iter().map(|(f, m)| FieldError::new(f, m)));
                }
                if let Err(errors) = ctx.registry.validate_kwargs(&handler, &kwargs) {
                    problems.extend(errors.into_iter().map(|e| match e.split_once(": ") {
                        Some((field, message)) => FieldError::new(field, message),
                        None => FieldError::new("kwargs", e),
                    }));
                }
            }
        } else {
            let known: Vec<&str> = ctx.registry.iter().map(|h| h.name()).collect();
            problems.push(FieldError::new(
                "handler",
                format!(
                    "unknown handler {handler:?}; registered: {}",
                    known.join(", ")
                ),
            ));
        }

        let interval = duration_field(
            &mut problems,
            "periodically",
            &self.periodically,
            Zero::Refused,
        );
        let timezone = self.timezone.clone().unwrap_or_else(|| "UTC".to_string());
        let cron = match &self.cron {
            None => {
                if self.timezone.is_some() {
                    if let Err(e) = schedule::parse_timezone(&timezone) {
                        problems.push(FieldError::new("timezone", e.to_string()));
                    }
                }
                None
            }
            Some(expr) => match CronExpr::parse(expr, &timezone) {
                Ok(c) => Some(c),
                Err(e) => {
                    let field = if e.0.starts_with("timezone") {
                        "timezone"
                    } else {
                        "cron"
                    };
                    problems.push(FieldError::new(field, e.to_string()));
                    None
                }
            },
        };
        if self.periodically.is_some() && self.cron.is_some() {
            problems.push(FieldError::new(
                "cron",
                "give either periodically or cron, not both",
            ));
        }
        let when = match &self.when {
            None => None,
            // PostgreSQL keeps microseconds; drop finer digits so the
            // stored time reads back exactly.
            Some(w) => match schedule::parse_when(w) {
                Ok(t) => Some(t.trunc_subsecs(6)),
                Err(e) => {
                    problems.push(FieldError::new("when", e.to_string()));
                    None
                }
            },
        };

        let misfire_grace = duration_field(
            &mut problems,
            "misfire_grace_time",
            &self.misfire_grace_time,
            Zero::Allowed,
        );
        let timeout = duration_field(&mut problems, "timeout", &self.timeout, Zero::Refused);
        let retry_backoff = duration_field(
            &mut problems,
            "retry_backoff",
            &self.retry_backoff,
            Zero::Allowed,
        )
        .unwrap_or_else(|| Duration::seconds(1));
        let max_instances = self.max_instances.unwrap_or(1);
        if !(1..=MAX_INSTANCES).contains(&max_instances) {
            problems.push(FieldError::new(
                "max_instances",
                format!("must be between 1 and {MAX_INSTANCES}"),
            ));
        }
        let max_retries = self.max_retries.unwrap_or(0);
        if !(0..=MAX_RETRIES).contains(&max_retries) {
            problems.push(FieldError::new(
                "max_retries",
                format!("must be between 0 and {MAX_RETRIES}"),
            ));
        }
        if let Some(key) = &self.lock_key {
            if key.is_empty() || key.len() > MAX_ID_LEN {
                problems.push(FieldError::new(
                    "lock_key",
                    format!("must be 1 to {MAX_ID_LEN} characters"),
                ));
            }
        }
        let keep_runs = match keep_runs_field(&self.keep_runs) {
            Ok(n) => n,
            Err(message) => {
                problems.push(FieldError::new("keep_runs", message));
                None
            }
        };
        let state = match self.state.as_deref() {
            None => JobState::Running,
            Some(name) => match JobState::requested(name) {
                Some(state) => state,
                None => {
                    let other = name.to_ascii_lowercase();
                    problems.push(FieldError::new(
                        "state",
                        format!("unknown state {other:?}; use running (alias active) or paused"),
                    ));
                    JobState::Running
                }
            },
        };
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_TEXT_LEN)
        {
            problems.push(FieldError::new(
                "description",
                format!("longer than {MAX_TEXT_LEN} bytes"),
            ));
        }
        let tags = self.tags.clone().unwrap_or_default();
        if tags.len() > MAX_TAGS || tags.iter().any(|t| t.is_empty() || t.len() > MAX_ID_LEN) {
            problems.push(FieldError::new(
                "tags",
                format!("at most {MAX_TAGS} tags of 1 to {MAX_ID_LEN} characters"),
            ));
        }
        let notify = self.notify.clone().unwrap_or_default();
        if notify.len() > MAX_TAGS
            || notify.iter().any(|n| {
                n.is_empty()
                    || n.len() > crate::webhooks::definition::MAX_NAME
                    || !n
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            })
        {
            problems.push(FieldError::new(
                "notify",
                format!("at most {MAX_TAGS} webhook names (letters, digits, '-', '_', '.')"),
            ));
        }

        let alerts = match self.alerts.as_ref().map(AlertsSpec::validate) {
            None => JobAlerts::default(),
            Some(Ok(alerts)) => alerts,
            Some(Err(mut more)) => {
                problems.append(&mut more);
                JobAlerts::default()
            }
        };

        if !problems.is_empty() {
            // Schema errors quote the values they refuse, secrets included.
            let secrets = ctx.registry.secrets_of(&handler, &kwargs);
            for problem in &mut problems {
                problem.message = redact::scrub_text(&problem.message, &secrets);
            }
            return Err(problems);
        }

        let (schedule_kind, start_at, schedule) = match (interval, cron) {
            (Some(every), _) => {
                // Like APScheduler: without `when`, the first run is one interval from now.
                let anchor = when.unwrap_or(ctx.now + every);
                (
                    ScheduleKind::Interval,
                    anchor,
                    Schedule::Interval { anchor, every },
                )
            }
            (None, Some(expr)) => {
                let not_before = when.unwrap_or(ctx.now);
                (
                    ScheduleKind::Cron,
                    not_before,
                    Schedule::Cron { expr, not_before },
                )
            }
            (None, None) => {
                let at = when.unwrap_or(ctx.now);
                (ScheduleKind::Once, at, Schedule::Once { at })
            }
        };
        let next_run_at = if state == JobState::Running {
            schedule.first_at_or_after(ctx.now)
        } else {
            None
        };

        Ok(NewJob {
            job_id,
            handler,
            kwargs,
            schedule_kind,
            interval_ms: millis(interval),
            cron: self.cron.clone(),
            timezone,
            start_at,
            misfire_grace_ms: millis(misfire_grace),
            coalesce: self.coalesce.unwrap_or(true),
            max_instances,
            lock_key: self.lock_key.clone(),
            timeout_ms: millis(timeout),
            max_retries,
            retry_backoff_ms: retry_backoff.num_milliseconds(),
            state,
            next_run_at,
            description: self.description.clone(),
            tags,
            source: ctx.source.clone(),
            failed_run_id: None,
            keep_runs,
            notify,
            alerts,
        })
    }

    /// One problem per text field holding a NUL character: PostgreSQL
    /// cannot store one, and both stores refuse it alike. (`job_id` is
    /// checked for control characters with its other rules.)
    fn nul_problems(&self) -> Vec<FieldError> {
        let text = |value: &Option<String>| value.clone().map(Value::String);
        let tags = self
            .tags
            .as_ref()
            .map(|t| Value::Array(t.iter().cloned().map(Value::String).collect()));
        let fields = [
            ("handler", text(&self.handler)),
            ("kwargs", self.kwargs.clone()),
            ("periodically", self.periodically.clone()),
            ("cron", text(&self.cron)),
            ("timezone", text(&self.timezone)),
            ("when", text(&self.when)),
            ("misfire_grace_time", self.misfire_grace_time.clone()),
            ("lock_key", text(&self.lock_key)),
            ("timeout", self.timeout.clone()),
            ("retry_backoff", self.retry_backoff.clone()),
            ("state", text(&self.state)),
            ("description", text(&self.description)),
            ("tags", tags),
        ];
        fields
            .iter()
            .filter_map(|(field, value)| value.as_ref().and_then(|v| find_nul(v, field)))
            .map(|(field, message)| FieldError::new(field, message))
            .collect()
    }

    /// The spec that reproduces a stored job (the base of a PATCH).
    pub fn from_row(row: &JobRow) -> JobSpec {
        let duration = |ms: Option<i64>| {
            ms.map(|ms| Value::String(format_duration(Duration::milliseconds(ms))))
        };
        JobSpec {
            job_id: Some(row.job_id.clone()),
            handler: Some(row.handler.clone()),
            kwargs: Some(row.kwargs.clone()),
            periodically: duration(row.interval_ms),
            cron: row.cron.clone(),
            timezone: row.cron.as_ref().map(|_| row.timezone.clone()),
            when: Some(row.start_at.to_rfc3339()),
            misfire_grace_time: duration(row.misfire_grace_ms),
            coalesce: Some(row.coalesce),
            max_instances: Some(row.max_instances),
            lock_key: row.lock_key.clone(),
            timeout: duration(row.timeout_ms),
            max_retries: Some(row.max_retries),
            retry_backoff: duration(Some(row.retry_backoff_ms)),
            state: Some(
                if row.state == JobState::Paused {
                    JobState::Paused
                } else {
                    JobState::Running
                }
                .to_string(),
            ),
            description: row.description.clone(),
            tags: Some(row.tags.clone()),
            keep_runs: row.keep_runs.map(Value::from),
            notify: Some(row.notify.clone()),
            alerts: (!row.alerts.is_empty()).then(|| row.alerts.to_spec()),
        }
    }

    /// Overlays the keys present in a JSON object (a PATCH body) on this
    /// spec; a `null` clears the field back to its default.
    pub fn merged_with(&self, patch: &Map<String, Value>) -> Result<JobSpec, FieldError> {
        let mut base = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        for (key, value) in patch {
            base.insert(key.clone(), value.clone());
        }
        serde_json::from_value(Value::Object(base))
            .map_err(|e| FieldError::new("body", e.to_string()))
    }
}

/// Whether two definitions fire at the same times (so a stored
/// `next_run_at` stays valid when one replaces the other).
pub fn same_schedule(old: &JobRow, new: &NewJob) -> bool {
    old.schedule_kind == new.schedule_kind
        && old.interval_ms == new.interval_ms
        && old.cron == new.cron
        && old.timezone == new.timezone
        && old.start_at == new.start_at
}

/// Carries the timing of a stored job over to its replacement: an unchanged
/// schedule keeps its `next_run_at` (so an edit or a restart neither resets
/// nor skips a run), and a completed one-shot job stays completed unless the
/// replacement changes its schedule.
pub fn carry_over_timing(old: &JobRow, new: &mut NewJob) {
    if !same_schedule(old, new) {
        return;
    }
    if old.state == JobState::Completed {
        new.state = JobState::Completed;
        new.next_run_at = None;
    } else if old.state == new.state && new.state == JobState::Running {
        new.next_run_at = old.next_run_at;
    }
}

/// A one-shot job fires once: after it has fired, no change of its state
/// (a resume, or a PATCH) gives it a fire time again, unless its schedule
/// itself changes. Its run ending then completes it.
pub fn keep_fired_one_shot_done(old: &JobRow, new: &mut NewJob) {
    if old.has_fired && new.schedule_kind == ScheduleKind::Once && same_schedule(old, new) {
        new.next_run_at = None;
    }
}

/// Where a job set running from `row` (as read) fires next: its stored time
/// if it was running already; from `now` if it was paused (times missed
/// while paused are not back-filled); never again for a one-shot job that
/// has fired.
pub fn next_run_on_resume(row: &JobRow, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if row.state == JobState::Running {
        return row.next_run_at;
    }
    if row.schedule_kind == ScheduleKind::Once && row.has_fired {
        return None;
    }
    schedule_of(
        row.schedule_kind,
        row.interval_ms,
        row.cron.as_deref(),
        &row.timezone,
        row.start_at,
    )
    .and_then(|s| s.first_at_or_after(now))
    .map(|t| t.max(now))
}

/// The length of `value` as compact JSON, without building the text.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn check_job_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("must be 1 to {MAX_ID_LEN} characters"));
    }
    if id
        .chars()
        .any(|c| c.is_control() || c == '/' || c == '?' || c == '#')
    {
        return Err("must not contain '/', '?', '#' or control characters".into());
    }
    if RESERVED_IDS.contains(&id) {
        return Err(format!("{id:?} is reserved by the API"));
    }
    Ok(())
}

/// The schedule a stored job follows (`None` for failure records).
pub fn schedule_of(
    row_kind: ScheduleKind,
    interval_ms: Option<i64>,
    cron: Option<&str>,
    timezone: &str,
    start_at: DateTime<Utc>,
) -> Option<Schedule> {
    match row_kind {
        ScheduleKind::Once => Some(Schedule::Once { at: start_at }),
        ScheduleKind::Interval => interval_ms
            .filter(|ms| *ms > 0)
            .map(|ms| Schedule::Interval {
                anchor: start_at,
                every: Duration::milliseconds(ms),
            }),
        ScheduleKind::Cron => cron
            .and_then(|c| CronExpr::parse(c, timezone).ok())
            .map(|expr| Schedule::Cron {
                expr,
                not_before: start_at,
            }),
        ScheduleKind::Never => None,
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::BuiltinConfig;

    fn validate(extra: Value) -> Result<NewJob, Vec<FieldError>> {
        let registry = HandlerRegistry::with_builtins(BuiltinConfig::default());
        let mut spec = json!({"handler": "log", "kwargs": {"message": "x"}});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let spec: JobSpec = serde_json::from_value(spec).expect("a well-formed spec");
        spec.validate(&ValidationContext {
            registry: &registry,
            now: "2030-01-01T00:00:00Z".parse().expect("an instant"),
            source: "api".into(),
        })
    }

    #[test]
    fn a_mask_in_a_secret_field_of_a_new_job_is_refused_naming_it() {
        let problems = validate(json!({
            "handler": "http",
            "kwargs": {"url": "http://x/", "secret_headers": {"X-Token": "***"}, "headers": {"Accept": "***"}},
        }))
        .expect_err("a mask stands for nothing here");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "kwargs/secret_headers/X-Token");
    }

    #[test]
    fn validation_errors_never_quote_a_secret() {
        let problems = validate(json!({
            "handler": "http",
            "kwargs": {"url": "http://x/", "headers": {"Authorization": 987654321}},
        }))
        .expect_err("a header value must be a string");
        let text = format!("{problems:?}");
        assert!(!text.contains("987654321"), "{text}");
        assert!(text.contains("***"), "{text}");
    }

    #[test]
    fn sub_millisecond_periodically_and_timeout_are_refused_naming_the_field() {
        for (field, value) in [
            ("periodically", json!("0.0004")),
            ("periodically", json!(0.0004)),
            ("periodically", json!("PT0.0009S")),
            ("periodically", json!("0.000000001")),
            ("timeout", json!("0.0001")),
            ("timeout", json!(0.0009)),
        ] {
            let problems = validate(json!({ field: value })).expect_err(field);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].field, field);
            assert!(
                problems[0].message.contains("at least 1 millisecond"),
                "{field} {value}: {}",
                problems[0].message
            );
        }
    }

    #[test]
    fn a_nul_character_in_any_text_field_is_refused_naming_it() {
        for (extra, field) in [
            (json!({"kwargs": {"message": "a\u{0}b"}}), "kwargs/message"),
            (json!({"kwargs": {"message": "x", "k\u{0}": 1}}), "kwargs"),
            (json!({"description": "\u{0}"}), "description"),
            (json!({"lock_key": "a\u{0}"}), "lock_key"),
            (json!({"tags": ["ok", "b\u{0}"]}), "tags/1"),
            (json!({"cron": "0 3 * * *\u{0}"}), "cron"),
            (json!({"timezone": "UTC\u{0}"}), "timezone"),
            (json!({"when": "2030-01-01\u{0}"}), "when"),
            (json!({"periodically": "5m\u{0}"}), "periodically"),
            (json!({"state": "paused\u{0}"}), "state"),
            (json!({"handler": "log\u{0}"}), "handler"),
            (json!({"job_id": "a\u{0}"}), "job_id"),
        ] {
            let problems = validate(extra.clone()).expect_err(field);
            assert!(
                problems.iter().any(|p| p.field == field
                    && (p.message.contains("NUL") || p.message.contains("control"))),
                "{extra}: {problems:?}"
            );
        }
    }

    #[test]
    fn kwargs_larger_than_the_limit_are_refused_naming_it() {
        let mut registry = HandlerRegistry::with_builtins(BuiltinConfig::default());
        registry.set_max_kwargs_bytes(100);
        let ctx = ValidationContext {
            registry: &registry,
            now: "2030-01-01T00:00:00Z".parse().expect("an instant"),
            source: "api".into(),
        };
        let spec = |message: String| JobSpec {
            handler: Some("log".into()),
            kwargs: Some(json!({ "message": message })),
            ..JobSpec::default()
        };
        // {"message":"..."} is 14 bytes around the text.
        assert!(spec("x".repeat(86)).validate(&ctx).is_ok());
        let problems = spec("x".repeat(87)).validate(&ctx).expect_err("too large");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "kwargs");
        assert_eq!(
            problems[0].message,
            "101 bytes as JSON, more than the limit of 100 (--max-kwargs-bytes)"
        );
    }

    #[test]
    fn one_millisecond_is_the_shortest_interval_and_timeout() {
        let job = validate(json!({"periodically": "1ms", "timeout": 0.001})).expect("valid");
        assert_eq!(job.interval_ms, Some(1));
        assert_eq!(job.timeout_ms, Some(1));
    }

    #[test]
    fn durations_are_kept_to_the_millisecond() {
        // Finer parts are dropped, and the first run time follows the
        // interval as stored, not the finer one given.
        let job = validate(json!({
            "periodically": "1.0009",
            "timeout": "2.5009s",
            "misfire_grace_time": "0.0004",
            "retry_backoff": 0.0009,
        }))
        .expect("valid");
        assert_eq!(job.interval_ms, Some(1000));
        assert_eq!(job.timeout_ms, Some(2500));
        assert_eq!(job.misfire_grace_ms, Some(0));
        assert_eq!(job.retry_backoff_ms, 0);
        let now: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().expect("an instant");
        assert_eq!(job.start_at, now + Duration::seconds(1));
        assert_eq!(job.next_run_at, Some(now + Duration::seconds(1)));
    }
}
