//! The flags of `jobsd serve` that decide who may call the API.

use clap::{Args, ValueEnum};

/// When requests need a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum AuthMode {
    /// On once a token exists (created by `jobsd token create`, the API or
    /// another replica; revoked and expired ones count, so auth never turns
    /// itself off again) or `JOBSD_ADMIN_TOKEN` is set; off before.
    #[default]
    Auto,
    /// Always: with no token yet, only the open routes answer.
    On,
    /// Never (a non-loopback `--bind` then needs `--insecure-no-auth`).
    Off,
}

/// Authentication and browser access, flattened into `jobsd serve`.
#[derive(Clone, Args)]
pub struct AuthConfig {
    /// When requests need an API token: `auto` (once a token exists or
    /// JOBSD_ADMIN_TOKEN is set), `on`, or `off`.
    #[arg(long = "auth", env = "JOBSD_AUTH", value_enum, default_value = "auto")]
    pub mode: AuthMode,

    /// A bootstrap admin token, accepted as given (at least 16 characters)
    /// and never stored: for compose files and Kubernetes secrets, to
    /// create the real tokens with. Prefer the environment variable: a
    /// flag's value shows in the process list.
    #[arg(long, env = "JOBSD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Serve on a non-loopback address with auth off (refused otherwise).
    /// For a proxy in front that authenticates; logged at every start.
    #[arg(long, env = "JOBSD_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Serve `/metrics` without a token even when auth is on (it needs a
    /// read token then, by default): for a scraper that cannot send one,
    /// on a network where the metrics may be seen by anyone.
    #[arg(long, env = "JOBSD_METRICS_PUBLIC")]
    pub metrics_public: bool,

    /// What `/metrics` does by default now (a read token when auth is on);
    /// accepted so that configurations written before it keep working.
    #[arg(
        long,
        env = "JOBSD_METRICS_AUTH",
        hide = true,
        conflicts_with = "metrics_public"
    )]
    pub metrics_auth: bool,

    /// Origins that browsers may call the API from (CORS), comma-separated,
    /// e.g. `https://ops.example.com`; `*` for any. None by default: no
    /// CORS headers are sent.
    #[arg(long, env = "JOBSD_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("metrics_public", &self.metrics_public)
            .field("cors_origin", &self.cors_origin)
            .finish()
    }
}
