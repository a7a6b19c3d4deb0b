//! The HTTP API under `/api/v1`: one router per resource, merged here with
//! the shared layers (body limit, tracing) and Swagger UI.

mod audit;
mod batch_files;
mod batches;
mod callbacks;
mod error;
pub(crate) mod events;
mod extract;
mod instances;
mod job_view;
mod jobs;
mod nul;
pub mod openapi;
mod request_id;
mod runs;
mod service;
mod stats;
mod tokens;
mod webhooks;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::{Config, SwaggerUi};

pub use error::{ApiError, ErrorBody};

use crate::auth::Auth;
use crate::handlers::HandlerRegistry;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::worker::WorkerPool;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub registry: Arc<HandlerRegistry>,
    /// This replica's name.
    pub instance: String,
    /// The OpenAPI document, rendered once.
    pub openapi_json: Arc<String>,
    /// Run lease; a replica is alive while it heartbeats within two.
    pub lease: std::time::Duration,
    /// This replica's workers: runs due when their job is created start
    /// here at once (see `Store::job_insert_many`).
    pub workers: WorkerPool,
    /// Cancelled when shutdown begins (SIGTERM): from then until exit the
    /// replica drains, and readiness answers 503.
    pub shutdown: CancellationToken,
    /// Who may call the API (checked by a layer in front of every route).
    pub auth: Auth,
    /// This replica's metrics (`GET /metrics`), shared with its workers,
    /// scheduler and supervisor.
    pub metrics: Metrics,
    /// Remote completion settings (the heartbeat's window).
    pub callbacks: crate::callbacks::CallbackSettings,
    /// Wakes this replica's event streams when events commit.
    pub events: crate::events::EventHub,
    /// This replica's webhook deliverer (test deliveries, URL rules).
    pub webhooks: Option<crate::webhooks::Deliverer>,
    /// The bounds of batch submits (`--max-batch-bytes`, `--max-body-bytes`).
    pub batch_limits: BatchLimits,
}

/// The bounds of batch submits and appends.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// A JSON body (rows in `rows`).
    pub max_json_bytes: usize,
    /// An NDJSON body (streamed).
    pub max_ndjson_bytes: u64,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_json_bytes: 1024 * 1024,
            max_ndjson_bytes: 1024 * 1024 * 1024,
        }
    }
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        registry: Arc<HandlerRegistry>,
        instance: String,
        lease: std::time::Duration,
        workers: WorkerPool,
        shutdown: CancellationToken,
        auth: Auth,
        metrics: Metrics,
        events: crate::events::EventHub,
    ) -> Self {
        let openapi_json = Arc::new(openapi::document_text(&registry));
        AppState {
            store,
            registry,
            instance,
            openapi_json,
            lease,
            workers,
            shutdown,
            auth,
            metrics,
            callbacks: crate::callbacks::CallbackSettings::default(),
            events,
            webhooks: None,
            batch_limits: BatchLimits::default(),
        }
    }

    /// This state with the bounds of batch submits.
    pub fn with_batch_limits(mut self, limits: BatchLimits) -> Self {
        self.batch_limits = limits;
        self
    }

    /// This state with the webhook deliverer.
    pub fn with_webhooks(mut self, deliverer: crate::webhooks::Deliverer) -> Self {
        self.webhooks = Some(deliverer);
        self
    }

    /// This state with the remote completion settings.
    pub fn with_callbacks(mut self, callbacks: crate::callbacks::CallbackSettings) -> Self {
        self.callbacks = callbacks;
        self
    }
}

/// The smallest body limit of `POST /api/v1/jobs/bulk` (10,000 small jobs fit).
const BULK_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The whole application: `/api/v1/...`, Swagger UI at `/api/v1/ui`, `/`
/// redirecting to it, and `/metrics` (Prometheus' usual path, outside the
/// API). `max_body_bytes` bounds every request body. Every
/// route is behind the token check (`crate::auth::require_token`), and
/// every mutating call is recorded in the audit log (`crate::audit`).
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let idempotency = crate::idempotency::Idempotency::new(state.store.clone());
    let api = Router::new()
        .merge(jobs::router(
            max_body_bytes.max(BULK_BODY_BYTES),
            &idempotency,
        ))
        .merge(runs::router(&idempotency))
        .merge(callbacks::router())
        .merge(events::router())
        .merge(audit::router())
        .merge(service::router())
        .merge(stats::router())
        .merge(instances::router())
        .merge(tokens::router())
        .merge(webhooks::router())
        .merge(batches::router())
        .merge(batch_files::router())
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/api/v1", api)
        .merge(SwaggerUi::new("/api/v1/ui").config(Config::from("/api/v1/openapi.json")))
        .route("/", get(|| async { Redirect::temporary("/api/v1/ui/") }))
        .route("/metrics", get(crate::metrics::http::scrape))
        // A route layer, so that it knows the matched route's template; it
        // covers the routes above, so a route is added above it.
        .route_layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            crate::auth::require_token,
        ))
        // Outside the token check, so that refused calls are recorded too.
        .route_layer(axum::middleware::from_fn_with_state(
            state.store.clone(),
            crate::audit::record_call,
        ))
        .fallback(not_found)
        // Inside `Router::layer`, so it sees the matched route's template,
        // and covers the fallback too (counted as `unmatched`).
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::http::track,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(nul::refuse_nul_in_uri))
        .layer(TraceLayer::new_for_http())
        // Outside the trace layer, whose span and lines then carry the id.
        .layer(axum::middleware::from_fn(request_id::tag_request))
        // Outside the token check, so that browsers' preflights are answered.
        .layer(tower::util::option_layer(state.auth.cors()))
        .with_state(state)
}

async fn openapi_json(axum::extract::State(app): axum::extract::State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        app.openapi_json.as_str().to_owned(),
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {}; the API is under /api/v1 (see /api/v1/ui)",
        uri.path()
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = ErrorBody {
        error: format!(
            "{method} is not allowed on {}; see /api/v1/ui for the methods",
            uri.path()
        ),
        problems: Vec::new(),
    };
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}
