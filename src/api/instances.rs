//! `/api/v1/instances` and `/api/v1/locks`: the replicas sharing the
//! database, and which running run holds which lock key.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::error::ApiResult;
use super::AppState;
use crate::store::{InstanceRow, LockRow};

#[derive(OpenApi)]
#[openapi(
    paths(list_instances, list_locks),
    components(schemas(InstanceList, InstanceRow, LockList, LockRow))
)]
pub struct InstancesApi;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/instances", get(list_instances))
        .route("/locks", get(list_locks))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceList {
    pub instances: Vec<InstanceRow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LockList {
    pub locks: Vec<LockRow>,
}

/// Replicas with their last heartbeat, version and running runs
#[utoipa::path(get, path = "/api/v1/instances", tag = "cluster", responses((status = 200, body = InstanceList)))]
async fn list_instances(State(app): State<AppState>) -> ApiResult<Json<InstanceList>> {
    let alive_ms = (app.lease.as_millis() as i64).saturating_mul(2);
    let instances = app.store.instance_list(alive_ms).await?;
    Ok(Json(InstanceList { instances }))
}

/// Lock keys held by running runs
#[utoipa::path(get, path = "/api/v1/locks", tag = "cluster", responses((status = 200, body = LockList)))]
async fn list_locks(State(app): State<AppState>) -> ApiResult<Json<LockList>> {
    let locks = app.store.lock_list().await?;
    Ok(Json(LockList { locks }))
}
