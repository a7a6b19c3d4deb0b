//! The layer in front of every route: finds the scope the matched route
//! needs ([`required_access`]), and when auth is on, refuses a request
//! without an acceptable token (401) or with too small a scope (403)
//! before any handler runs, so a refused request changes nothing.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::scope::{required_access, Access};
use super::verify::{Auth, Caller, VerifyError};
use crate::api::ApiError;

/// The original service's header: the token as the whole value.
pub const AUTH_TOKEN_HEADER: &str = "auth-token";

/// How to send a token, for the 401 messages.
const HOW: &str = "send `Authorization: Bearer <token>` (or `auth-token: <token>`)";

/// The token a request presents: `Authorization: Bearer <token>` (the
/// scheme in any case), else the original service's `auth-token: <token>`.
/// `Ok(None)` when it sends neither; `Err` with what is wrong when a header
/// is there but unusable.
pub fn presented_token(headers: &HeaderMap) -> Result<Option<&str>, String> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| "the Authorization header is not text".to_string())?;
        let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(format!(
                "the Authorization header must be `Bearer <token>`, not {:?}",
                scheme_only(value)
            ));
        }
        return Ok(Some(token));
    }
    match headers.get(AUTH_TOKEN_HEADER) {
        None => Ok(None),
        Some(value) => match value.to_str().map(str::trim) {
            Ok(token) if !token.is_empty() => Ok(Some(token)),
            Ok(_) => Err("the auth-token header is empty".into()),
            Err(_) => Err("the auth-token header is not text".into()),
        },
    }
}

/// An Authorization value with its credential cut off, to show in errors.
fn scheme_only(value: &str) -> String {
    match value.trim().split_once(' ') {
        Some((scheme, _)) => format!("{scheme} …"),
        None if value.len() > 16 => "(a value without a scheme)".into(),
        None => value.trim().to_string(),
    }
}

/// Who `presented` is, or the answer refusing it: 401 for a token that is
/// not accepted, 503 when the store cannot be asked. (Also used by the
/// event stream, which checks its own credential.)
pub async fn verify_token(auth: &Auth, presented: &str) -> Result<Caller, ApiError> {
    auth.verify(presented, chrono::Utc::now())
        .await
        .map_err(|e| match e {
            VerifyError::Refused(refusal) => ApiError::Unauthorized(refusal.to_string()),
            VerifyError::Store(e) => {
                tracing::warn!(error = %e, "could not look up an API token");
                ApiError::Unavailable(
                    "cannot check the API token: the database is unreachable".into(),
                )
            }
        })
}

/// The middleware (`axum::middleware::from_fn_with_state`, as a route
/// layer, so that the route's template is known).
pub async fn require_token(
    State(auth): State<Auth>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    // A route layer always sees a matched route; the raw path stands in
    // should it not, and rules on it fail closed.
    let route = matched
        .as_ref()
        .map_or_else(|| request.uri().path(), MatchedPath::as_str);
    let Access::Needs(needed) = required_access(request.method(), route, auth.metrics_public())
    else {
        return next.run(request).await;
    };
    if !auth.enabled() {
        return next.run(request).await;
    }
    let caller = {
        let presented = match presented_token(request.headers()) {
            Ok(Some(token)) => token,
            Ok(None) => {
                return ApiError::Unauthorized(format!(
                    "this request needs an API token with {needed} scope; {HOW}"
                ))
                .into_response()
            }
            Err(problem) => {
                return ApiError::Unauthorized(format!("{problem}; {HOW}")).into_response()
            }
        };
        match verify_token(&auth, presented).await {
            Ok(caller) => caller,
            Err(refused) => return refused.into_response(),
        }
    };
    // The caller goes into the response too, for the audit log
    // (`crate::audit`), which sits outside this layer.
    if !caller.scope.allows(needed) {
        let mut refused = ApiError::Forbidden(format!(
            "the token {:?} has {} scope; {} {} needs {needed}",
            caller.name,
            caller.scope,
            request.method(),
            route
        ))
        .into_response();
        refused.extensions_mut().insert(caller);
        return refused;
    }
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(caller);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_bearer_token_or_the_auth_token_header_is_read() {
        assert_eq!(presented_token(&headers(&[])), Ok(None));
        assert_eq!(
            presented_token(&headers(&[("authorization", "Bearer jobsd_x")])),
            Ok(Some("jobsd_x"))
        );
        assert_eq!(
            presented_token(&headers(&[("authorization", "bearer   jobsd_x ")])),
            Ok(Some("jobsd_x"))
        );
        assert_eq!(
            presented_token(&headers(&[("auth-token", " jobsd_y")])),
            Ok(Some("jobsd_y"))
        );
        // Authorization wins when both are sent.
        assert_eq!(
            presented_token(&headers(&[
                ("authorization", "Bearer jobsd_x"),
                ("auth-token", "jobsd_y")
            ])),
            Ok(Some("jobsd_x"))
        );
    }

    #[test]
    fn unusable_headers_say_what_is_wrong_without_echoing_the_credential() {
        for (value, shown) in [
            ("Basic dXNlcjpwYXNz", "Basic …"),
            ("Bearer", "Bearer"),
            ("Bearer   ", "Bearer"),
            ("jobsd_abcdefgh_0123456789", "(a value without a scheme)"),
        ] {
            let err = presented_token(&headers(&[("authorization", value)])).unwrap_err();
            assert!(err.contains("Bearer <token>"), "{err}");
            assert!(err.contains(shown), "{shown:?} in {err}");
            assert!(
                !err.contains("dXNlcjpwYXNz") && !err.contains("0123456789"),
                "{err}"
            );
        }
        assert!(presented_token(&headers(&[("auth-token", " ")]))
            .unwrap_err()
            .contains("empty"));
    }
}
