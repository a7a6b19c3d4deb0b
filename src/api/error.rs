//! The one error type of the API. Every variant documents its status; a
//! database or internal fault answers 500 with a generic message while the
//! detail goes to the log, never to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::job_spec::FieldError;
use crate::store::StoreError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in a sentence a person can act on.
    #[schema(example = "periodically: \"5 parsecs\" is not a duration")]
    pub error: String,
    /// For invalid definitions: every problem, each naming its field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<FieldError>,
}

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed or invalid; nothing was changed.
    BadRequest(String, Vec<FieldError>),
    /// 401: no API token, or one that is not accepted; nothing was changed.
    Unauthorized(String),
    /// 403: the token's scope does not allow this request; nothing was changed.
    Forbidden(String),
    /// 404: no such resource.
    NotFound(String),
    /// 409: the request conflicts with the current state (duplicate id, limit reached).
    Conflict(String),
    /// 413: the body is larger than the configured limit.
    PayloadTooLarge(String),
    /// 422: the request is well formed but cannot be taken as it is (an
    /// `Idempotency-Key` reused for another request); nothing was changed.
    Unprocessable(String),
    /// 503: a dependency (the database) is unavailable.
    Unavailable(String),
    /// 500: a bug or a database fault; the detail is logged.
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into(), Vec::new())
    }

    /// 400 listing every problem of a definition.
    pub fn invalid(problems: Vec<FieldError>) -> Self {
        let summary = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::BadRequest(summary, problems)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::NotFound(what.into())
    }

    /// Maps a store error, naming the missing resource for `NotFound`.
    pub fn from_store(err: StoreError, missing: impl FnOnce() -> String) -> Self {
        match err {
            StoreError::NotFound => ApiError::NotFound(missing()),
            other => other.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::Stale => ApiError::Conflict(
                "the job kept changing while this request applied its change; try again".into(),
            ),
            StoreError::Database(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, problems) = match self {
            ApiError::BadRequest(m, p) => (StatusCode::BAD_REQUEST, m, p),
            ApiError::Unauthorized(m) => {
                let body = ErrorBody {
                    error: m,
                    problems: Vec::new(),
                };
                return (
                    StatusCode::UNAUTHORIZED,
                    [(
                        axum::http::header::WWW_AUTHENTICATE,
                        "Bearer realm=\"jobsd\"",
                    )],
                    Json(body),
                )
                    .into_response();
            }
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m, Vec::new()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m, Vec::new()),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m, Vec::new()),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m, Vec::new()),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m, Vec::new()),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m, Vec::new()),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error while serving a request");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; the details are in the service log".to_string(),
                    Vec::new(),
                )
            }
        };
        (status, Json(ErrorBody { error, problems })).into_response()
    }
}
