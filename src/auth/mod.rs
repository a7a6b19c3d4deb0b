//! API tokens with scopes (SPEC §12): who may call the API.
//!
//! - [`token`]: a token is `jobsd_<public id>_<secret>`, random, stored
//!   only as its SHA-256; lists show its prefix, never the secret or hash.
//! - [`scope`]: `read` < `write` < `admin`, and the pure rule of which
//!   scope each method and route needs.
//! - [`verify`]: [`Auth`], whether auth is on (`--auth auto|on|off`; auto
//!   turns on once a token exists or `JOBSD_ADMIN_TOKEN` is set) and who a
//!   token is, answered from a short-lived cache so that a revocation is
//!   seen by every replica within seconds; and the refusal to serve a
//!   non-loopback address with auth off.
//! - [`middleware`]: 401 for a missing or unacceptable token, 403 for too
//!   small a scope, before any handler runs.
//! - [`manage`]: create, list and revoke, shared by `jobsd token` ([`cli`])
//!   and `/api/v1/tokens`.
//! - [`cors`]: browser access, off unless `--cors-origin` names origins.
//!
//! There is no TLS in the process: put jobsd behind a proxy that
//! terminates TLS, or tokens cross the network in the clear.

pub mod cli;
pub mod config;
pub mod cors;
pub mod manage;
pub mod middleware;
pub mod scope;
pub mod token;
pub mod verify;

pub use config::{AuthConfig, AuthMode};
pub use manage::{issue, revoke, Issued, TokenError, TokenState};
pub use middleware::require_token;
pub use scope::Scope;
pub use verify::{Auth, Caller};
