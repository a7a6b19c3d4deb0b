//! `GET /metrics`, and the layer that counts and times every request by
//! its route template.

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{labels, Metrics};
use crate::api::AppState;

/// The media type of the OpenMetrics text format, which Prometheus asks
/// for first and parses.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics` (behind the token check: a read token when auth is on,
/// unless `--metrics-public`).
pub async fn scrape(State(app): State<AppState>) -> Response {
    let alive_ms = i64::try_from(app.lease.as_millis())
        .unwrap_or(i64::MAX)
        .saturating_mul(2);
    let text = app.metrics.render(&app.store, alive_ms).await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// The layer (`axum::middleware::from_fn_with_state`, added with
/// `Router::layer` so that it sees the matched route's template and also
/// covers the fallback): counts each request by method, route template and
/// status, and times it until the response head.
pub async fn track(
    State(metrics): State<Metrics>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let started = tokio::time::Instant::now();
    let method = labels::method(request.method());
    let response = next.run(request).await;
    let route = labels::route(matched.as_ref().map(MatchedPath::as_str));
    metrics.http_request(method, route, response.status().as_u16(), started.elapsed());
    response
}
