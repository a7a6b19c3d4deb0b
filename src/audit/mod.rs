//! The audit log (issue #12 §7): every mutating call under `/api/v1`
//! (POST, PUT, PATCH, DELETE), answered or refused (401 and 403 too), is
//! recorded with who made it (the token's name, or `anonymous`), the
//! method, the path, the job or run it was about, the status and when.
//! Read it at `GET /api/v1/audit` (admin scope); pruned by `--retention`.
//!
//! - [`layer`]: the middleware, outside the token check, that records a
//!   call once it is answered. Writing the entry never fails the call (a
//!   failure is logged).
//! - The job and run come from the route's path parameters ([`targets`]),
//!   or from an [`AuditNote`] a handler puts in its response (the id of a
//!   job it created, the run it queued, an override's reason).

mod layer;

use uuid::Uuid;

use crate::store::AuditMethod;

pub use layer::record_call;

/// What a handler adds to its call's entry, as a response extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditNote {
    pub job_id: Option<String>,
    pub run_id: Option<Uuid>,
    /// An operator's reason (run state overrides).
    pub reason: Option<String>,
}

/// The parameters of `route` (a template, `/api/v1/jobs/{id}`) in `path`,
/// by position; `None` when the path does not have the template's shape.
/// Values are percent-decoded.
pub fn path_params(route: &str, path: &str) -> Option<Vec<(String, String)>> {
    let template: Vec<&str> = route.split('/').collect();
    let actual: Vec<&str> = path.split('/').collect();
    if template.len() != actual.len() {
        return None;
    }
    let mut params = Vec::new();
    for (t, a) in template.iter().zip(&actual) {
        if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            params.push((name.to_string(), percent_decode(a)));
        } else if t != a {
            return None;
        }
    }
    Some(params)
}

/// `%XX` sequences decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(byte) = s
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The job and run a call on `route` (its template) at `path` is about,
/// as its path says: `/jobs/{id}...` names a job (except `POST
/// /jobs/{handler}`, where it is a handler), `/runs/{run_id}...` a run.
pub fn targets(method: AuditMethod, route: &str, path: &str) -> (Option<String>, Option<Uuid>) {
    let Some(params) = path_params(route, path) else {
        return (None, None);
    };
    let template: Vec<&str> = route
        .strip_prefix("/api/v1/")
        .unwrap_or(route)
        .split('/')
        .collect();
    let first_param = params.into_iter().next().map(|(_, value)| value);
    match template.as_slice() {
        ["jobs", "{id}"] if method == AuditMethod::Post => (None, None),
        ["jobs", p, ..] if p.starts_with('{') => (first_param, None),
        ["runs", p, ..] if p.starts_with('{') => (None, first_param.and_then(|v| v.parse().ok())),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_read_by_position_and_decoded() {
        assert_eq!(
            path_params("/api/v1/jobs/{id}/run", "/api/v1/jobs/a%20b/run"),
            Some(vec![("id".into(), "a b".into())])
        );
        assert_eq!(path_params("/api/v1/jobs/{id}", "/api/v1/jobs/a/run"), None);
        assert_eq!(path_params("/api/v1/jobs", "/api/v1/other"), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn the_path_names_the_job_or_run() {
        use AuditMethod::*;
        let run = Uuid::now_v7();
        assert_eq!(
            targets(Patch, "/api/v1/jobs/{id}", "/api/v1/jobs/nightly"),
            (Some("nightly".into()), None)
        );
        assert_eq!(
            targets(Delete, "/api/v1/jobs/{id}", "/api/v1/jobs/nightly"),
            (Some("nightly".into()), None)
        );
        assert_eq!(
            targets(Post, "/api/v1/jobs/{id}/run", "/api/v1/jobs/nightly/run"),
            (Some("nightly".into()), None)
        );
        // `POST /jobs/{handler}` creates a job; its id comes from the answer.
        assert_eq!(
            targets(Post, "/api/v1/jobs/{id}", "/api/v1/jobs/log"),
            (None, None)
        );
        assert_eq!(
            targets(
                Put,
                "/api/v1/runs/{run_id}/state",
                &format!("/api/v1/runs/{run}/state")
            ),
            (None, Some(run))
        );
        assert_eq!(
            targets(
                Post,
                "/api/v1/runs/{run_id}/cancel",
                "/api/v1/runs/nope/cancel"
            ),
            (None, None)
        );
        assert_eq!(
            targets(
                Delete,
                "/api/v1/jobs/clean-failed",
                "/api/v1/jobs/clean-failed"
            ),
            (None, None)
        );
        assert_eq!(
            targets(Delete, "/api/v1/tokens/{id}", "/api/v1/tokens/x"),
            (None, None)
        );
    }
}
