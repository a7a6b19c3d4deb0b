//! Handlers: the named code a job runs.
//!
//! A [`Handler`] has one required method, [`Handler::execute`], plus a name, a
//! JSON Schema for its kwargs and an example. The worker applies timeouts,
//! panic catching and tracing around every handler, so handlers never do that
//! themselves. The [`HandlerRegistry`] maps names to handlers; the binary fills
//! it with the built-ins and a library user adds their own.

pub(crate) mod builtin;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use builtin::BuiltinConfig;

use crate::redact::{self, SecretField};

/// Name of the inert handler that failure records carry.
pub const ERROR_HANDLER: &str = "ErrorHandler";

/// The default bound on a job's kwargs, as JSON (`--max-kwargs-bytes`).
pub const DEFAULT_MAX_KWARGS_BYTES: usize = 64 * 1024;

/// What a handler gets besides its kwargs.
#[derive(Clone)]
pub struct RunContext {
    pub run_id: Uuid,
    pub job_id: String,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: i32,
    /// The time the run was scheduled for (its fire time; for a manual run,
    /// when it was requested).
    pub scheduled_for: DateTime<Utc>,
    /// Cancelled when the run is cancelled, times out, loses its lease or the
    /// service shuts down. Long handlers should watch it.
    pub cancel: CancellationToken,
    progress: Arc<watch::Sender<Option<Value>>>,
    /// Where and with which secret the service called reports back, for a
    /// run whose handler asked for a callback ([`Handler::wants_callback`]).
    callback: Option<Arc<crate::callbacks::CallbackGrant>>,
    /// For a batch row's call: its batch, place and the batch's context.
    batch: Option<Arc<BatchCall>>,
}

/// What the state a [`Handler::init_batch`] made is kept as.
pub type BatchState = Arc<dyn std::any::Any + Send + Sync>;

/// The batch a handler is initialised for ([`Handler::init_batch`]).
#[derive(Debug, Clone)]
pub struct BatchInfo {
    pub batch_id: Uuid,
    /// The batch's `context`, as submitted.
    pub context: Value,
}

/// A batch row's call, beside its row (the kwargs): `RunContext::batch`.
#[derive(Clone)]
pub struct BatchCall {
    pub batch_id: Uuid,
    /// The row's index in its batch.
    pub row: i64,
    /// The batch's `context`.
    pub context: Arc<Value>,
    /// What [`Handler::init_batch`] returned on this replica, if anything.
    pub state: Option<BatchState>,
}

impl BatchCall {
    /// The initialiser's state as `T`, if it made one of that type.
    pub fn state<T: std::any::Any + Send + Sync>(&self) -> Option<&T> {
        self.state.as_deref().and_then(|s| s.downcast_ref::<T>())
    }
}

impl RunContext {
    pub fn new(
        run_id: Uuid,
        job_id: String,
        attempt: i32,
        scheduled_for: DateTime<Utc>,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, _rx) = watch::channel(None);
        RunContext {
            run_id,
            job_id,
            attempt,
            scheduled_for,
            cancel,
            progress: Arc::new(tx),
            callback: None,
            batch: None,
        }
    }

    /// This context for a batch row's call.
    pub fn with_batch(mut self, call: BatchCall) -> Self {
        self.batch = Some(Arc::new(call));
        self
    }

    /// The batch, row and context of a batch row's call; None for a run.
    pub fn batch(&self) -> Option<&BatchCall> {
        self.batch.as_deref()
    }

    /// This context with the callback grant of its attempt (the worker
    /// sets it for a run whose handler wants a callback).
    pub fn with_callback(mut self, grant: crate::callbacks::CallbackGrant) -> Self {
        self.callback = Some(Arc::new(grant));
        self
    }

    /// The callback URL and token of this attempt, when it has one.
    pub fn callback(&self) -> Option<&crate::callbacks::CallbackGrant> {
        self.callback.as_deref()
    }

    /// Records the run's progress (any JSON, e.g. `{"done": 3, "total": 10}`);
    /// the worker stores the latest value with the next heartbeat.
    pub fn report_progress(&self, progress: Value) {
        self.progress.send_replace(Some(progress));
    }

    /// A receiver of progress reports, for the worker.
    pub fn progress_updates(&self) -> watch::Receiver<Option<Value>> {
        self.progress.subscribe()
    }
}

