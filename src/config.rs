//! Settings from flags, with environment fallbacks (`jobsd --help` lists them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::retention::Retention;
use crate::store::Synchronous;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses a duration flag with the same grammar as job fields (`30s`, `PT1M`, `5`).
pub(crate) fn parse_flag_duration(s: &str) -> Result<Duration, String> {
    crate::schedule::parse_duration(s)
        .map_err(|e| e.to_string())?
        .to_std()
        .map_err(|_| "must not be negative".to_string())
}

/// Parses a retention flag: a duration, `0` meaning "keep everything".
pub(crate) fn parse_retention(s: &str) -> Result<Retention, String> {
    parse_flag_duration(s).map(Retention::from_duration)
}

/// Settings shared by every subcommand that talks to the database.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Where jobs are kept. `sqlite://PATH` (the default, `./jobsd.db`) is
    /// the embedded store: one SQLite file, created when missing, for one
    /// replica. `postgres://user:password@host:5432/jobsd` selects
    /// PostgreSQL (the database is created when it does not exist), for any
    /// number of replicas.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://./jobsd.db")]
    pub database_url: String,

    /// Embedded store only: `normal` syncs at WAL checkpoints (a killed
    /// process loses nothing acknowledged; a power loss or OS crash may lose
    /// the last transactions); `full` syncs every commit (survives a power
    /// loss, at a cost per write). Ignored on PostgreSQL.
    #[arg(
        long,
        env = "JOBSD_SQLITE_SYNCHRONOUS",
        value_enum,
        default_value = "normal"
    )]
    pub sqlite_synchronous: Synchronous,

    /// Connections in the pool.
    #[arg(long, env = "JOBSD_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// How long to keep trying to reach the database at start-up.
    #[arg(long, env = "JOBSD_DB_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_flag_duration)]
    pub db_connect_timeout: Duration,

    /// For measuring only: this process's writes record no events
    /// (PostgreSQL only; `jobsd bench` compares drains with and without).
    #[arg(long)]
    pub no_events: bool,
}

/// Settings of `jobsd serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Address the HTTP API listens on.
    #[arg(long, env = "JOBSD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// API tokens, the refusal to serve a non-loopback `bind` without
    /// them, and CORS (`src/auth/config.rs`).
    #[command(flatten)]
    pub auth: crate::auth::AuthConfig,

    /// Directory of default-job YAML files.
    #[arg(long, env = "JOBSD_DEFAULT_JOBS_DIR", default_value = "./default_jobs")]
    pub default_jobs_dir: PathBuf,

    /// How often the default-jobs directory is rescanned besides file-change
    /// notifications (0: never; the watcher alone).
    #[arg(long, env = "JOBSD_DEFAULT_JOBS_RESCAN", default_value = "10s", value_parser = parse_flag_duration)]
    pub default_jobs_rescan: Duration,

    /// This replica's name (default: host name plus a short random id).
    #[arg(long, env = "JOBSD_INSTANCE")]
    pub instance: Option<String>,

    /// Runs executed at once by this replica. Handlers are async, so idle
    /// slots cost nothing (the default is Temporal's for activities); lower
    /// it when handlers are CPU- or process-heavy, or when what they call
    /// cannot take that many at once.
    #[arg(long, env = "JOBSD_WORKERS", default_value_t = 1000)]
    pub workers: usize,

    /// Log format.
    #[arg(long, env = "JOBSD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "JOBSD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest NDJSON body of a batch submit or append
    /// (`POST /api/v1/batches`, `.../rows`), in bytes. Streamed in, never
    /// held whole; each row keeps the kwargs limit.
    #[arg(long, env = "JOBSD_MAX_BATCH_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub max_batch_bytes: u64,

    /// Allow the `command` handler (runs programs on this host).
    #[arg(long, env = "JOBSD_ENABLE_COMMAND_HANDLER")]
    pub enable_command_handler: bool,

    /// Longest sleep of the scheduler and workers between database checks
    /// when no notification arrives.
    #[arg(long, env = "JOBSD_POLL_INTERVAL", default_value = "5s", value_parser = parse_flag_duration)]
    pub poll_interval: Duration,

    /// How long a running run's lease lasts without a heartbeat before
    /// another replica takes it over.
    #[arg(long, env = "JOBSD_LEASE", default_value = "30s", value_parser = parse_flag_duration)]
    pub lease: Duration,

    /// How long a cancelled or timed-out handler gets to stop by itself
    /// before it is abandoned.
    #[arg(long, env = "JOBSD_CANCEL_GRACE", default_value = "5s", value_parser = parse_flag_duration)]
    pub cancel_grace: Duration,

    /// On SIGTERM/SIGINT, how long running runs may take to finish before
    /// they are handed back to the queue.
    #[arg(long, env = "JOBSD_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_flag_duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub guards: GuardConfig,

    #[command(flatten)]
    pub history: HistoryConfig,

    #[command(flatten)]
    pub webhooks: crate::webhooks::config::WebhookConfig,

    #[command(flatten)]
    pub alerts: crate::alerts::config::AlertConfig,
}

