//! Scopes, and which scope each request needs: pure rules, no I/O.
//!
//! - `read` < `write` < `admin`: a token allows what its scope and every
//!   lower one allow.
//! - `read`: every `GET` (and `HEAD`) of the API, except the admin
//!   resources below.
//! - `write`: the mutations of jobs, runs and batches.
//! - `admin`: tokens, webhooks and the audit log (any method, reads
//!   included: they hold who may do what), service state changes, and run
//!   state overrides.
//! - A mutation no rule names needs `admin`: a route added without a rule
//!   here fails closed, never open.
//! - Callback token instead of an API token: `POST /api/v1/runs/{id}/progress`,
//!   `/complete` and `/heartbeat`, which the service a callback run called
//!   reports through; they check the run's callback token themselves
//!   (`crate::api::callbacks`), so they are open here.
//! - Stream credential instead: `GET /api/v1/events/stream` takes a token
//!   of `read` scope or a stream ticket (which a browser's `EventSource`
//!   can send), and checks either itself; `POST /api/v1/events/tickets`,
//!   which makes tickets, needs `read`.
//! - Open (no token at all): the probes, the OpenAPI document, Swagger UI
//!   (so that its Authorize button can be reached from a browser) and `/`.
//! - `/metrics` needs `read`, unless `--metrics-public` opens it.

use std::fmt;
use std::str::FromStr;

use axum::http::Method;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a token may do. Ordered: `Read < Write < Admin`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every GET.
    Read,
    /// Plus the mutations of jobs, runs and batches.
    Write,
    /// Plus tokens, webhooks, service state, run state overrides and the audit log.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token of this scope may make a request that needs `required`.
    pub fn allows(self, required: Scope) -> bool {
        self >= required
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a scope; use read, write or admin"))
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Served to anyone, auth on or off.
    Open,
    /// A token of at least this scope, when auth is on.
    Needs(Scope),
}

/// Resources whose every route, reads included, needs `admin`.
const ADMIN_RESOURCES: [&str; 3] = ["tokens", "webhooks", "audit"];