/// Why a handler failed, and whether trying again may help.
#[derive(Debug)]
pub struct HandlerError {
    pub error: anyhow::Error,
    /// A fatal error fails the run at once, without the job's retries.
    pub retryable: bool,
}

impl HandlerError {
    pub fn fatal(error: impl Into<anyhow::Error>) -> Self {
        HandlerError {
            error: error.into(),
            retryable: false,
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError {
            error: error.into(),
            retryable: true,
        }
    }
}

pub type HandlerResult = Result<Value, HandlerError>;

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The registered name, used in `POST /api/v1/jobs/{name}`.
    fn name(&self) -> &str;

    /// One line for operators, shown in `GET /api/v1/handlers` and the docs.
    fn description(&self) -> &str {
        ""
    }

    /// JSON Schema of the kwargs; kwargs are validated against it on create.
    fn kwargs_schema(&self) -> Value;

    /// Valid kwargs, shown in the API documentation.
    fn example(&self) -> Value;

    /// An inert handler's jobs never fire (failure records use one).
    fn inert(&self) -> bool {
        false
    }

    /// Refuses new jobs with this reason while `Some` (e.g. `command` when it
    /// is not enabled in the configuration).
    fn disabled_reason(&self) -> Option<String> {
        None
    }

    /// Checks of kwargs that a schema cannot express (e.g. `command`'s
    /// allow list), run on create once the schema passed. Each problem is
    /// the field's JSON pointer (`/program`) and what is wrong.
    fn check_kwargs(&self, _kwargs: &Value) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Where the kwargs hold secrets: stored and passed to `execute` as
    /// given, shown everywhere else as `"***"` (see [`crate::redact`]).
    /// Mark them in [`Handler::kwargs_schema`] too (`writeOnly`, and say so
    /// in the description), for the API documentation.
    fn secret_fields(&self) -> Vec<SecretField> {
        Vec::new()
    }

    /// Whether a run with these kwargs is completed by the service it calls
    /// (`crate::callbacks`): then each attempt gets a callback grant in its
    /// context, and a successful return means "accepted": the run stays
    /// `running` until the service reports back or its deadline passes.
    fn wants_callback(&self, _kwargs: &Value) -> bool {
        false
    }

    /// Batches: called once per batch on each replica, before the first
    /// row of that batch runs there (e.g. to open a connection or load a
    /// model). What it returns is handed to every row's call of the batch
    /// on this replica, as `ctx.batch().state`. An error fails that row's
    /// attempt (retried as any failure is), and the next row calls it
    /// again. The per-row function is [`Handler::execute`], with the row
    /// as its kwargs and `ctx.batch()` giving the batch's context.
    async fn init_batch(&self, _batch: &BatchInfo) -> Result<Option<BatchState>, HandlerError> {
        Ok(None)
    }

    /// Does the work. The returned value is stored as the run's result
    /// (a batch row's output; `null` is no output).
    async fn execute(&self, ctx: RunContext, kwargs: Value) -> HandlerResult;
}

struct Registered {
    handler: Arc<dyn Handler>,
    validator: jsonschema::Validator,
    /// [`Handler::secret_fields`], asked once.
    secrets: Vec<SecretField>,
}

/// Handlers by name, with their compiled kwargs schemas, and the bound
/// on kwargs' size.
pub struct HandlerRegistry {
    handlers: BTreeMap<String, Registered>,
    max_kwargs_bytes: usize,
}

impl Default for HandlerRegistry {
    fn default() -> Self {
        HandlerRegistry {
            handlers: BTreeMap::new(),
            max_kwargs_bytes: DEFAULT_MAX_KWARGS_BYTES,
        }
    }
}

