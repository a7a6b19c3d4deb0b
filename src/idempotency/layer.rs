//! The middleware of a route that honours `Idempotency-Key` (see the
//! module above for the rules).

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, OriginalUri, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::RequestExt;
use uuid::Uuid;

use super::{
    caller_scope, decide, expired_before, in_progress_message, keeps, mismatch_message, parse_key,
    replayed_headers, request_hash, Decision, HEADER, MAX_STORED_BODY, REPLAYED_HEADER,
};
use crate::api::ApiError;
use crate::auth::Caller;
use crate::store::{Begun, IdempotencyBegin, IdempotencyKey, Store, StoredAnswer};

/// What the middleware needs: the store the keys are kept in.
#[derive(Clone, Debug)]
pub struct Idempotency {
    store: Store,
}

impl Idempotency {
    pub fn new(store: Store) -> Self {
        Idempotency { store }
    }
}

/// `route` (one method's handler) honouring `Idempotency-Key`: how a route
/// opts in, e.g. `get(list).merge(opt_in(post(create), &idempotency))`.
pub fn opt_in<S>(route: MethodRouter<S>, idempotency: &Idempotency) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    route.layer(axum::middleware::from_fn_with_state(
        idempotency.clone(),
        honour_key,
    ))
}

/// The middleware: without the header, the request goes on untouched.
pub async fn honour_key(
    State(idempotency): State<Idempotency>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let Some(value) = request.headers().get(HEADER) else {
        return next.run(request).await;
    };
    let key = match parse_key(value.as_bytes()) {
        Ok(key) => key.to_string(),
        Err(problem) => return ApiError::bad_request(problem).into_response(),
    };
    let route = matched
        .as_ref()
        .map_or_else(|| request.uri().path(), MatchedPath::as_str)
        .to_string();
    // The URI as sent: inside `/api/v1`'s nested router, `uri()` lacks the prefix.
    let uri = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri(), |original| &original.0);
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| uri.path(), |p| p.as_str())
        .to_string();
    let caller = caller_scope(request.extensions().get::<Caller>());
    let method = request.method().as_str().to_string();
    // The body is read whole (within the route's body limit) to be hashed,
    // then handed on as it was.
    let (parts, body) = request.with_limited_body().into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => return body_error(&e).into_response(),
    };
    let begin = IdempotencyBegin {
        key: IdempotencyKey {
            caller,
            method,
            route,
            key,
        },
        claim: Uuid::new_v4(),
        request_hash: request_hash(&path_and_query, &bytes),
        now: chrono::Utc::now(),
        expired_before: expired_before(chrono::Utc::now()),
    };
    let store = idempotency.store;
    match store.idempotency_begin(&begin).await {
        Ok(Begun::Started) => {}
        Ok(Begun::Existing(stored)) => {
            return match decide(stored, &begin.request_hash) {
                Decision::Replay(answer) => replay(answer),
                Decision::Mismatch { first_at } => {
                    ApiError::Unprocessable(mismatch_message(first_at)).into_response()
                }
                Decision::InProgress { since } => {
                    ApiError::Conflict(in_progress_message(since)).into_response()
                }
            };
        }
        Err(e) => return ApiError::from(e).into_response(),
    }
    let request = Request::from_parts(parts, Body::from(bytes));
    // In a task of its own: a client that disconnects must not leave the
    // key pending after its request was done.
    let task = tokio::spawn(async move {
        let response = next.run(request).await;
        settle(&store, &begin, response).await
    });
    match task.await {
        Ok(response) => response,
        Err(e) => {
            ApiError::Internal(format!("an idempotent request's task failed: {e}")).into_response()
        }
    }
}

/// Keeps the answer under the key (or releases the key), and returns it.
async fn settle(store: &Store, begin: &IdempotencyBegin, response: Response) -> Response {
    let status = response.status().as_u16();
    if !keeps(status) {
        release(store, begin, "its request answered a server error").await;
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => {
            release(store, begin, "its answer could not be read").await;
            return ApiError::Internal(format!("reading an answer to keep: {e}")).into_response();
        }
    };
    if bytes.len() > MAX_STORED_BODY {
        release(store, begin, "its answer is too large to keep").await;
    } else {
        let answer = StoredAnswer {
            status,
            headers: replayed_headers(&parts.headers),
            body: bytes.to_vec(),
        };
        match store
            .idempotency_complete(&begin.key, begin.claim, &answer, chrono::Utc::now())
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                key = %begin.key.key,
                "an idempotency key was no longer this request's when its answer was kept"
            ),
            Err(e) => tracing::warn!(
                key = %begin.key.key, error = %e,
                "could not keep an idempotent request's answer; retries get 409 until the key expires"
            ),
        }
    }
    Response::from_parts(parts, Body::from(bytes))
}

async fn release(store: &Store, begin: &IdempotencyBegin, why: &str) {
    if let Err(e) = store.idempotency_release(&begin.key, begin.claim).await {
        tracing::warn!(
            key = %begin.key.key, error = %e,
            "could not release an idempotency key ({why}); retries get 409 until it expires"
        );
    }
}

/// The stored answer, again.
fn replay(answer: StoredAnswer) -> Response {
    let mut response = Response::new(Body::from(Bytes::from(answer.body)));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// A body that could not be read, as `JsonBody` answers it.
fn body_error(e: &axum::Error) -> ApiError {
    let text = format!("{e}");
    let too_large = std::iter::successors(
        Some(e as &dyn std::error::Error),
        |e: &&dyn std::error::Error| e.source(),
    )
    .any(|e| e.to_string().contains("length limit"));
    if too_large || text.contains("length limit") {
        ApiError::PayloadTooLarge(
            "the request body is larger than the limit (--max-body-bytes)".into(),
        )
    } else {
        ApiError::bad_request(format!("could not read the request body: {text}"))
    }
}
