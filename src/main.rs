//! The `jobsd` command line: `serve` (the default), `migrate`, `backup`,
//! `copy`, `validate`, `openapi`, `bench`, `token`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jobsd::config::{DatabaseConfig, GuardConfig, LogFormat, ServeConfig, ValidateConfig};
use jobsd::handlers::{BuiltinConfig, HandlerRegistry};

// Under load glibc's allocator spent about a third of the service's CPU
// (consolidating free chunks between large request bodies and row
// batches); with mimalloc the service used a fifth less CPU per run
// drained (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "jobsd",
    version,
    about = "A job-scheduling service on PostgreSQL, or on an embedded SQLite file (the default)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, `jobsd` serves.
    #[command(flatten)]
    serve: ServeConfig,
}

// Parsed once at start-up: the size of `Serve` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the API, the scheduler and the workers (the default).
    Serve(ServeConfig),
    /// Create the database if needed and apply migrations, then exit.
    Migrate(DatabaseConfig),
    /// Write a consistent copy of the embedded store to PATH, while it may be
    /// served.
    ///
    /// PATH must not exist: a backup never overwrites a file. The copy is the
    /// store as of one instant (SQLite's VACUUM INTO), without stopping the
    /// service. It is itself a store: start jobsd on it with
    /// `--database-url sqlite://PATH`, or stop jobsd and put it in place of
    /// the store's file (removing that file's `-wal` and `-shm` files) to
    /// restore. PostgreSQL is refused: use pg_dump.
    Backup(jobsd::maintenance::BackupArgs),
    /// Copy the jobs (and, with --with-history, the run history) from one
    /// store into another, e.g. a try-out's sqlite://./jobsd.db into
    /// postgres://...
    ///
    /// Stop the service on the source first, copy, then start the replicas
    /// on the target. Both stores are migrated to this version's schema
    /// first.
    ///
    /// Jobs: each is copied with its whole definition, its state (running,
    /// paused, completed), its next fire time, its creation and update
    /// times, and the state its default-jobs file declared, so the target
    /// goes on where the source stopped (a time that passed meanwhile is a
    /// misfire there, handled by the job's misfire grace and coalesce, as
    /// after a restart; a one-shot job due now fires at once). If the target
    /// has one of the job ids already, nothing is copied and the ids are
    /// named. Jobs are written 500 at a time, each batch all or nothing;
    /// should the target gain one of the ids while copying, the copy stops
    /// at that batch and says how many jobs were copied before it.
    ///
    /// Runs: the runs still to do (queued, waiting, running) are always
    /// copied as they are, so no fired time is lost; a run left running by
    /// a service that stopped is rescued on the target once its lease has
    /// expired, as after a crash (retried if it has retries left). The
    /// scheduled run of each one-shot job that has fired is copied too,
    /// finished or not, so that the job never fires again. --with-history
    /// copies every other run as well (finished, missed, cancelled, manual).
    /// A run whose id, or whose job's scheduled time, is in the target
    /// already is skipped; so are runs of jobs not copied.
    ///
    /// The source must not be in use: an embedded store that a jobsd serves
    /// (its serve lock is held) is refused, and its lock is held while
    /// copying so that no jobsd starts serving it meanwhile. On a PostgreSQL
    /// source, replicas that heartbeated within the last minute are reported
    /// as a warning. The service-wide pause switch is not copied.
    Copy(jobsd::maintenance::CopyArgs),
    /// Check the default-job YAML files of a directory (no database needed);
    /// lists every problem and exits with status 1 if there is one.
    Validate(ValidateConfig),
    /// Print the OpenAPI document (JSON) of the built-in handlers.
    Openapi,
    /// Benchmark real `jobsd serve` children against a PostgreSQL server or
    /// the embedded store, each scenario on a throw-away database or file
    /// (see docs/benchmarks.md).
    Bench(jobsd::bench::BenchArgs),
    /// Create, list and revoke API tokens (needs only the database).
    Token(jobsd::auth::cli::TokenArgs),
}

/// The built-in handlers under the guards the flags set.
fn builtin_config(enable_command: bool, guards: &GuardConfig) -> anyhow::Result<BuiltinConfig> {
    if !enable_command && !guards.command_allow.is_empty() {
        jobsd::logging::print_stderr(
            "jobsd: --command-allow has no effect: the command handler is disabled \
             (--enable-command-handler)",
        );
    }
    BuiltinConfig::from_flags(enable_command, guards)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Openapi) => {
            let registry = HandlerRegistry::with_builtins(BuiltinConfig::default());
            jobsd::logging::print_stdout(&jobsd::api::openapi::document_text(&registry));
            Ok(())
        }
        Some(Command::Migrate(db)) => {
            jobsd::logging::init(LogFormat::Text);
            jobsd::app::open_store(&db).await.map(|_| {
                jobsd::logging::print_stderr("jobsd: migrations applied");
            })
        }
        Some(Command::Backup(args)) => jobsd::maintenance::backup(&args).await,
        Some(Command::Copy(args)) => jobsd::maintenance::copy_command(&args).await,
        Some(Command::Validate(v)) => {
            builtin_config(v.enable_command_handler, &v.guards).and_then(|builtins| {
                jobsd::default_jobs::validate_command(
                    v.dir.as_deref().unwrap_or(&v.default_jobs_dir),
                    &HandlerRegistry::with_builtins(builtins),
                    v.guards.max_default_job_file_bytes,
                )
            })
        }
        Some(Command::Serve(config)) => serve(config).await,
        Some(Command::Bench(args)) => {
            jobsd::logging::init(LogFormat::Text);
            jobsd::bench::run(args).await
        }
        Some(Command::Token(args)) => {
            jobsd::logging::init(LogFormat::Text);
            jobsd::auth::cli::run(args).await
        }
        None => serve(cli.serve).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            jobsd::logging::print_stderr(&format!("jobsd: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    jobsd::logging::init(config.log_format);
    let builtins = builtin_config(config.enable_command_handler, &config.guards)?;
    let guards = builtins.describe();
    let registry = HandlerRegistry::with_builtins(builtins);
    let shutdown = jobsd::app::shutdown_on_signal();
    let running = jobsd::app::start(config, registry, shutdown).await?;
    // Once started: a service that cannot start says so in one line.
    tracing::info!("guards: {guards}");
    running.wait().await
}
