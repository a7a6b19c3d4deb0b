//! The inert `ErrorHandler`: the handler of failure records.
//!
//! Guarantees: it is inert (its jobs never fire) and `execute` always fails
//! fatally. Its schema documents the failure-record kwargs the worker writes
//! and accepts anything else too, so records from older versions stay valid.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::fatal;
use crate::handlers::{Handler, HandlerResult, RunContext, ERROR_HANDLER};

/// The handler of failure records.
pub struct ErrorHandler;

#[async_trait]
impl Handler for ErrorHandler {
    fn name(&self) -> &str {
        ERROR_HANDLER
    }

    fn description(&self) -> &str {
        "Inert handler of failure records (jobs written when a run fails); never runs"
    }

    fn inert(&self) -> bool {
        true
    }

    fn kwargs_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "exc_str": {
                    "type": "string",
                    "description": "The failed run's error message.",
                },
                "exc_traceback": {
                    "type": ["string", "null"],
                    "description": "The failed run's traceback or error chain, if any.",
                },
                "failed_job_id": {
                    "type": "string",
                    "description": "Id of the job whose run failed.",
                },
                "failed_job_handler": {
                    "type": "string",
                    "description": "Handler of the job whose run failed.",
                },
                "failed_handler_kwargs": {
                    "description": "Kwargs of the failed run.",
                },
                "failed_run_id": {
                    "type": ["string", "null"],
                    "description": "Id of the failed run.",
                },
            },
            "additionalProperties": true,
        })
    }

    fn example(&self) -> Value {
        json!({
            "exc_str": "GET https://example.com/health: unexpected status 503 Service Unavailable; body: down for maintenance",
            "exc_traceback": null,
            "failed_job_id": "health-check",
            "failed_job_handler": "http",
            "failed_handler_kwargs": {"url": "https://example.com/health"},
            "failed_run_id": "3f2b8c1e-6d4a-4e8f-9b0a-2c5d7e9f1a3b",
        })
    }

    async fn execute(&self, _ctx: RunContext, _kwargs: Value) -> HandlerResult {
        Err(fatal("ErrorHandler jobs are failure records and never run"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_rejected, ctx, registry};
    use super::*;

    #[tokio::test]
    async fn never_runs() {
        assert!(ErrorHandler.inert());
        let error = ErrorHandler
            .execute(ctx(), ErrorHandler.example())
            .await
            .unwrap_err();
        assert!(!error.retryable);
        assert_eq!(
            error.error.to_string(),
            "ErrorHandler jobs are failure records and never run"
        );
    }

    #[test]
    fn schema_accepts_records_and_extra_fields() {
        let registry = registry();
        let record = json!({"exc_str": "boom", "failed_job_id": "j", "extra": 1});
        registry.validate_kwargs(ERROR_HANDLER, &record).unwrap();
        registry.validate_kwargs(ERROR_HANDLER, &json!({})).unwrap();
        assert_rejected(ERROR_HANDLER, json!({"exc_str": 5}), "/exc_str");
    }
}
