//! `GET /api/v1/audit`: the audit log, newest first (admin scope; see
//! `crate::audit`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::QueryParams;
use super::AppState;
use crate::store::{AuditEntry, AuditFilter, AuditMethod};

#[derive(OpenApi)]
#[openapi(
    paths(list_audit),
    components(schemas(AuditPage, AuditEntry, AuditMethod))
)]
pub struct AuditApi;

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(list_audit))
}

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only the calls about this job.
    pub job_id: Option<String>,
    /// The `next_cursor` of the previous page: entries older than it.
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// The audit log, newest first
///
/// Every mutating call (POST, PUT, PATCH, DELETE) under `/api/v1`, refused
/// ones (401, 403) included; kept as long as `--retention` keeps runs.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_audit(
    State(app): State<AppState>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and {MAX_PAGE}"
        )));
    }
    let before = match q.cursor.as_deref() {
        None => None,
        Some(raw) => Some(raw.parse::<Uuid>().map_err(|_| {
            ApiError::bad_request(format!(
                "cursor: {raw:?} is not a cursor; pass the next_cursor of a previous page"
            ))
        })?),
    };
    let entries = app
        .store
        .audit_list(&AuditFilter {
            job_id: q.job_id,
            before,
            limit,
        })
        .await?;
    let next_cursor = if entries.len() as i64 == limit {
        entries.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(AuditPage {
        entries,
        next_cursor,
    }))
}
