//! The built-in handlers: `http`, `command`, `log`, `sleep` and the inert
//! `ErrorHandler` that failure records carry.
//!
//! Shared guarantees:
//! - kwargs are deserialized into a typed struct inside `execute`; kwargs that
//!   do not fit it fail the run with a fatal (non-retryable) error, so a bad
//!   job never burns its retries;
//! - nothing read from kwargs, the network or a process is unwrapped: every
//!   problem becomes a [`HandlerError`];
//! - output stored in a run's result is bounded by
//!   [`BuiltinConfig::max_output_bytes`] and cut at a UTF-8 char boundary;
//! - long handlers (`http`, `command`, `sleep`) watch `ctx.cancel` and return
//!   promptly with a fatal error whose message says "cancelled" (the worker
//!   knows why it cancelled and decides the run's final state).

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Handler, HandlerError};
use crate::config::GuardConfig;
use crate::guard::{AddressPolicy, ProgramAllowList};

mod command;
mod error_handler;
mod http;
pub(crate) mod http_guard;
mod log;
mod sleep;

/// Configuration of the built-in handlers.
#[derive(Debug, Clone)]
pub struct BuiltinConfig {
    /// Whether the `command` handler may run programs (off by default).
    pub command_enabled: bool,
    /// When set, the only programs `command` may run.
    pub command_allow: Option<Arc<ProgramAllowList>>,
    /// What the `http` handler may connect to.
    pub http_policy: Arc<AddressPolicy>,
    /// The proxy every `http` request goes through (`--http-proxy`); the
    /// environment's proxy variables are ignored.
    pub http_proxy: Option<String>,
    /// Bound on each captured output (an HTTP body, a command's stdout and
    /// its stderr) stored in a run's result.
    pub max_output_bytes: usize,
    /// Largest kwargs (as JSON) a job may have; the registry checks it.
    pub max_kwargs_bytes: usize,
    /// Whether `--public-url` is set: without it `http` jobs with
    /// `"callback": true` are refused.
    pub callbacks_enabled: bool,
}

impl Default for BuiltinConfig {
    fn default() -> Self {
        BuiltinConfig {
            command_enabled: false,
            command_allow: None,
            http_policy: Arc::new(AddressPolicy::default()),
            http_proxy: None,
            max_output_bytes: 64 * 1024,
            max_kwargs_bytes: super::DEFAULT_MAX_KWARGS_BYTES,
            callbacks_enabled: false,
        }
    }
}

impl BuiltinConfig {
    /// The configuration the flags describe. Resolves `--command-allow`
    /// when the handler is enabled (each program must be found) and checks `--http-allow`,
    /// `--http-deny` and `--http-proxy`; an error names the flag.
    pub fn from_flags(command_enabled: bool, guards: &GuardConfig) -> anyhow::Result<Self> {
        let http_policy = AddressPolicy::from_flags(&guards.http_deny, &guards.http_allow)
            .map_err(anyhow::Error::msg)?;
        let http_proxy = guards.http_proxy.clone().filter(|p| !p.trim().is_empty());
        if let Some(proxy) = &http_proxy {
            http_guard::check_proxy(proxy).map_err(anyhow::Error::msg)?;
        }
        // A disabled handler runs nothing: its list is not looked up.
        let command_allow = if command_enabled {
            ProgramAllowList::resolve(&guards.command_allow)
                .map_err(anyhow::Error::msg)?
                .map(Arc::new)
        } else {
            None
        };
        let callbacks = guards.callbacks.settings().map_err(anyhow::Error::msg)?;
        Ok(BuiltinConfig {
            callbacks_enabled: callbacks.public_url.is_some(),
            command_enabled,
            command_allow,
            http_policy: Arc::new(http_policy),
            http_proxy,
            max_kwargs_bytes: guards.max_kwargs_bytes,
            ..BuiltinConfig::default()
        })
    }

    /// One line for the start-up log: what the guards allow.
    pub fn describe(&self) -> String {
        let command = match (self.command_enabled, &self.command_allow) {
            (false, _) => "command: disabled".to_string(),
            (true, None) => "command: enabled for any program".to_string(),
            (true, Some(list)) => format!("command: only {}", list.listed()),
        };
        let proxy = match &self.http_proxy {
            Some(proxy) => format!("through the proxy {}", http_guard::shown(proxy)),
            None => "direct (proxy variables ignored)".to_string(),
        };
        format!(
            "http: {}; {proxy}. {command}. kwargs: at most {} bytes",
            self.http_policy.describe(),
            self.max_kwargs_bytes
        )
    }
}

