//! `jobsd bench`: the benchmark that ships with the project (SPEC §14).
//!
//! It drives real `jobsd serve` children (this executable) over HTTP
//! against a real store and prints figures beside their targets. It never
//! fails on a missed target: benchmarks are not timed tests. It exits
//! non-zero only when a scenario could not be measured at all.
//!
//! Each scenario gets a fresh database `jobsd_bench_<random>_<scenario>`:
//! on the PostgreSQL server of `--database-url`, or with
//! `sqlite://DIR/name.db` a file `DIR/jobsd_bench_<random>_<scenario>.db`
//! (created by the first child, as `serve` creates a missing database or
//! file); one that compares phases (burst) gets one per phase,
//! `…_<scenario>_<phase>`. Every database a scenario was handed is removed
//! afterwards (dropped, or the file deleted with its `-wal`, `-shm` and
//! `.lock`), also on Ctrl-C, so it never touches a real `jobsd` database.
//! Scenarios with several replicas are left out on the embedded store, with
//! the reason. The benchmark itself speaks only HTTP; the exceptions
//! (naming, removing and analysing its databases, reading the database's
//! settings) go through `store::bench`, which picks the backend by URL
//! scheme, so no scenario holds anything specific to one.
//! `docs/benchmarks.md` describes the method of every figure.

mod api;
mod args;
mod batch;
mod burst;
mod client;
mod drain;
mod failover;
mod idle;
mod lag;
mod load;
mod proc;
mod report;
mod scrape;
mod steady;

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Context};

use crate::store::bench::{BenchServer, BENCH_DATABASE_PREFIX};
use args::{replica_flags, settings_json};
pub use args::{BenchArgs, CreateMode, Scenario};
use client::CreatePath;
use proc::{Service, ServiceSpec};
use report::{Failure, Figure, LeftOut, Machine, Report};

/// What a scenario needs: the flags, and a way to start replicas on its
/// own database(s).
pub(crate) struct Ctx<'a> {
    args: &'a BenchArgs,
    scenario: Scenario,
    server: &'a BenchServer,
    /// `jobsd_bench_<random>_<scenario>`: the scenario's database, and the
    /// stem of its phases' ones.
    database: String,
    jobs_dir: PathBuf,
    /// Every database handed out so far, removed after the scenario.
    handed_out: Mutex<Vec<String>>,
    /// The same scenario on `--baseline-database-url` (the drain on an
    /// embedded store), to compare with.
    baseline: Option<Box<Ctx<'a>>>,
}

impl<'a> Ctx<'a> {
    fn new(
        args: &'a BenchArgs,
        scenario: Scenario,
        server: &'a BenchServer,
        database: &str,
        jobs_dir: &std::path::Path,
    ) -> Ctx<'a> {
        Ctx {
            args,
            scenario,
            server,
            database: database.to_string(),
            jobs_dir: jobs_dir.to_path_buf(),
            handed_out: Mutex::new(Vec::new()),
            baseline: None,
        }
    }

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
    /// one for that phase. Announced on stderr the first time, and removed
    /// after the scenario.
    fn database_name(&self, phase: Option<&str>) -> String {
        let name = match phase {
            Some(phase) => format!("{}_{phase}", self.database),
            None => self.database.clone(),
        };
        let mut handed_out = self.handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&name) {
            say(self.scenario.name(), self.server.describe_database(&name));
            handed_out.push(name.clone());
        }
        name
    }

    /// The URL of [`Ctx::database_name`].
    fn database_url(&self, phase: Option<&str>) -> anyhow::Result<String> {
        self.server.database_url(&self.database_name(phase))
    }

    /// `ANALYZE` of the database of `phase` (see [`Ctx::database_name`]).
    async fn analyze(&self, phase: Option<&str>) -> anyhow::Result<()> {
        self.server.analyze(&self.database_name(phase)).await
    }

    /// True when the database runs inside the replica (no server of its
    /// own): the replica's CPU is all the service uses.
    fn embedded(&self) -> bool {
        self.server.embedded()
    }

    /// The backend's name (`PostgreSQL`, `SQLite`).
    fn backend_name(&self) -> &'static str {
        self.server.name()
    }

    /// The same scenario on the baseline server, if one was given.
    fn baseline(&self) -> Option<&Ctx<'a>> {
        self.baseline.as_deref()
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
        let mut flags = self.server.replica_flags();
        flags.extend(extra.iter().map(|s| s.to_string()));
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

    /// Removes every database handed out (the baseline's too); failures
    /// are reported, not fatal.
    async fn remove_databases(&self) {
        let mut ctx = Some(self);
        while let Some(c) = ctx {
            let names =
                std::mem::take(&mut *c.handed_out.lock().unwrap_or_else(|e| e.into_inner()));
            for name in names {
                if let Err(e) = c.server.remove(&name).await {
                    say(
                        c.scenario.name(),
                        format_args!(
                            "could not remove {}: {e:#}",
                            c.server.describe_database(&name)
                        ),
                    );
                }
            }
            ctx = c.baseline();
        }
    }
}

