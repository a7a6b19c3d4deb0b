//! Running one attempt of a handler: timeout, cancellation and panic
//! catching are applied here, once, around every handler.
//!
//! Cancellation is cooperative first (the handler's token is cancelled),
//! then forcible: after `grace` the handler's future is dropped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::panic::CatchPanic;
use crate::handlers::{Handler, HandlerError, RunContext};
use crate::redact::{scrub_text, scrub_value};

/// Why a run was stopped from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Cancelled through the API (or an operator override).
    Cancelled(String),
    /// The lease was lost: another instance owns the run now.
    LeaseLost,
    /// The service is shutting down and the grace period ran out.
    Shutdown,
}

/// Set before the run's token is cancelled, so the attempt knows why.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<Mutex<Option<StopReason>>>);

impl StopSignal {
    /// Records the first reason only.
    pub fn set(&self, reason: StopReason) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(reason);
        }
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Execution {
    Succeeded(Value),
    Failed {
        error: String,
        traceback: String,
        retryable: bool,
    },
    TimedOut(Duration),
    Stopped(StopReason),
}

impl Execution {
    /// This outcome with every secret of the run's kwargs (`secrets`, from
    /// `HandlerRegistry::secrets_of`) masked in what the handler wrote: its
    /// error, traceback and result. Applied before the outcome is logged
    /// or stored.
    pub fn scrubbed(self, secrets: &[String]) -> Execution {
        if secrets.is_empty() {
            return self;
        }
        match self {
            Execution::Succeeded(mut value) => {
                scrub_value(&mut value, secrets);
                Execution::Succeeded(value)
            }
            Execution::Failed {
                error,
                traceback,
                retryable,
            } => Execution::Failed {
                error: scrub_text(&error, secrets),
                traceback: scrub_text(&traceback, secrets),
                retryable,
            },
            other => other,
        }
    }
}

fn failed(e: HandlerError) -> Execution {
    Execution::Failed {
        error: format!("{:#}", e.error),
        traceback: format!("{:?}", e.error),
        retryable: e.retryable,
    }
}

/// Runs `handler` to its end, its timeout, or its stop signal.
pub async fn execute(
    handler: Arc<dyn Handler>,
    ctx: RunContext,
    kwargs: Value,
    timeout: Option<Duration>,
    stop: &StopSignal,
    grace: Duration,
) -> Execution {
    let token = ctx.cancel.clone();
    let mut attempt = CatchPanic::new(Box::pin(async move { handler.execute(ctx, kwargs).await }));
    let finished =
        |result: Result<Result<Value, HandlerError>, super::panic::PanicReport>| match result {
            Ok(Ok(value)) => Execution::Succeeded(value),
            Ok(Err(e)) => failed(e),
            Err(report) => Execution::Failed {
                error: report.message,
                traceback: report.traceback,
                retryable: true,
            },
        };
    let timed_out = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    // A handler that returns after being stopped (often with an error caused
    // by the stop) ended because of the stop — except that at shutdown a
    // handler that still completed keeps its success.
    let stopped_or = |result| match (stop.reason(), finished(result)) {
        (None, execution) => execution,
        (Some(StopReason::Shutdown), success @ Execution::Succeeded(_)) => success,
        (Some(reason), _) => Execution::Stopped(reason),
    };
    tokio::select! {
        result = &mut attempt => stopped_or(result),
        _ = timed_out => {
            token.cancel();
            // Let the handler wind down, then drop it; the run timed out either way.
            let _ = tokio::time::timeout(grace, &mut attempt).await;
            Execution::TimedOut(timeout.unwrap_or_default())
        }
        _ = token.cancelled() => {
            match tokio::time::timeout(grace, &mut attempt).await {
                Ok(result) => stopped_or(result),
                Err(_) => Execution::Stopped(stop.reason().unwrap_or(StopReason::Cancelled("cancelled".into()))),
            }
        }
    }
}

/// Bounds a result for storage: NUL characters are replaced (PostgreSQL
/// cannot keep them in jsonb), and past `max_bytes` of JSON it is replaced
/// by a preview and the original size.
pub fn bound_result(mut value: Value, max_bytes: usize) -> Value {
    crate::guard::text::strip_nul(&mut value);
    let text = value.to_string();
    if text.len() <= max_bytes {
        return value;
    }
    let mut cut = max_bytes.min(1024);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    serde_json::json!({
        "truncated": true,
        "size_bytes": text.len(),
        "preview": &text[..cut],
    })
}