impl HandlerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in handlers (`http`, `command`, `log`, `sleep`, `ErrorHandler`).
    pub fn with_builtins(config: BuiltinConfig) -> Self {
        let mut registry = Self::new();
        registry.set_max_kwargs_bytes(config.max_kwargs_bytes);
        for handler in builtin::all(config) {
            registry
                .register_arc(handler)
                .expect("built-in handler schemas are valid");
        }
        registry
    }

    /// Adds a handler, replacing one of the same name. Fails when its kwargs
    /// schema is not a valid JSON Schema.
    pub fn register(&mut self, handler: impl Handler) -> anyhow::Result<()> {
        self.register_arc(Arc::new(handler))
    }

    pub fn register_arc(&mut self, handler: Arc<dyn Handler>) -> anyhow::Result<()> {
        let name = handler.name();
        if name.is_empty()
            || name.contains(['/', '?', '#'])
            || crate::job_spec::RESERVED_IDS.contains(&name)
        {
            anyhow::bail!("handler name {name:?} is empty, reserved by the API or not a path word");
        }
        let schema = handler.kwargs_schema();
        let validator = jsonschema::validator_for(&schema).map_err(|e| {
            anyhow::anyhow!("handler {}: invalid kwargs schema: {e}", handler.name())
        })?;
        let secrets = handler.secret_fields();
        self.handlers.insert(
            handler.name().to_string(),
            Registered {
                handler,
                validator,
                secrets,
            },
        );
        Ok(())
    }

    /// Bounds kwargs (as JSON) for every handler (`--max-kwargs-bytes`).
    pub fn set_max_kwargs_bytes(&mut self, max: usize) {
        self.max_kwargs_bytes = max;
    }

    /// The bound on kwargs (as JSON), in bytes.
    pub fn max_kwargs_bytes(&self) -> usize {
        self.max_kwargs_bytes
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(name).map(|r| &r.handler)
    }

    /// All handlers, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Handler>> {
        self.handlers.values().map(|r| &r.handler)
    }

    /// Where `handler`'s kwargs hold secrets (none for an unknown handler).
    pub fn secret_fields(&self, handler: &str) -> &[SecretField] {
        self.handlers
            .get(handler)
            .map(|r| r.secrets.as_slice())
            .unwrap_or_default()
    }

    /// A job's or run's kwargs as they may be shown: every secret of
    /// `handler`'s kwargs as `"***"`; for a failure record, the failed
    /// run's kwargs so, and its error texts scrubbed of them. Every output
    /// of kwargs goes through this: API answers, log lines, and the events
    /// of issue #13 (call it before emitting an event that carries kwargs).
    pub fn redact_kwargs(&self, handler: &str, kwargs: &Value) -> Value {
        if handler == ERROR_HANDLER {
            let failed = kwargs["failed_job_handler"].as_str().unwrap_or_default();
            return redact::redact_failure_record(kwargs, self.secret_fields(failed));
        }
        redact::redact(kwargs, self.secret_fields(handler))
    }

    /// The secret values in a job's or run's kwargs, for
    /// [`redact::scrub_text`] / [`redact::scrub_value`] on texts made from
    /// them (error messages, tracebacks, results, progress, events).
    pub fn secrets_of(&self, handler: &str, kwargs: &Value) -> Vec<String> {
        if handler == ERROR_HANDLER {
            let failed = kwargs["failed_job_handler"].as_str().unwrap_or_default();
            return redact::failure_record_secrets(kwargs, self.secret_fields(failed));
        }
        redact::secret_values(kwargs, self.secret_fields(handler))
    }

    /// Checks kwargs against the handler's schema, then its own checks
    /// ([`Handler::check_kwargs`]). Each problem names the field (a JSON
    /// pointer such as `/url`, or `kwargs` for the root).
    pub fn validate_kwargs(&self, name: &str, kwargs: &Value) -> Result<(), Vec<String>> {
        let Some(registered) = self.handlers.get(name) else {
            return Err(vec![format!("unknown handler {name:?}")]);
        };
        let field = |path: &str| {
            if path.is_empty() {
                "kwargs".to_string()
            } else {
                format!("kwargs{path}")
            }
        };
        let mut problems: Vec<String> = registered
            .validator
            .iter_errors(kwargs)
            .map(|e| format!("{}: {e}", field(&e.instance_path.to_string())))
            .collect();
        if problems.is_empty() {
            problems = registered
                .handler
                .check_kwargs(kwargs)
                .into_iter()
                .map(|(path, message)| format!("{}: {message}", field(&path)))
                .collect();
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