/// All built-in handlers, configured.
pub fn all(config: BuiltinConfig) -> Vec<Arc<dyn Handler>> {
    vec![
        Arc::new(
            http::HttpHandler::new(
                config.max_output_bytes,
                config.http_policy.clone(),
                config.http_proxy.clone(),
            )
            .with_callbacks(config.callbacks_enabled),
        ),
        Arc::new(command::CommandHandler::new(
            config.command_enabled,
            config.command_allow.clone(),
            config.max_output_bytes,
        )),
        Arc::new(log::LogHandler),
        Arc::new(sleep::SleepHandler),
        Arc::new(error_handler::ErrorHandler),
    ]
}

/// Deserializes kwargs into a handler's typed struct; a mismatch is fatal.
fn parse_kwargs<T: DeserializeOwned>(handler: &str, kwargs: Value) -> Result<T, HandlerError> {
    serde_json::from_value(kwargs)
        .map_err(|e| HandlerError::fatal(anyhow::anyhow!("{handler}: invalid kwargs: {e}")))
}

/// The error a handler returns when `ctx.cancel` fires.
fn cancelled(what: impl std::fmt::Display) -> HandlerError {
    HandlerError::fatal(anyhow::anyhow!("{what}"))
}

/// A fatal error from a message.
fn fatal(message: impl std::fmt::Display) -> HandlerError {
    HandlerError::fatal(anyhow::anyhow!("{message}"))
}

/// A retryable error from a message.
fn retryable(message: impl std::fmt::Display) -> HandlerError {
    HandlerError {
        error: anyhow::anyhow!("{message}"),
        retryable: true,
    }
}

/// Parses a duration in seconds from kwargs (finite, `>= 0`, not absurdly large).
fn seconds(field: &str, value: f64) -> Result<std::time::Duration, HandlerError> {
    if value < 0.0 {
        return Err(fatal(format!("{field} must be >= 0, got {value}")));
    }
    std::time::Duration::try_from_secs_f64(value)
        .map_err(|e| fatal(format!("{field}: invalid number of seconds {value}: {e}")))
}

/// Text of at most `max` bytes from possibly non-UTF-8 `bytes`, cut at a char
/// boundary, and whether anything was cut.
fn bounded_text(bytes: &[u8], max: usize) -> (String, bool) {
    let mut cut = bytes.len() > max;
    let mut end = bytes.len().min(max);
    if cut {
        // Do not split a multi-byte sequence (UTF-8 continuation bytes are 10xxxxxx).
        let mut back = end;
        while back > 0 && end - back < 4 && bytes.get(back).is_some_and(|b| b & 0xC0 == 0x80) {
            back -= 1;
        }
        if bytes.get(back).is_none_or(|b| b & 0xC0 != 0x80) {
            end = back;
        }
    }
    let mut text = String::from_utf8_lossy(&bytes[..end]).into_owned();
    // Replacement characters for invalid bytes may have grown the text.
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        cut = true;
    }
    (text, cut)
}

