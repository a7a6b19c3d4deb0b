//! drain: N no-op one-shot jobs, all due now, created through the API.
//!
//! End to end: from the moment the first creation request is sent (the
//! benchmark's clock) to the last run's `finished_at` (the database's
//! clock; the two agree when PostgreSQL runs on the same host). Workers
//! alone: the first run's `started_at` to the last run's `finished_at`,
//! both database time. The no-op is the `log` handler, whose lines the
//! children's `RUST_LOG` filters out.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;
use serde_json::{json, Value};

use super::client::{seconds_between, Api, CreatePath, RunsFilter};
use super::report::{Cmp, Figure};
use super::{say, Ctx};

const SCENARIO: &str = "drain";
/// The end-to-end target, for 10,000 jobs on the reference machine.
const TARGET_RUNS_PER_SECOND: f64 = 20_000.0;

/// One round's figures, in runs (or jobs) per second.
struct Round {
    end_to_end: f64,
    workers: f64,
    create: f64,
    create_path: String,
}

pub(crate) async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Figure>> {
    let n = ctx.args.jobs;
    if n == 0 {
        bail!("--jobs must be at least 1");
    }
    let rounds = ctx.args.drain_rounds.max(1);
    let mut service = ctx.spawn("bench-drain", &[]).await?;
    let api = Api::new(&service.base)?;
    let mut seen = HashSet::new();
    let mut measured = Vec::with_capacity(rounds);
    let mut create_name = "create rate, bulk";
    for round in 1..=rounds {
        let specs: Vec<Value> = (0..n)
            .map(|_| json!({"handler": "log", "kwargs": {"message": "noop"}}))
            .collect();
        say(
            SCENARIO,
            format_args!("round {round} of {rounds}: creating {n} one-shot jobs due now"),
        );
        let first_sent = Utc::now();
        let created = api.create_jobs(specs, ctx.create_path()).await?;
        api.wait_succeeded((n * round) as u64, Duration::from_secs(60))
            .await
            .with_context(|| format!("the replica's log ends:\n{}", service.log_tail()))?;
        // This round's runs: those not read back after an earlier round.
        let runs: Vec<_> = api
            .runs_all(&RunsFilter::in_state("succeeded"))
            .await?
            .into_iter()
            .filter(|r| seen.insert(r.run_id.clone()))
            .collect();
        if runs.len() != n {
            bail!(
                "round {round}: read back {} new succeeded runs, expected {n}",
                runs.len()
            );
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
        if let CreatePath::Single(_) = created.path {
            create_name = "create rate, single";
        }
        measured.push(Round {
            end_to_end: n as f64 / end_to_end,
            workers: n as f64 / workers,
            create: created.per_second(),
            create_path: created.path.to_string(),
        });
    }
    service.kill().await?;
    let median = |f: fn(&Round) -> f64| median_of(measured.iter().map(f).collect());
    let listed = |f: fn(&Round) -> f64| {
        measured
            .iter()
            .map(|r| format!("{:.0}", f(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rounds_note = |f: fn(&Round) -> f64| {
        format!(
            "median of {rounds} round(s) of {n} jobs on one replica: {}",
            listed(f)
        )
    };
    Ok(vec![
        Figure::new(
            SCENARIO,
            format!("end to end, {n} jobs"),
            median(|r| r.end_to_end),
            "runs/s",
        )
        .target(Cmp::AtLeast, TARGET_RUNS_PER_SECOND)
        .note(format!(
            "first create request → last run finished; created by {}; {}",
            measured[0].create_path,
            rounds_note(|r| r.end_to_end)
        )),
        Figure::new(SCENARIO, "workers alone", median(|r| r.workers), "runs/s").note(format!(
            "first run started → last run finished; {}",
            rounds_note(|r| r.workers)
        )),
        Figure::new(SCENARIO, create_name, median(|r| r.create), "jobs/s")
            .note(rounds_note(|r| r.create)),
    ])
}

/// The middle value (the mean of the two middle ones for an even count).
fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        len if len % 2 == 1 => values[len / 2],
        len => (values[len / 2 - 1] + values[len / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::median_of;

    #[test]
    fn median_is_the_middle_round() {
        assert_eq!(median_of(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_of(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median_of(vec![7.0]), 7.0);
        assert_eq!(median_of(Vec::new()), 0.0);
    }
}
