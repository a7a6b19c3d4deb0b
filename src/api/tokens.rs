//! `/api/v1/tokens`: create, list and revoke API tokens (admin scope; see
//! `crate::auth`). A token's secret is in the answer that creates it and
//! nowhere else; lists show prefixes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::JsonBody;
use super::AppState;
use crate::auth::{manage, Scope, TokenError, TokenState};
use crate::store::TokenRow;

#[derive(OpenApi)]
#[openapi(
    paths(create_token, list_tokens, revoke_token),
    components(schemas(
        CreateToken,
        CreatedToken,
        TokenView,
        TokenList,
        TokenEnvelope,
        Scope,
        TokenState
    ))
)]
pub struct TokensApi;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", delete(revoke_token))
}

/// A new token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Who or what uses it.
    #[schema(example = "ci")]
    pub name: String,
    pub scope: Scope,
    /// Lifetime (`90d`, `12h`, `PT1H`, …); no expiry when left out.
    #[schema(example = "90d")]
    pub expires: Option<String>,
}

/// A token as lists show it: never its secret nor its hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: Uuid,
    pub name: String,
    /// `jobsd_` and the public id: the start of the token.
    #[schema(example = "jobsd_Ab3dEf9h")]
    pub prefix: String,
    pub scope: Scope,
    pub state: TokenState,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Updated at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl TokenView {
    fn of(token: TokenRow, now: DateTime<Utc>) -> TokenView {
        TokenView {
            state: TokenState::of(&token, now),
            id: token.id,
            name: token.name,
            prefix: token.prefix,
            scope: token.scope,
            created_at: token.created_at,
            expires_at: token.expires_at,
            revoked_at: token.revoked_at,
            last_used_at: token.last_used_at,
        }
    }
}

/// A created token.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token to send (`Authorization: Bearer <secret>`): shown only in
    /// this answer, store it now.
    #[schema(example = "jobsd_Ab3dEf9h_0123456789abcdefghijABCDEFGHIJkl")]
    pub secret: String,
    pub token: TokenView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenEnvelope {
    pub token: TokenView,
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Invalid(m) => ApiError::bad_request(m),
            TokenError::NotFound(what) => ApiError::NotFound(format!("no token {what}")),
            TokenError::Refused(m) => ApiError::Conflict(m),
            TokenError::Store(e) => e.into(),
        }
    }
}

/// Create an API token (admin)
///
/// The answer holds the token's secret, this once; only its hash is
/// stored. Under `--auth auto`, the first token turns authentication on.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_token(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let now = Utc::now();
    let expires_at = body
        .expires
        .as_deref()
        .map(|e| manage::expiry(e, now))
        .transpose()?;
    let issued = manage::issue(&app.store, &body.name, body.scope, now, expires_at).await?;
    app.auth.token_created();
    tracing::info!(prefix = %issued.token.prefix, name = %issued.token.name,
        scope = %issued.token.scope, "API token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            secret: issued.secret,
            token: TokenView::of(issued.token, now),
        }),
    ))
}

/// List API tokens (admin): prefixes, never secrets or hashes
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = TokenList), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn list_tokens(State(app): State<AppState>) -> ApiResult<Json<TokenList>> {
    let now = Utc::now();
    let tokens = app.store.token_list().await?;
    Ok(Json(TokenList {
        tokens: tokens.into_iter().map(|t| TokenView::of(t, now)).collect(),
    }))
}

/// Revoke an API token (admin), by id or prefix
///
/// Every replica refuses it within seconds. Revoking the last live admin
/// token answers 409: create another admin token first.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "The token's id, or its prefix (`jobsd_xxxxxxxx`)")),
    responses((status = 200, body = TokenEnvelope), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn revoke_token(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenEnvelope>> {
    let now = Utc::now();
    let token = manage::revoke(&app.store, &id, now).await?;
    app.auth.token_revoked(token.id);
    tracing::info!(prefix = %token.prefix, name = %token.name, "API token revoked");
    Ok(Json(TokenEnvelope {
        token: TokenView::of(token, now),
    }))
}
