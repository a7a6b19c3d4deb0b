//! The flags of `jobsd bench`, and how they read in the report.

use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::json;

use crate::config::{parse_flag_duration, DatabaseConfig};

/// Settings of `jobsd bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server to benchmark against (the database named in the URL is not
    /// used: each scenario makes and drops its own `jobsd_bench_*` database),
    /// or `sqlite://DIR/name.db` for the embedded store (each scenario on a
    /// new file `DIR/jobsd_bench_*.db`, removed afterwards; `name.db` is
    /// not opened).
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// drain on the embedded store: run the same drain on this PostgreSQL
    /// server right after, and report the embedded store's figure ÷ the
    /// server's (target ≥ 0.5×).
    #[arg(long)]
    pub baseline_database_url: Option<String>,

    /// Scenarios to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub scenario: Vec<Scenario>,

    /// drain: one-shot jobs created, all due at once.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,

    /// batch: rows of the one batch (no-op handler), submitted as NDJSON.
    #[arg(long, default_value_t = 100_000)]
    pub batch_rows: usize,

    /// drain: rounds on one replica, one after another, each with `--jobs`
    /// new jobs; the figures are the median round's (every round is listed).
    #[arg(long, default_value_t = 3)]
    pub drain_rounds: usize,

    /// drain: scrape the replica's `GET /metrics` this many times a second
    /// while it drains (0: no scraper), to measure what scraping costs.
    #[arg(long, default_value_t = 0)]
    pub scrape_metrics_per_second: u32,

    /// How the scenarios create their jobs: `POST /api/v1/jobs/bulk`, or
    /// concurrent single `POST /api/v1/jobs` (`--concurrency` in flight).
    #[arg(long, value_enum, default_value = "bulk")]
    pub create: CreateMode,

    /// Jobs per `POST /api/v1/jobs/bulk` request (at most 10,000).
    #[arg(long, default_value_t = 1000)]
    pub bulk_size: usize,

    /// lag: jobs due 20 ms apart (50 jobs/s).
    #[arg(long, default_value_t = 500)]
    pub lag_jobs_50: usize,

    /// lag: jobs due 2 ms apart (500 jobs/s).
    #[arg(long, default_value_t = 2000)]
    pub lag_jobs_500: usize,

    /// burst: one-shot jobs due at one instant, fired by the scheduler (on a
    /// fresh database, then again after a quiet period on another one).
    #[arg(long, default_value_t = 10_000)]
    pub burst_jobs: usize,

    /// burst: one-shot jobs run during the quiet period, due at instants
    /// spread evenly over `--burst-quiet-duration`.
    #[arg(long, default_value_t = 300)]
    pub burst_quiet_jobs: usize,

    /// burst: length of the quiet period.
    #[arg(long, default_value = "6s", value_parser = parse_flag_duration)]
    pub burst_quiet_duration: Duration,

    /// steady: periodic jobs, their phases spread evenly over the interval.
    #[arg(long, default_value_t = 5000)]
    pub steady_jobs: usize,

    /// steady: the jobs' interval (whole milliseconds).
    #[arg(long, default_value = "1s", value_parser = parse_flag_duration)]
    pub steady_interval: Duration,

    /// steady: how long the jobs fire (the measured window).
    #[arg(long, default_value = "30s", value_parser = parse_flag_duration)]
    pub steady_duration: Duration,

    /// lag, burst, steady: time from the start of creating the jobs to the
    /// first due time (default: 2 s plus 0.3 ms per job created in bulk,
    /// 1 ms per job created singly).
    #[arg(long, value_parser = parse_flag_duration)]
    pub lead: Option<Duration>,

    /// idle: jobs held, due in a year.
    #[arg(long, default_value_t = 100_000)]
    pub idle_jobs: usize,

    /// idle: how long CPU time is sampled.
    #[arg(long, default_value = "30s", value_parser = parse_flag_duration)]
    pub idle_duration: Duration,

    /// idle: wait after the restart before sampling.
    #[arg(long, default_value = "5s", value_parser = parse_flag_duration)]
    pub idle_settle: Duration,

    /// api: measured load per endpoint (after a short warm-up).
    #[arg(long, default_value = "10s", value_parser = parse_flag_duration)]
    pub duration: Duration,

    /// api: concurrent connections; also single creations in flight with
    /// `--create single`.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,

    /// failover: the replicas' `--lease`.
    #[arg(long, default_value = "2s", value_parser = parse_flag_duration)]
    pub lease: Duration,

    /// `--workers` of each replica (default: the service's default).
    #[arg(long)]
    pub workers: Option<usize>,

    /// An extra flag for every `jobsd serve` child (repeatable), e.g.
    /// `--serve-arg=--poll-interval=1s`.
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,

    /// The `jobsd` executable the replicas run (default: this one), to
    /// measure another build with this benchmark, back to back in one hour.
    #[arg(long)]
    pub serve_binary: Option<std::path::PathBuf>,

    /// Print the report as JSON instead of a markdown table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CreateMode {
    Bulk,
    Single,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    All,
    Drain,
    Lag,
    Burst,
    Steady,
    Idle,
    Api,
    Failover,
    Batch,
}

