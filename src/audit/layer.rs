//! The middleware that records each mutating call once it is answered.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

use super::{targets, AuditNote};
use crate::auth::Caller;
use crate::store::{AuditEntry, AuditMethod, Store};

/// A route layer outside the token check (so that refused calls are seen
/// too): the token check leaves the verified [`Caller`] in the response's
/// extensions, a handler its [`AuditNote`].
pub async fn record_call(
    State(store): State<Store>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let Some(method) = AuditMethod::of(request.method()) else {
        return next.run(request).await;
    };
    let path = request.uri().path().to_string();
    let route = matched.as_ref().map_or(path.as_str(), MatchedPath::as_str);
    if !route.starts_with("/api/v1/") {
        return next.run(request).await;
    }
    let (path_job, path_run) = targets(method, route, &path);
    let response = next.run(request).await;
    let caller = response.extensions().get::<Caller>();
    let note = response
        .extensions()
        .get::<AuditNote>()
        .cloned()
        .unwrap_or_default();
    let entry = AuditEntry {
        id: Uuid::now_v7(),
        at: chrono::Utc::now(),
        actor: caller.map_or_else(|| "anonymous".to_string(), |c| c.name.clone()),
        token_id: caller.and_then(|c| c.token_id),
        method,
        path,
        job_id: note.job_id.or(path_job),
        run_id: note.run_id.or(path_run),
        status: response.status().as_u16(),
        reason: note.reason,
    };
    // Its own task: the entry is written even if the client goes away.
    let written = tokio::spawn(async move {
        if let Err(e) = store.audit_insert(&entry).await {
            tracing::warn!(
                error = %e, method = %entry.method, path = %entry.path,
                status = entry.status, "could not write an audit log entry"
            );
        }
    });
    let _ = written.await;
    response
}