/// The access `method` on `route` needs. `route` is the route's template as
/// the router matched it (`/api/v1/jobs/{id}`), so a request's path can not
/// dress up as another route; only the shape of the template counts, not
/// the names of its parameters.
pub fn required_access(method: &Method, route: &str, metrics_public: bool) -> Access {
    match route {
        "/" | "/api/v1/liveness" | "/api/v1/readiness" | "/api/v1/openapi.json" => {
            return Access::Open
        }
        "/metrics" | "/api/v1/metrics" => {
            return if metrics_public {
                Access::Open
            } else {
                Access::Needs(Scope::Read)
            };
        }
        _ if route == "/api/v1/ui" || route.starts_with("/api/v1/ui/") => return Access::Open,
        _ => {}
    }
    let segments: Vec<&str> = route
        .strip_prefix("/api/v1")
        .unwrap_or(route)
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect();
    let resource = segments.first().copied().unwrap_or_default();
    if ADMIN_RESOURCES.contains(&resource) {
        return Access::Needs(Scope::Admin);
    }
    match (method, segments.as_slice()) {
        // The event stream takes a token or a stream ticket, which it
        // checks itself (`crate::api` events): a browser cannot send one.
        (&Method::GET, ["events", "stream"]) => return Access::Open,
        // Making a ticket reads, as the stream it opens does.
        (&Method::POST, ["events", "tickets"]) => return Access::Needs(Scope::Read),
        _ => {}
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Access::Needs(Scope::Read);
    }
    match segments.as_slice() {
        // A callback run's service, with the run's callback token.
        ["runs", "{}", "progress" | "complete" | "heartbeat"] if *method == Method::POST => {
            Access::Open
        }
        // An operator's override of a stuck run's state.
        ["runs", "{}", "state"] => Access::Needs(Scope::Admin),
        ["jobs", ..] | ["runs", ..] | ["batches", ..] => Access::Needs(Scope::Write),
        // Service state, and any mutation no rule names.
        _ => Access::Needs(Scope::Admin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_ordered_and_each_allows_the_lower_ones() {
        use Scope::*;
        let allowed: Vec<(Scope, Scope)> = Scope::ALL
            .into_iter()
            .flat_map(|held| Scope::ALL.into_iter().map(move |needed| (held, needed)))
            .filter(|(held, needed)| held.allows(*needed))
            .collect();
        assert_eq!(
            allowed,
            [
                (Read, Read),
                (Write, Read),
                (Write, Write),
                (Admin, Read),
                (Admin, Write),
                (Admin, Admin)
            ]
        );
    }

    #[test]
    fn scope_names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
            assert_eq!(
                serde_json::to_value(scope).unwrap(),
                serde_json::json!(scope.as_str())
            );
        }
        assert_eq!(
            "root".parse::<Scope>().unwrap_err(),
            "\"root\" is not a scope; use read, write or admin"
        );
    }

    fn needs(method: Method, route: &str) -> Access {
        required_access(&method, route, false)
    }

    #[test]
    fn the_event_stream_checks_its_own_credential_and_tickets_need_read() {
        assert_eq!(needs(Method::GET, "/api/v1/events/stream"), Access::Open);
        assert_eq!(
            needs(Method::POST, "/api/v1/events/tickets"),
            Access::Needs(Scope::Read)
        );
        assert_eq!(
            needs(Method::GET, "/api/v1/events"),
            Access::Needs(Scope::Read)
        );
        // Only GET of the stream is open; any other method fails closed.
        assert_eq!(
            needs(Method::POST, "/api/v1/events/stream"),
            Access::Needs(Scope::Admin)
        );
    }

    #[test]
    fn every_get_needs_read_except_the_admin_resources() {
        for route in [
            "/api/v1/jobs",
            "/api/v1/jobs/{id}",
            "/api/v1/jobs/{id}/runs",
            "/api/v1/jobs/{id}/runs/latest",
            "/api/v1/runs",
            "/api/v1/runs/{run_id}",
            "/api/v1/handlers",
            "/api/v1/instances",
            "/api/v1/locks",
            "/api/v1/service/state",
            "/api/v1/batches/{id}/output",
            "/api/v1/batches/{id}/files/{name}",
        ] {
            assert_eq!(
                needs(Method::GET, route),
                Access::Needs(Scope::Read),
                "{route}"
            );
            assert_eq!(
                needs(Method::HEAD, route),
                Access::Needs(Scope::Read),
                "{route}"
            );
        }
        for route in [
            "/api/v1/tokens",
            "/api/v1/tokens/{id}",
            "/api/v1/webhooks",
            "/api/v1/audit",
        ] {
            assert_eq!(
                needs(Method::GET, route),
                Access::Needs(Scope::Admin),
                "{route}"
            );
        }
    }

    #[test]
    fn mutations_of_jobs_runs_and_batches_need_write() {
        for (method, route) in [
            (Method::POST, "/api/v1/jobs"),
            (Method::POST, "/api/v1/jobs/bulk"),
            (Method::POST, "/api/v1/jobs/{id}"),
            (Method::PUT, "/api/v1/jobs/{id}"),
            (Method::PATCH, "/api/v1/jobs/{id}"),
            (Method::DELETE, "/api/v1/jobs/{id}"),
            (Method::DELETE, "/api/v1/jobs/clean-failed"),
            (Method::POST, "/api/v1/jobs/{id}/run"),
            (Method::POST, "/api/v1/runs/{run_id}/cancel"),
            (Method::POST, "/api/v1/batches"),
            (Method::POST, "/api/v1/batches/{id}/rows"),
            (Method::POST, "/api/v1/batches/{id}/abort"),
        ] {
            assert_eq!(
                needs(method.clone(), route),
                Access::Needs(Scope::Write),
                "{method} {route}"
            );
        }
    }

    #[test]
    fn the_callback_routes_take_a_callback_token_instead() {
        for route in [
            "/api/v1/runs/{run_id}/progress",
            "/api/v1/runs/{run_id}/complete",
            "/api/v1/runs/{run_id}/heartbeat",
        ] {
            assert_eq!(needs(Method::POST, route), Access::Open, "{route}");
            // Only those three POSTs: anything else keeps its rule.
            assert_eq!(
                needs(Method::PUT, route),
                Access::Needs(Scope::Write),
                "{route}"
            );
        }
        assert_eq!(
            needs(Method::POST, "/api/v1/runs/{run_id}/completed"),
            Access::Needs(Scope::Write)
        );
    }

    #[test]
    fn tokens_webhooks_service_state_overrides_and_unknown_mutations_need_admin() {
        for (method, route) in [
            (Method::POST, "/api/v1/tokens"),
            (Method::DELETE, "/api/v1/tokens/{id}"),
            (Method::POST, "/api/v1/webhooks"),
            (Method::DELETE, "/api/v1/webhooks/{id}"),
            (Method::PUT, "/api/v1/service/state"),
            (Method::POST, "/api/v1/service/state"),
            (Method::PUT, "/api/v1/runs/{run_id}/state"),
            // The parameter's name does not matter, only the shape.
            (Method::PUT, "/api/v1/runs/{id}/state"),
            // Nothing names these: the widest scope, so nothing new is open.
            (Method::POST, "/api/v1/instances"),
            (Method::DELETE, "/api/v1/locks"),
            (Method::POST, "/api/v1/something-new"),
        ] {
            assert_eq!(
                needs(method.clone(), route),
                Access::Needs(Scope::Admin),
                "{method} {route}"
            );
        }
    }

    #[test]
    fn probes_documents_and_the_ui_are_open_and_metrics_as_configured() {
        for route in [
            "/",
            "/api/v1/liveness",
            "/api/v1/readiness",
            "/api/v1/openapi.json",
            "/api/v1/ui",
            "/api/v1/ui/",
            "/api/v1/ui/{*rest}",
        ] {
            assert_eq!(needs(Method::GET, route), Access::Open, "{route}");
        }
        for route in ["/metrics", "/api/v1/metrics"] {
            assert_eq!(
                required_access(&Method::GET, route, false),
                Access::Needs(Scope::Read)
            );
            assert_eq!(required_access(&Method::GET, route, true), Access::Open);
        }
        // Only the exact probe routes: a look-alike is not open.
        assert_eq!(
            needs(Method::GET, "/api/v1/liveness/x"),
            Access::Needs(Scope::Read)
        );
        assert_eq!(
            needs(Method::POST, "/api/v1/readiness"),
            Access::Open,
            "a probe is open whatever the method (the router answers 405)"
        );
    }
}