/// The last `max` bytes (or fewer, at a char boundary) of `text`.
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// `error` and its sources, joined with ": ".
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some errors repeat their source's text; skip exact repeats.
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::handlers::{HandlerRegistry, RunContext, ERROR_HANDLER};
    use tokio_util::sync::CancellationToken;
    use uuid::Uuid;

    pub(crate) fn ctx() -> RunContext {
        RunContext::new(
            Uuid::new_v4(),
            "test-job".into(),
            1,
            chrono::Utc::now(),
            CancellationToken::new(),
        )
    }

    pub(crate) fn registry() -> HandlerRegistry {
        HandlerRegistry::with_builtins(BuiltinConfig {
            command_enabled: true,
            ..BuiltinConfig::default()
        })
    }

    /// Asserts that kwargs are rejected with a problem that names `field`.
    pub(crate) fn assert_rejected(handler: &str, kwargs: Value, field: &str) {
        let problems = registry()
            .validate_kwargs(handler, &kwargs)
            .expect_err("kwargs should be rejected");
        assert!(
            problems.iter().any(|p| p.contains(field)),
            "{handler} {kwargs}: {problems:?} should name {field}"
        );
    }

    #[test]
    fn all_builtins_are_registered_with_valid_examples() {
        let registry = registry();
        let names: Vec<&str> = registry.iter().map(|h| h.name()).collect();
        assert_eq!(names, [ERROR_HANDLER, "command", "http", "log", "sleep"]);
        for handler in registry.iter() {
            assert!(!handler.description().is_empty(), "{}", handler.name());
            assert!(!handler.description().contains('\n'), "{}", handler.name());
            let schema = handler.kwargs_schema();
            assert_eq!(schema["type"], "object", "{}", handler.name());
            let properties = schema["properties"].as_object().expect("properties");
            for (field, property) in properties {
                assert!(
                    property["description"].is_string(),
                    "{}.{field} has no description",
                    handler.name()
                );
            }
            registry
                .validate_kwargs(handler.name(), &handler.example())
                .unwrap_or_else(|e| panic!("{} example: {e:?}", handler.name()));
        }
        assert_eq!(registry.iter().filter(|h| h.inert()).count(), 1);
    }

    #[test]
    fn secret_fields_are_marked_in_the_kwargs_schema() {
        let registry = registry();
        for handler in registry.iter() {
            let schema = handler.kwargs_schema();
            for secret in handler.secret_fields() {
                let property = &schema["properties"][secret.field()];
                let description = property["description"].as_str().unwrap_or_default();
                assert!(
                    description.contains("secret") && description.contains("\"***\""),
                    "{}.{}: {description}",
                    handler.name(),
                    secret.field()
                );
            }
        }
        let fields = |name: &str| {
            registry
                .secret_fields(name)
                .iter()
                .map(|f| f.field().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(fields("http"), ["headers", "secret_headers"]);
        assert_eq!(fields("command"), ["env"]);
        assert!(fields("log").is_empty() && fields("nope").is_empty());
    }

    #[test]
    fn failure_records_are_redacted_with_the_failed_handlers_rules() {
        let registry = registry();
        let record = serde_json::json!({
            "exc_str": "exited; stderr: hunter22",
            "failed_job_handler": "command",
            "failed_handler_kwargs": {"program": "sh", "env": {"S": "hunter22"}},
        });
        let shown = registry.redact_kwargs(ERROR_HANDLER, &record);
        assert_eq!(shown["failed_handler_kwargs"]["env"]["S"], "***");
        assert_eq!(shown["exc_str"], "exited; stderr: ***");
        assert_eq!(registry.secrets_of(ERROR_HANDLER, &record), ["hunter22"]);
        let kwargs = serde_json::json!({"program": "sh", "env": {"S": "hunter22"}});
        assert_eq!(
            registry.redact_kwargs("command", &kwargs)["env"]["S"],
            "***"
        );
        assert_eq!(registry.secrets_of("command", &kwargs), ["hunter22"]);
    }

    #[test]
    fn non_objects_are_rejected() {
        for name in ["http", "command", "log", "sleep"] {
            assert_rejected(name, serde_json::json!([1]), "kwargs");
        }
    }

    #[test]
    fn command_is_disabled_by_default() {
        let registry = HandlerRegistry::with_builtins(BuiltinConfig::default());
        let command = registry.get("command").expect("command");
        assert!(command.disabled_reason().is_some());
        for handler in registry.iter().filter(|h| h.name() != "command") {
            assert!(handler.disabled_reason().is_none(), "{}", handler.name());
        }
    }

    #[test]
    fn bounded_text_cuts_at_char_boundaries() {
        assert_eq!(bounded_text(b"hello", 10), ("hello".into(), false));
        assert_eq!(bounded_text(b"hello", 5), ("hello".into(), false));
        assert_eq!(bounded_text(b"hello", 3), ("hel".into(), true));
        assert_eq!(bounded_text(b"", 0), ("".into(), false));
        assert_eq!(bounded_text(b"abc", 0), ("".into(), true));
        let e = "ééé".as_bytes(); // 6 bytes
        assert_eq!(bounded_text(e, 3), ("é".into(), true));
        assert_eq!(bounded_text(e, 4), ("éé".into(), true));
        let emoji = "a😀b".as_bytes(); // 1 + 4 + 1 bytes
        for max in 1..5 {
            assert_eq!(bounded_text(emoji, max), ("a".into(), true), "max {max}");
        }
        // Invalid bytes become U+FFFD but the bound still holds.
        let (text, cut) = bounded_text(&[0xff, 0xff, 0xff], 4);
        assert!(text.len() <= 4 && cut, "{text:?}");
        let (text, cut) = bounded_text(&[0x80; 10], 5);
        assert!(text.len() <= 5 && cut, "{text:?}");
    }

    #[test]
    fn tail_keeps_the_end_at_a_char_boundary() {
        assert_eq!(tail("hello", 10), "hello");
        assert_eq!(tail("hello", 2), "lo");
        assert_eq!(tail("aéb", 2), "b");
    }

    #[test]
    fn seconds_rejects_bad_numbers() {
        assert!(seconds("s", 1.5).is_ok());
        assert!(seconds("s", 0.0).is_ok());
        assert!(seconds("s", -1.0).is_err());
        assert!(seconds("s", f64::NAN).is_err());
        assert!(seconds("s", 1e300).is_err());
    }
}
