//! drain: N no-op one-shot jobs, all due now, created through the API.
//!
//! End to end: from the moment the first creation request is sent (the
//! benchmark's clock) to the last run's `finished_at` (the database's
//! clock; the two agree when PostgreSQL runs on the same host). Workers
//! alone: the first run's `started_at` to the last run's `finished_at`,
//! both database time. The no-op is the `log` handler, whose lines the
//! children's `RUST_LOG` filters out.

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;
use serde_json::{json, Value};

use super::client::{seconds_between, Api, CreatePath};
use super::report::{Cmp, Figure};
use super::{say, Ctx};

const SCENARIO: &str = "drain";
/// The end-to-end target, for 10,000 jobs on the reference machine.
const TARGET_RUNS_PER_SECOND: f64 = 20_000.0;

pub(crate) async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Figure>> {
    let n = ctx.args.jobs;
    if n == 0 {
        bail!("--jobs must be at least 1");
    }
    let mut service = ctx.spawn("bench-drain", &[]).await?;
    let api = Api::new(&service.base)?;
    let specs: Vec<Value> = (0..n)
        .map(|_| json!({"handler": "log", "kwargs": {"message": "noop"}}))
        .collect();
    say(SCENARIO, format_args!("creating {n} one-shot jobs due now"));
    let first_sent = Utc::now();
    let created = api.create_jobs(specs, ctx.create_path()).await?;
    say(
        SCENARIO,
        format_args!("created ({}); waiting for the runs", created.path),
    );
    api.wait_succeeded(n as u64, Duration::from_secs(60))
        .await
        .with_context(|| format!("the replica's log ends:\n{}", service.log_tail()))?;
    let runs = api.runs_all(Some("succeeded")).await?;
    service.kill().await?;
    if runs.len() != n {
        bail!("read back {} succeeded runs, expected {n}", runs.len());
    }
    let first_start = runs.iter().filter_map(|r| r.started_at).min();
    let last_finish = runs.iter().filter_map(|r| r.finished_at).max();
    let (Some(first_start), Some(last_finish)) = (first_start, last_finish) else {
        bail!("succeeded runs without start or finish times");
    };
    let end_to_end = seconds_between(first_sent, last_finish);
    let workers = seconds_between(first_start, last_finish);
    if end_to_end <= 0.0 || workers <= 0.0 {
        bail!("clocks disagree: the last run finished before the first creation (is PostgreSQL's clock the host's?)");
    }
    let create_name = match created.path {
        CreatePath::Bulk(_) => "create rate, bulk",
        CreatePath::Single(_) => "create rate, single",
    };
    Ok(vec![
        Figure::new(
            SCENARIO,
            format!("end to end, {n} jobs"),
            n as f64 / end_to_end,
            "runs/s",
        )
        .target(Cmp::AtLeast, TARGET_RUNS_PER_SECOND)
        .note(format!(
            "first create request → last run finished ({:.3} s); created by {}; 1 replica",
            end_to_end, created.path
        )),
        Figure::new(SCENARIO, "workers alone", n as f64 / workers, "runs/s").note(format!(
            "first run started → last run finished ({workers:.3} s)"
        )),
        Figure::new(SCENARIO, create_name, created.per_second(), "jobs/s").note(format!(
            "{n} jobs in {:.3} s, {}",
            created.elapsed.as_secs_f64(),
            created.path
        )),
    ])
}
