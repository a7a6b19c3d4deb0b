//! `/api/v1/service/state`, probes and the handler catalogue.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::QueryParams;
use super::AppState;

#[derive(OpenApi)]
#[openapi(
    paths(
        get_service_state,
        put_service_state,
        liveness,
        readiness,
        list_handlers
    ),
    components(schemas(ServiceState, Probe, HandlerInfo, HandlerList))
)]
pub struct ServiceApi;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/service/state",
            get(get_service_state).put(put_service_state),
        )
        .route("/liveness", get(liveness))
        .route("/readiness", get(readiness))
        .route("/handlers", get(list_handlers))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceState {
    /// `running`, or `paused` (no job fires; running runs finish).
    #[schema(example = "running")]
    pub state: String,
    /// This replica's name.
    pub instance: String,
}

async fn service_state(app: &AppState) -> ApiResult<Json<ServiceState>> {
    let paused = app.store.service_paused().await?;
    Ok(Json(ServiceState {
        state: if paused { "paused" } else { "running" }.to_string(),
        instance: app.instance.clone(),
    }))
}

/// Whether scheduling runs or is paused service-wide
#[utoipa::path(get, path = "/api/v1/service/state", tag = "service",
    responses((status = 200, body = ServiceState)))]
async fn get_service_state(State(app): State<AppState>) -> ApiResult<Json<ServiceState>> {
    service_state(&app).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ServiceStateQuery {
    /// `running` (alias `active`) or `paused`.
    pub state: String,
}

/// Pause or resume all scheduling
///
/// Paused: no job fires on any replica; runs already running finish.
#[utoipa::path(put, path = "/api/v1/service/state", tag = "service", params(ServiceStateQuery),
    responses((status = 200, body = ServiceState), (status = 400, body = ErrorBody)))]
async fn put_service_state(
    State(app): State<AppState>,
    QueryParams(q): QueryParams<ServiceStateQuery>,
) -> ApiResult<Json<ServiceState>> {
    let paused = match q.state.to_ascii_lowercase().as_str() {
        "running" | "active" => false,
        "paused" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "state: unknown state {other:?}; use running (alias active) or paused"
            )))
        }
    };
    app.store.service_set_paused(paused).await?;
    tracing::info!(paused, "service scheduling state set");
    service_state(&app).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Probe {
    #[schema(example = "ok")]
    pub status: String,
}

/// Liveness probe: the process serves HTTP
#[utoipa::path(get, path = "/api/v1/liveness", tag = "service", security(()),
    responses((status = 200, body = Probe)))]
async fn liveness() -> Json<Probe> {
    Json(Probe {
        status: "ok".into(),
    })
}

/// Readiness probe: the database answers and the replica is not draining
///
/// 503 while the database is unreachable, and from the moment shutdown
/// begins (SIGTERM) until exit, while the replica drains: the error then
/// starts with `draining`, so a load balancer stops sending it work.
#[utoipa::path(get, path = "/api/v1/readiness", tag = "service", security(()),
    responses((status = 200, body = Probe), (status = 503, body = ErrorBody)))]
async fn readiness(State(app): State<AppState>) -> Result<Json<Probe>, ApiError> {
    if app.shutdown.is_cancelled() {
        return Err(ApiError::Unavailable(
            "draining: this replica is shutting down; it lets its running runs \
             finish or hands them back, and takes no new work"
                .into(),
        ));
    }
    match app.store.ping().await {
        Ok(()) => Ok(Json(Probe {
            status: "ok".into(),
        })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            Err(ApiError::Unavailable("the database is unreachable".into()))
        }
    }
}

/// A registered handler.
#[derive(Debug, Serialize, ToSchema)]
pub struct HandlerInfo {
    pub name: String,
    pub description: String,
    /// JSON Schema of the kwargs.
    #[schema(value_type = Object)]
    pub kwargs_schema: Value,
    /// Valid kwargs.
    #[schema(value_type = Object)]
    pub example: Value,
    /// False when the configuration disables it (e.g. `command`).
    pub enabled: bool,
    pub disabled_reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HandlerList {
    pub handlers: Vec<HandlerInfo>,
}

/// Registered handlers with their kwargs schemas and examples
#[utoipa::path(get, path = "/api/v1/handlers", tag = "service", responses((status = 200, body = HandlerList)))]
async fn list_handlers(State(app): State<AppState>) -> (StatusCode, Json<HandlerList>) {
    let handlers = app
        .registry
        .iter()
        .map(|h| {
            let disabled_reason = h.disabled_reason();
            HandlerInfo {
                name: h.name().to_string(),
                description: h.description().to_string(),
                kwargs_schema: h.kwargs_schema(),
                example: h.example(),
                enabled: disabled_reason.is_none(),
                disabled_reason,
            }
        })
        .collect();
    (StatusCode::OK, Json(HandlerList { handlers }))
}
