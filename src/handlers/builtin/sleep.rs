//! The `sleep` handler: waits for `seconds`.
//!
//! Guarantees: returns `{"slept_seconds": seconds}` after the full wait;
//! returns promptly with a fatal "cancelled after Xs" error when the run is
//! cancelled; reports `{"slept_seconds", "total_seconds"}` progress about once
//! a second. Useful for testing schedules, timeouts and cancellation.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::{Instant, MissedTickBehavior};

use super::{cancelled, parse_kwargs, seconds};
use crate::handlers::{Handler, HandlerResult, RunContext};

const NAME: &str = "sleep";
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepKwargs {
    seconds: f64,
}

/// Sleeps per run.
pub struct SleepHandler;

/// Seconds with millisecond precision, for results and messages.
fn rounded(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

#[async_trait]
impl Handler for SleepHandler {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "Waits for a number of seconds, reporting progress; stops early when cancelled"
    }

    fn kwargs_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "seconds": {
                    "type": "number",
                    "minimum": 0,
                    "description": "How long to sleep, in seconds (fractions allowed).",
                },
            },
            "required": ["seconds"],
            "additionalProperties": false,
        })
    }

    fn example(&self) -> Value {
        json!({"seconds": 5})
    }

    async fn execute(&self, ctx: RunContext, kwargs: Value) -> HandlerResult {
        let SleepKwargs { seconds: total } = parse_kwargs(NAME, kwargs)?;
        let duration = seconds("seconds", total)?;
        let started = Instant::now();
        let deadline = started
            .checked_add(duration)
            .ok_or_else(|| super::fatal(format!("seconds: {total} is too long to sleep")))?;
        let wake = tokio::time::sleep_until(deadline);
        tokio::pin!(wake);
        let mut ticker = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => {
                    let slept = rounded(started.elapsed());
                    return Err(cancelled(format!("cancelled after {slept}s")));
                }
                _ = &mut wake => break,
                _ = ticker.tick() => {
                    let slept = rounded(started.elapsed());
                    ctx.report_progress(json!({"slept_seconds": slept, "total_seconds": total}));
                }
            }
        }
        Ok(json!({"slept_seconds": total}))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::tests::{assert_rejected, ctx};
    use super::*;

    #[tokio::test]
    async fn sleeps_and_returns_the_seconds() {
        let started = Instant::now();
        let result = SleepHandler
            .execute(ctx(), json!({"seconds": 0.05}))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(result, json!({"slept_seconds": 0.05}));
        let result = SleepHandler
            .execute(ctx(), json!({"seconds": 0}))
            .await
            .unwrap();
        assert_eq!(result, json!({"slept_seconds": 0.0}));
    }

    #[tokio::test]
    async fn reports_progress_about_once_a_second() {
        let ctx = ctx();
        let progress = ctx.progress_updates();
        SleepHandler
            .execute(ctx, json!({"seconds": 1.3}))
            .await
            .unwrap();
        let last = progress.borrow().clone().expect("a progress report");
        let slept = last["slept_seconds"].as_f64().unwrap();
        assert!((0.9..1.3).contains(&slept), "{last}");
        assert_eq!(last["total_seconds"], 1.3);
    }

    #[tokio::test]
    async fn cancellation_returns_promptly() {
        let ctx = ctx();
        let cancel = ctx.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let error = SleepHandler
            .execute(ctx, json!({"seconds": 30}))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        let message = error.error.to_string();
        assert!(message.starts_with("cancelled after 0."), "{message}");
    }

    #[tokio::test]
    async fn bad_kwargs_are_fatal() {
        for kwargs in [
            json!({}),
            json!({"seconds": -1}),
            json!({"seconds": 1e300}),
            json!({"seconds": "5"}),
        ] {
            let error = SleepHandler
                .execute(ctx(), kwargs.clone())
                .await
                .unwrap_err();
            assert!(!error.retryable, "{kwargs}");
        }
    }

    #[test]
    fn schema_rejects_bad_kwargs_naming_the_field() {
        assert_rejected(NAME, json!({}), "seconds");
        assert_rejected(NAME, json!({"seconds": -1}), "/seconds");
        assert_rejected(NAME, json!({"seconds": "5"}), "/seconds");
        assert_rejected(NAME, json!({"seconds": 1, "minutes": 2}), "minutes");
    }

    #[test]
    fn example_fits_the_kwargs_struct() {
        let kwargs: SleepKwargs = serde_json::from_value(SleepHandler.example()).unwrap();
        assert_eq!(kwargs.seconds, 5.0);
    }
}