/// How long history is kept (README "Bounded history").
#[derive(Debug, Clone, Args)]
pub struct HistoryConfig {
    /// How long finished runs are kept after they end (`0`: for ever);
    /// completed one-shot jobs go with their last run. A job's `keep_runs`
    /// replaces this for its runs.
    #[arg(long, env = "JOBSD_RETENTION", default_value = "14d", value_parser = parse_retention)]
    pub retention: Retention,

    /// How long failure records are kept (default, or `0`: until
    /// `DELETE /api/v1/jobs/clean-failed` removes them).
    #[arg(long, env = "JOBSD_FAILURE_RETENTION", value_parser = parse_retention)]
    pub failure_retention: Option<Retention>,

    /// How often each replica prunes what the retention no longer keeps.
    #[arg(long, env = "JOBSD_RETENTION_INTERVAL", default_value = "1m", value_parser = parse_flag_duration)]
    pub retention_interval: Duration,
}

impl ServeConfig {
    /// The replica's name: the configured one, or host name plus a short id.
    pub fn instance_name(&self) -> String {
        self.instance.clone().unwrap_or_else(|| {
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            let id = uuid::Uuid::new_v4().simple().to_string();
            format!("{host}-{}", &id[..6])
        })
    }
}

/// Settings of `jobsd validate`.
#[derive(Debug, Clone, Args)]
pub struct ValidateConfig {
    /// The directory to check (default: the default-jobs directory).
    pub dir: Option<PathBuf>,

    /// Directory of default-job YAML files.
    #[arg(long, env = "JOBSD_DEFAULT_JOBS_DIR", default_value = "./default_jobs")]
    pub default_jobs_dir: PathBuf,

    /// Check `command` jobs as a service with the command handler enabled would.
    #[arg(long, env = "JOBSD_ENABLE_COMMAND_HANDLER")]
    pub enable_command_handler: bool,

    /// The service's guards and limits, to check files as it would.
    #[command(flatten)]
    pub guards: GuardConfig,
}

/// What handlers may reach and how large definitions may be (`serve` and
/// `validate`; README "Guards"). List flags take one entry per use or
/// several separated by commas.
#[derive(Debug, Clone, Args)]
pub struct GuardConfig {
    /// Addresses the `http` handler must not connect to, besides the
    /// default deny list (link-local 169.254.0.0/16 and fe80::/10, where
    /// clouds serve metadata; fd00:ec2::254; 0.0.0.0/8 and ::): CIDR blocks
    /// (10.0.0.0/8), addresses, or host names (*.corp for subdomains).
    #[arg(long, env = "JOBSD_HTTP_DENY", value_delimiter = ',')]
    pub http_deny: Vec<String>,

    /// When set, the only hosts the `http` handler may reach: CIDR blocks,
    /// addresses or host names. A block inside a default-denied one (e.g.
    /// 169.254.169.254) lifts that default for its addresses.
    #[arg(long, env = "JOBSD_HTTP_ALLOW", value_delimiter = ',')]
    pub http_allow: Vec<String>,

    /// Proxy for every `http` request (http://host:port). HTTP_PROXY,
    /// HTTPS_PROXY and ALL_PROXY are ignored: a proxy resolves names itself,
    /// past the address checks.
    #[arg(long, env = "JOBSD_HTTP_PROXY")]
    pub http_proxy: Option<String>,

    /// When set, the only programs the `command` handler may run (it must
    /// still be enabled): names looked up in PATH or paths, compared by
    /// canonical absolute path.
    #[arg(
        long,
        env = "JOBSD_COMMAND_ALLOW",
        value_delimiter = ',',
        value_name = "PROGRAM"
    )]
    pub command_allow: Vec<String>,

    /// Largest kwargs of a job (its JSON), in bytes.
    #[arg(long, env = "JOBSD_MAX_KWARGS_BYTES", default_value_t = 64 * 1024)]
    pub max_kwargs_bytes: usize,

    /// Largest default-job YAML file, in bytes.
    #[arg(long, env = "JOBSD_MAX_DEFAULT_JOB_FILE_BYTES", default_value_t = 1024 * 1024)]
    pub max_default_job_file_bytes: u64,

    /// Remote completion (`--public-url`, `--callback-timeout`): here so
    /// that `validate` judges callback jobs as `serve` would.
    #[command(flatten)]
    pub callbacks: crate::callbacks::CallbackArgs,
}
