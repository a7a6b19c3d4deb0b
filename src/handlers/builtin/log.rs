//! The `log` handler: writes one message to jobsd's log.
//!
//! Guarantees: emits exactly one tracing event at the requested `level`
//! (default `info`) with the fields `run_id`, `job_id` and `attempt`, and
//! returns `{"message": ...}`. It never fails on valid kwargs, which makes it
//! a cheap heartbeat job.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use super::parse_kwargs;
use crate::handlers::{Handler, HandlerResult, RunContext};

const NAME: &str = "log";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogKwargs {
    message: String,
    #[serde(default)]
    level: Level,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

/// Logs a message per run.
pub struct LogHandler;

#[async_trait]
impl Handler for LogHandler {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "Writes a message to the service log; useful as a heartbeat"
    }

    fn kwargs_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "message": {
                    "type": "string",
                    "description": "The message to log.",
                },
                "level": {
                    "type": "string",
                    "enum": ["debug", "info", "warn", "error"],
                    "default": "info",
                    "description": "The log level.",
                },
            },
            "required": ["message"],
            "additionalProperties": false,
        })
    }

    fn example(&self) -> Value {
        json!({"message": "nightly heartbeat", "level": "info"})
    }

    async fn execute(&self, ctx: RunContext, kwargs: Value) -> HandlerResult {
        let LogKwargs { message, level } = parse_kwargs(NAME, kwargs)?;
        let (run_id, job_id, attempt) = (&ctx.run_id, &ctx.job_id, ctx.attempt);
        match level {
            Level::Debug => tracing::debug!(%run_id, %job_id, attempt, "{message}"),
            Level::Info => tracing::info!(%run_id, %job_id, attempt, "{message}"),
            Level::Warn => tracing::warn!(%run_id, %job_id, attempt, "{message}"),
            Level::Error => tracing::error!(%run_id, %job_id, attempt, "{message}"),
        }
        Ok(json!({"message": message}))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_rejected, ctx};
    use super::*;

    #[tokio::test]
    async fn logs_and_returns_the_message() {
        for level in ["debug", "info", "warn", "error"] {
            let kwargs = json!({"message": "hello", "level": level});
            let result = LogHandler.execute(ctx(), kwargs).await.unwrap();
            assert_eq!(result, json!({"message": "hello"}));
        }
        let result = LogHandler
            .execute(ctx(), json!({"message": "x"}))
            .await
            .unwrap();
        assert_eq!(result, json!({"message": "x"}));
    }

    #[tokio::test]
    async fn bad_kwargs_are_fatal() {
        for kwargs in [json!({}), json!({"message": "x", "level": "loud"})] {
            let error = LogHandler.execute(ctx(), kwargs).await.unwrap_err();
            assert!(!error.retryable);
        }
    }

    #[test]
    fn schema_rejects_bad_kwargs_naming_the_field() {
        assert_rejected(NAME, json!({}), "message");
        assert_rejected(NAME, json!({"message": 3}), "/message");
        assert_rejected(NAME, json!({"message": "x", "level": "trace"}), "/level");
        assert_rejected(NAME, json!({"message": "x", "colour": "red"}), "colour");
    }

    #[test]
    fn example_fits_the_kwargs_struct() {
        let kwargs: LogKwargs = serde_json::from_value(LogHandler.example()).unwrap();
        assert!(matches!(kwargs.level, Level::Info));
    }
}