/// Bounds an error text for storage: NUL characters are replaced
/// (PostgreSQL cannot keep them in text), and past `max_bytes` it is cut at
/// a char boundary and says how long it was.
pub fn bound_text(text: &str, max_bytes: usize) -> String {
    let text = crate::guard::text::without_nul(text);
    if text.len() <= max_bytes {
        return text.into_owned();
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..cut], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;
    use uuid::Uuid;

    #[test]
    fn scrubbed_masks_secrets_in_errors_tracebacks_and_results() {
        let secrets = vec!["hunter22".to_string()];
        let failed = Execution::Failed {
            error: "stderr: hunter22".into(),
            traceback: "at hunter22".into(),
            retryable: true,
        }
        .scrubbed(&secrets);
        let Execution::Failed {
            error, traceback, ..
        } = failed
        else {
            panic!("{failed:?}")
        };
        assert_eq!(
            (error.as_str(), traceback.as_str()),
            ("stderr: ***", "at ***")
        );
        let Execution::Succeeded(value) =
            Execution::Succeeded(json!({"stdout": "hunter22\n"})).scrubbed(&secrets)
        else {
            panic!()
        };
        assert_eq!(value, json!({"stdout": "***\n"}));
    }

    struct Scripted(&'static str);

    #[async_trait]
    impl Handler for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn kwargs_schema(&self) -> Value {
            json!({"type": "object"})
        }
        fn example(&self) -> Value {
            json!({})
        }
        async fn execute(&self, ctx: RunContext, _kwargs: Value) -> crate::handlers::HandlerResult {
            match self.0 {
                "ok" => Ok(json!({"fine": true})),
                "fail" => Err(anyhow::anyhow!("inner cause")
                    .context("outer failure")
                    .into()),
                "panic" => panic!("handler exploded"),
                "stubborn" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(json!(null))
                }
                _ => {
                    ctx.cancel.cancelled().await;
                    Err(anyhow::anyhow!("stopped").into())
                }
            }
        }
    }

    async fn run(
        script: &'static str,
        timeout: Option<Duration>,
        stop: &StopSignal,
        token: CancellationToken,
    ) -> Execution {
        let ctx = RunContext::new(Uuid::new_v4(), "job".into(), 1, chrono::Utc::now(), token);
        execute(
            Arc::new(Scripted(script)),
            ctx,
            json!({}),
            timeout,
            stop,
            Duration::from_millis(100),
        )
        .await
    }

    #[tokio::test]
    async fn success_and_failure_with_the_error_chain() {
        let stop = StopSignal::default();
        assert!(
            matches!(run("ok", None, &stop, CancellationToken::new()).await, Execution::Succeeded(v) if v["fine"] == true)
        );
        match run("fail", None, &stop, CancellationToken::new()).await {
            Execution::Failed {
                error,
                traceback,
                retryable,
            } => {
                assert_eq!(error, "outer failure: inner cause");
                assert!(traceback.contains("Caused by"), "{traceback}");
                assert!(retryable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_panic_fails_the_attempt() {
        match run(
            "panic",
            None,
            &StopSignal::default(),
            CancellationToken::new(),
        )
        .await
        {
            Execution::Failed {
                error, traceback, ..
            } => {
                assert!(error.contains("handler exploded"));
                assert!(traceback.contains("stack backtrace"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn timeout_cancels_then_drops_a_stubborn_handler() {
        let started = tokio::time::Instant::now();
        let outcome = run(
            "stubborn",
            Some(Duration::from_millis(50)),
            &StopSignal::default(),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(outcome, Execution::TimedOut(_)), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_stop_reports_its_reason() {
        let stop = StopSignal::default();
        let token = CancellationToken::new();
        stop.set(StopReason::Cancelled("by operator".into()));
        stop.set(StopReason::LeaseLost); // the first reason wins
        token.cancel();
        let outcome = run("cooperative", None, &stop, token).await;
        assert!(
            matches!(outcome, Execution::Stopped(StopReason::Cancelled(ref r)) if r == "by operator"),
            "{outcome:?}"
        );
    }

    #[test]
    fn big_results_are_bounded() {
        let small = json!({"a": 1});
        assert_eq!(bound_result(small.clone(), 100), small);
        assert_eq!(
            bound_result(json!({"out": "a\u{0}b"}), 100),
            json!({"out": "a\u{FFFD}b"})
        );
        let big = json!({"text": "é".repeat(10_000)});
        let bounded = bound_result(big, 2000);
        assert_eq!(bounded["truncated"], true);
        assert!(bounded["preview"].as_str().unwrap().len() <= 1024);
    }

    #[test]
    fn error_texts_are_bounded_without_nul() {
        assert_eq!(bound_text("short", 100), "short");
        assert_eq!(bound_text("a\u{0}b", 100), "a\u{FFFD}b");
        assert_eq!(bound_text(&"é".repeat(10), 5), "éé… (20 bytes in all)");
    }
}
