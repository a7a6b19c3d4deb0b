//! A NUL character (`%00`) in a request's path or query answers 400 before
//! routing: PostgreSQL cannot compare or store text holding one (a job id
//! or a filter would reach it as a 500), and no id or filter holds one.
//! Bodies are checked field by field where they are validated (the field
//! is named there).

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

pub async fn refuse_nul_in_uri(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let has_nul = |part: &str| part.contains("%00");
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        return ApiError::bad_request(
            "the request's path or query holds a NUL character (%00); no id, filter or field \
             may contain one",
        )
        .into_response();
    }
    next.run(request).await
}
