//! `jobsd bench`: the benchmark that ships with the project (SPEC §14).
//!
//! It drives real `jobsd serve` children (this executable) over HTTP
//! against a real PostgreSQL and prints figures beside their targets. It
//! never fails on a missed target: benchmarks are not timed tests. It exits
//! non-zero only when a scenario could not be measured at all.
//!
//! Each scenario gets a fresh database `jobsd_bench_<random>_<scenario>` on
//! the server of `--database-url` (created by the first child, as `serve`
//! creates a missing database); one that compares phases (burst) gets one
//! per phase, `…_<scenario>_<phase>`. Every database a scenario was handed
//! is dropped afterwards, also on Ctrl-C, so it never touches a real `jobsd`
//! database. The benchmark itself speaks only HTTP; the exceptions
//! (dropping and analysing its databases, reading server settings) are in
//! `store::postgres::bench`. `docs/benchmarks.md` describes the method of every
//! figure.

mod api;
mod args;
mod burst;
mod client;
mod drain;
mod failover;
mod idle;
mod lag;
mod load;
mod proc;
mod report;
mod steady;

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;

use crate::store::postgres::bench::{
    bench_database_drop, bench_server_facts, BENCH_DATABASE_PREFIX,
};
use args::{replica_flags, settings_json};
pub use args::{BenchArgs, CreateMode, Scenario};
use client::CreatePath;
use proc::{Service, ServiceSpec};
use report::{Failure, Figure, Machine, Report};

/// What a scenario needs: the flags, and a way to start replicas on its
/// own database(s).
pub(crate) struct Ctx<'a> {
    args: &'a BenchArgs,
    scenario: Scenario,
    server_url: String,
    /// `jobsd_bench_<random>_<scenario>`: the scenario's database, and the
    /// stem of its phases' ones.
    database: String,
    jobs_dir: PathBuf,
    /// Every database handed out so far, dropped after the scenario.
    handed_out: Mutex<Vec<String>>,
}

impl Ctx<'_> {
    fn create_path(&self) -> CreatePath {
        match self.args.create {
            CreateMode::Bulk => CreatePath::Bulk(self.args.bulk_size),
            CreateMode::Single => CreatePath::Single(self.args.concurrency),
        }
    }

    /// How long before the first due time creating `count` jobs starts:
    /// `--lead`, else an estimate generous for a release build.
    fn lead(&self, count: usize) -> std::time::Duration {
        self.args
            .lead
            .unwrap_or_else(|| self.create_path().lead(count))
    }

    /// The name of the scenario's database, or with `phase` of a separate
    /// one for that phase. Announced on stderr the first time, and dropped
    /// after the scenario.
    fn database_name(&self, phase: Option<&str>) -> String {
        let name = match phase {
            Some(phase) => format!("{}_{phase}", self.database),
            None => self.database.clone(),
        };
        let mut handed_out = self.handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&name) {
            say(self.scenario.name(), format_args!("database {name}"));
            handed_out.push(name.clone());
        }
        name
    }

    /// The URL of [`Ctx::database_name`].
    fn database_url(&self, phase: Option<&str>) -> anyhow::Result<String> {
        with_database(&self.server_url, &self.database_name(phase))
    }

    /// Starts a `jobsd serve` named `instance` on this scenario's database,
    /// with `extra` flags before the user's `--serve-arg`s.
    async fn spawn(&self, instance: &str, extra: &[&str]) -> anyhow::Result<Service> {
        self.spawn_on(None, instance, extra).await
    }

    /// [`Ctx::spawn`] on the database of `phase` (see [`Ctx::database_name`]).
    async fn spawn_on(
        &self,
        phase: Option<&str>,
        instance: &str,
        extra: &[&str],
    ) -> anyhow::Result<Service> {
        let mut flags: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        flags.extend(self.args.serve_args.iter().cloned());
        Service::spawn(&ServiceSpec {
            database_url: self.database_url(phase)?,
            instance: instance.to_string(),
            workers: self.args.workers,
            db_max_connections: self.args.database.db_max_connections,
            db_connect_timeout: self.args.database.db_connect_timeout,
            jobs_dir: self.jobs_dir.clone(),
            extra: flags,
            binary: self.args.serve_binary.clone(),
        })
        .await
    }

    /// Drops every database handed out; failures are reported, not fatal.
    async fn drop_databases(&self) {
        let names = std::mem::take(&mut *self.handed_out.lock().unwrap_or_else(|e| e.into_inner()));
        for name in names {
            if let Err(e) = bench_database_drop(&self.server_url, &name).await {
                say(
                    self.scenario.name(),
                    format_args!("could not drop database {name}: {e}"),
                );
            }
        }
    }
}

