//! `/api/v1/runs` and a job's runs (filled in by the scheduler work).

use axum::Router;
use utoipa::OpenApi;

use super::AppState;

#[derive(OpenApi)]
#[openapi()]
pub struct RunsApi;

pub fn router() -> Router<AppState> {
    Router::new()
}