/// Progress for the operator, on stderr (stdout carries the report).
fn say(scenario: &str, message: impl std::fmt::Display) {
    eprintln!("bench: {scenario}: {message}");
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
    let synchronous = args.database.sqlite_synchronous;
    let server = BenchServer::of_url(&args.database.database_url, synchronous, &args.serve_args)?;
    let baseline = match &args.baseline_database_url {
        None => None,
        Some(url) => {
            let baseline = BenchServer::of_url(url, synchronous, &args.serve_args)?;
            if !server.embedded() || baseline.embedded() {
                bail!(
                    "--baseline-database-url compares the embedded store with a server: \
                     give --database-url sqlite://DIR/name.db and a postgres:// baseline"
                );
            }
            Some(baseline)
        }
    };
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let timeout = args.database.db_connect_timeout;
    let probe = format!("{BENCH_DATABASE_PREFIX}{tag}_facts");
    let facts = server.facts(&probe, timeout).await?;
    let baseline_facts = match &baseline {
        Some(b) => Some(
            b.facts(&probe, timeout)
                .await
                .context("the baseline server")?,
        ),
        None => None,
    };
    let mut machine = Machine::observe(facts, baseline_facts);
    if machine.build == "debug" {
        say(
            "all",
            "this is a debug build; figures will be far below release ones",
        );
    }
    let jobs_dir = std::env::temp_dir().join(format!("jobsd-bench-{tag}"));
    std::fs::create_dir_all(&jobs_dir)
        .with_context(|| format!("creating the empty default-jobs directory {jobs_dir:?}"))?;

    let mut figures = Vec::new();
    let mut failures = Vec::new();
    let mut left_out = Vec::new();
    for scenario in selected {
        if scenario.replicas() > 1 {
            if let Err(reason) = server.several_replicas() {
                say(scenario.name(), format_args!("left out: {reason}"));
                left_out.push(LeftOut {
                    scenario: scenario.name(),
                    reason: reason.to_string(),
                });
                continue;
            }
        }
        let database = format!("{BENCH_DATABASE_PREFIX}{tag}_{}", scenario.name());
        let mut ctx = Ctx::new(&args, scenario, &server, &database, &jobs_dir);
        if scenario == Scenario::Drain {
            ctx.baseline = baseline
                .as_ref()
                .map(|b| Box::new(Ctx::new(&args, scenario, b, &database, &jobs_dir)));
        }
        let outcome = tokio::select! {
            outcome = run_scenario(scenario, &ctx) => Some(outcome),
            _ = tokio::signal::ctrl_c() => None,
        };
        // The scenario's children are gone (killed when dropped), so its
        // databases can go too.
        ctx.remove_databases().await;
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
        replica_flags: replica_flags(&args, &server),
        figures,
        failures,
        left_out,
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
        Scenario::Batch => batch::run(ctx).await,
        Scenario::All => Ok(Vec::new()),
    }
}
