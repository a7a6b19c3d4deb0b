//! The `jobsd` command line: `serve` (the default), `migrate`, `validate`,
//! `openapi`, `bench`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jobsd::config::{DatabaseConfig, LogFormat, ServeConfig, ValidateConfig};
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
    about = "A job-scheduling service on PostgreSQL",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, `jobsd` serves.
    #[command(flatten)]
    serve: ServeConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, the scheduler and the workers (the default).
    Serve(ServeConfig),
    /// Create the database if needed and apply migrations, then exit.
    Migrate(DatabaseConfig),
    /// Check the default-job YAML files of a directory (no database needed);
    /// lists every problem and exits with status 1 if there is one.
    Validate(ValidateConfig),
    /// Print the OpenAPI document (JSON) of the built-in handlers.
    Openapi,
    /// Benchmark real `jobsd serve` children against a PostgreSQL server,
    /// each scenario on a throw-away database (see docs/benchmarks.md).
    Bench(jobsd::bench::BenchArgs),
}

fn builtin_registry(enable_command: bool) -> HandlerRegistry {
    HandlerRegistry::with_builtins(BuiltinConfig {
        command_enabled: enable_command,
        ..BuiltinConfig::default()
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Openapi) => {
            jobsd::logging::print_stdout(&jobsd::api::openapi::document_text(&builtin_registry(
                false,
            )));
            Ok(())
        }
        Some(Command::Migrate(db)) => {
            jobsd::logging::init(LogFormat::Text);
            jobsd::app::open_store(&db).await.map(|_| {
                jobsd::logging::print_stderr("jobsd: migrations applied");
            })
        }
        Some(Command::Validate(v)) => jobsd::default_jobs::validate_command(
            v.dir.as_deref().unwrap_or(&v.default_jobs_dir),
            &builtin_registry(v.enable_command_handler),
        ),
        Some(Command::Serve(config)) => serve(config).await,
        Some(Command::Bench(args)) => {
            jobsd::logging::init(LogFormat::Text);
            jobsd::bench::run(args).await
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
    let registry = builtin_registry(config.enable_command_handler);
    let shutdown = jobsd::app::shutdown_on_signal();
    jobsd::app::serve(config, registry, shutdown).await
}
