//! Properties of validation over arbitrary client input: whatever a client
//! sends as a job definition or as a handler's kwargs, validation answers a
//! job or a list of problems, never a panic, and a definition it accepts
//! holds no NUL and no kwargs past the limit.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::{JobSpec, ValidationContext};
use crate::handlers::{BuiltinConfig, HandlerRegistry};

/// Keys handlers and job definitions know, so that generated objects
/// often reach past "unknown field" into the checks of each field.
const KEYS: &[&str] = &[
    "url",
    "method",
    "headers",
    "body",
    "timeout",
    "expect_status",
    "program",
    "args",
    "env",
    "cwd",
    "message",
    "seconds",
    "job_id",
    "handler",
    "kwargs",
    "periodically",
    "cron",
    "timezone",
    "when",
    "misfire_grace_time",
    "coalesce",
    "max_instances",
    "lock_key",
    "max_retries",
    "retry_backoff",
    "state",
    "description",
    "tags",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        Just("http://127.0.0.1:1/".to_string()),
        Just("ftp://x".to_string()),
        Just("GET".to_string()),
        Just("log".to_string()),
        Just("http".to_string()),
        Just("command".to_string()),
        Just("sleep".to_string()),
        Just("ErrorHandler".to_string()),
        Just("*/5 * * * *".to_string()),
        Just("Europe/Berlin".to_string()),
        Just("2030-02-20 14:56".to_string()),
        Just("1 week".to_string()),
        Just("paused".to_string()),
        Just("a\u{0}b".to_string()),
        Just("x".repeat(300)),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|n| serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)),
        (100u64..600).prop_map(|n| json!(n)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn registry() -> HandlerRegistry {
    let mut registry = HandlerRegistry::with_builtins(BuiltinConfig {
        command_enabled: true,
        ..BuiltinConfig::default()
    });
    registry.set_max_kwargs_bytes(2048);
    registry
}

fn context(registry: &HandlerRegistry) -> ValidationContext<'_> {
    ValidationContext {
        registry,
        now: "2030-01-01T00:00:00Z".parse().expect("an instant"),
        source: "api".into(),
    }
}

/// What an accepted job must never hold.
fn check_accepted(job: &crate::store::NewJob, max_kwargs: usize) -> Result<(), TestCaseError> {
    let kwargs = job.kwargs.to_string();
    prop_assert!(!kwargs.contains("\\u0000"), "{kwargs}");
    prop_assert!(kwargs.len() <= max_kwargs, "{}", kwargs.len());
    prop_assert!(!job.description.as_deref().unwrap_or("").contains('\0'));
    prop_assert!(!job.job_id.contains('\0'));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    /// Any kwargs, for every built-in handler: checked against its schema
    /// (and its own checks) without a panic.
    #[test]
    fn kwargs_validation_never_panics(kwargs in json_value()) {
        let registry = registry();
        for handler in ["http", "command", "log", "sleep", "ErrorHandler", "nope"] {
            let _ = registry.validate_kwargs(handler, &kwargs);
            let spec = JobSpec {
                handler: Some(handler.to_string()),
                kwargs: Some(kwargs.clone()),
                ..JobSpec::default()
            };
            if let Ok(job) = spec.validate(&context(&registry)) {
                check_accepted(&job, registry.max_kwargs_bytes())?;
            }
        }
    }

    /// Any JSON object as a job definition (as `POST /api/v1/jobs` and a
    /// PATCH read it): refused while reading, or validated, never a panic.
    #[test]
    fn spec_validation_never_panics(
        fields in proptest::collection::vec((key(), json_value()), 0..10),
    ) {
        let registry = registry();
        let body = Value::Object(fields.into_iter().collect());
        if let Ok(spec) = serde_json::from_value::<JobSpec>(body.clone()) {
            if let Ok(job) = spec.validate(&context(&registry)) {
                check_accepted(&job, registry.max_kwargs_bytes())?;
            }
        }
        if let Value::Object(patch) = &body {
            let base = JobSpec {
                handler: Some("log".into()),
                kwargs: Some(json!({"message": "x"})),
                ..JobSpec::default()
            };
            if let Ok(merged) = base.merged_with(patch) {
                let _ = merged.validate(&context(&registry));
            }
        }
    }
}