impl Scenario {
    pub(super) const EACH: [Scenario; 8] = [
        Scenario::Drain,
        Scenario::Lag,
        Scenario::Burst,
        Scenario::Steady,
        Scenario::Idle,
        Scenario::Api,
        Scenario::Failover,
        Scenario::Batch,
    ];

    /// How many replicas the scenario runs at once.
    pub(super) fn replicas(self) -> usize {
        match self {
            Scenario::Failover => 2,
            _ => 1,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Scenario::All => "all",
            Scenario::Drain => "drain",
            Scenario::Lag => "lag",
            Scenario::Burst => "burst",
            Scenario::Steady => "steady",
            Scenario::Idle => "idle",
            Scenario::Api => "api",
            Scenario::Failover => "failover",
            Scenario::Batch => "batch",
        }
    }
}

/// The service's default `--workers`, as `jobsd serve --help` shows it.
pub(super) fn default_workers() -> String {
    let command = crate::config::ServeConfig::augment_args(clap::Command::new("serve"));
    let workers = command
        .get_arguments()
        .find(|a| a.get_id() == "workers")
        .and_then(|a| a.get_default_values().first())
        .map_or_else(|| "?".to_string(), |v| v.to_string_lossy().into_owned());
    workers
}

/// The flags every replica gets besides its database, address and name.
pub(super) fn replica_flags(args: &BenchArgs, server: &crate::store::bench::BenchServer) -> String {
    let workers = args.workers.map_or_else(default_workers, |w| w.to_string());
    let mut flags = format!(
        "--workers {workers} --db-max-connections {}",
        args.database.db_max_connections
    );
    for flag in server.replica_flags() {
        flags = format!("{flags} {flag}");
    }
    for extra in &args.serve_args {
        flags = format!("{flags} {extra}");
    }
    if let Some(binary) = &args.serve_binary {
        flags = format!("{flags}`, run from `{}", binary.display());
    }
    flags
}

/// The settings of this run, for the JSON report.
pub(super) fn settings_json(args: &BenchArgs) -> serde_json::Value {
    json!({
        "jobs": args.jobs,
        "batch_rows": args.batch_rows,
        "scrape_metrics_per_second": args.scrape_metrics_per_second,
        "create": format!("{:?}", args.create).to_lowercase(),
        "bulk_size": args.bulk_size,
        "lag_jobs_50": args.lag_jobs_50,
        "lag_jobs_500": args.lag_jobs_500,
        "burst_jobs": args.burst_jobs,
        "burst_quiet_jobs": args.burst_quiet_jobs,
        "burst_quiet_duration_s": args.burst_quiet_duration.as_secs_f64(),
        "steady_jobs": args.steady_jobs,
        "steady_interval_s": args.steady_interval.as_secs_f64(),
        "steady_duration_s": args.steady_duration.as_secs_f64(),
        "lead_s": args.lead.map(|d| d.as_secs_f64()),
        "idle_jobs": args.idle_jobs,
        "idle_duration_s": args.idle_duration.as_secs_f64(),
        "idle_settle_s": args.idle_settle.as_secs_f64(),
        "duration_s": args.duration.as_secs_f64(),
        "concurrency": args.concurrency,
        "lease_s": args.lease.as_secs_f64(),
        "workers": args.workers,
        "serve_args": args.serve_args,
        "serve_binary": args.serve_binary,
        "db_max_connections": args.database.db_max_connections,
        "sqlite_synchronous": format!("{:?}", args.database.sqlite_synchronous).to_lowercase(),
        "database_url": crate::store::redact_url(&args.database.database_url),
        "baseline_database_url": args
            .baseline_database_url
            .as_deref()
            .map(crate::store::redact_url),
    })
}