/// Progress for the operator, on stderr (stdout carries the report).
fn say(scenario: &str, message: impl std::fmt::Display) {
    eprintln!("bench: {scenario}: {message}");
}

/// `url` naming database `name` instead of its own.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url)
        .with_context(|| format!("--database-url {}", crate::store::redact_url(url)))?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}

/// Runs the selected scenarios and prints the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !(1..=10_000).contains(&args.bulk_size) {
        anyhow::bail!("--bulk-size must be between 1 and 10000");
    }
    let selected: Vec<Scenario> = if args.scenario.contains(&Scenario::All) {
        Scenario::EACH.to_vec()
    } else {
        Scenario::EACH
            .into_iter()
            .filter(|s| args.scenario.contains(s))
            .collect()
    };
    let server_url = args.database.database_url.clone();
    let facts = bench_server_facts(&server_url).await.with_context(|| {
        format!(
            "cannot reach PostgreSQL at {}",
            crate::store::redact_url(&server_url)
        )
    })?;
    let mut machine = Machine::observe(Some(facts));
    if machine.build == "debug" {
        say(
            "all",
            "this is a debug build; figures will be far below release ones",
        );
    }
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let jobs_dir = std::env::temp_dir().join(format!("jobsd-bench-{tag}"));
    std::fs::create_dir_all(&jobs_dir)
        .with_context(|| format!("creating the empty default-jobs directory {jobs_dir:?}"))?;

    let mut figures = Vec::new();
    let mut failures = Vec::new();
    for scenario in selected {
        let ctx = Ctx {
            args: &args,
            scenario,
            server_url: server_url.clone(),
            database: format!("{BENCH_DATABASE_PREFIX}{tag}_{}", scenario.name()),
            jobs_dir: jobs_dir.clone(),
            handed_out: Mutex::new(Vec::new()),
        };
        let outcome = tokio::select! {
            outcome = run_scenario(scenario, &ctx) => Some(outcome),
            _ = tokio::signal::ctrl_c() => None,
        };
        // The scenario's children are gone (killed when dropped), so its
        // databases can go too.
        ctx.drop_databases().await;
        let Some(outcome) = outcome else {
            let _ = std::fs::remove_dir_all(&jobs_dir);
            anyhow::bail!("interrupted during the {} scenario", scenario.name());
        };
        match outcome {
            Ok(mut got) => figures.append(&mut got),
            Err(e) => {
                say(scenario.name(), format_args!("failed: {e:#}"));
                failures.push(Failure {
                    scenario: scenario.name(),
                    error: format!("{e:#}"),
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&jobs_dir);
    machine.load_after = report::load_average();
    let report = Report {
        machine,
        settings: settings_json(&args),
        replica_flags: replica_flags(&args),
        figures,
        failures,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("writing the report")?
        );
    } else {
        print!("{}", report.markdown());
    }
    if report.failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} scenario(s) could not be measured",
            report.failures.len()
        )
    }
}

async fn run_scenario(scenario: Scenario, ctx: &Ctx<'_>) -> anyhow::Result<Vec<Figure>> {
    match scenario {
        Scenario::Drain => drain::run(ctx).await,
        Scenario::Lag => lag::run(ctx).await,
        Scenario::Burst => burst::run(ctx).await,
        Scenario::Steady => steady::run(ctx).await,
        Scenario::Idle => idle::run(ctx).await,
        Scenario::Api => api::run(ctx).await,
        Scenario::Failover => failover::run(ctx).await,
        Scenario::All => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn names_the_bench_database_on_the_same_server() {
        assert_eq!(
            with_database("postgres://postgres@localhost:5432/jobsd", "jobsd_bench_x").unwrap(),
            "postgres://postgres@localhost:5432/jobsd_bench_x"
        );
        assert_eq!(
            with_database(
                "postgres://u:p@db/postgres?sslmode=disable",
                "jobsd_bench_x"
            )
            .unwrap(),
            "postgres://u:p@db/jobsd_bench_x?sslmode=disable"
        );
        assert!(with_database("not a url", "x").is_err());
    }
}
