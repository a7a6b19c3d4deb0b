//! drain: N no-op one-shot jobs, all due now, created through the API.
//!
//! End to end: from the moment the first creation request is sent (the
//! benchmark's clock) to the last run's `finished_at` (the store's clock:
//! PostgreSQL's, which agrees when it runs on the same host, or the
//! replica's on the embedded store). Workers alone: the first run's
//! `started_at` to the last run's `finished_at`, both store time. The
//! no-op is the `log` handler, whose lines the children's `RUST_LOG`
//! filters out.
//!
//! The end-to-end target is absolute on a database server. On the embedded
//! store it is relative: at least half a server's drain in the same
//! session, which `--baseline-database-url` measures right after (the same
//! rounds on one replica of that server) and reports as a ratio.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;
use serde_json::{json, Value};

use super::client::{seconds_between, Api, CreatePath, RunsFilter};
use super::report::{Cmp, Figure};
use super::scrape::{Scraped, Scraper};
use super::{say, Ctx};

const SCENARIO: &str = "drain";
/// The end-to-end target, for 10,000 jobs on the reference machine.
const TARGET_RUNS_PER_SECOND: f64 = 20_000.0;
/// The embedded store's end-to-end figure ÷ a server's, same session.
const TARGET_EMBEDDED_RATIO: f64 = 0.5;

/// One round's figures, in runs (or jobs) per second.
pub(super) struct Round {
    pub(super) end_to_end: f64,
    workers: f64,
    create: f64,
    create_path: String,
    /// Created by single requests (`--create single`).
    single: bool,
}

pub(crate) async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Figure>> {
    if ctx.args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let (measured, scraped) = measure(ctx).await?;
    let mut figures = figures(ctx, &measured);
    if let Some(scraped) = scraped {
        figures.push(
            Figure::new(
                SCENARIO,
                "metrics scrapes",
                scraped.per_second(),
                "scrapes/s",
            )
            .note(format!(
                "GET /metrics during every round, one at a time: {} answered, {} failed, \
                     slowest {:.1} ms",
                scraped.ok,
                scraped.failed,
                scraped.slowest.as_secs_f64() * 1000.0
            )),
        );
    }
    if let Some(base) = ctx.baseline() {
        say(
            SCENARIO,
            format_args!(
                "baseline: the same drain on {}, on a replica of its own",
                base.backend_name()
            ),
        );
        let (based, _) = measure(base).await.context("the baseline drain")?;
        figures.extend(baseline_figures(ctx, base, &measured, &based));
    }
    Ok(figures)
}

/// The rounds of the drain on one replica of `ctx`'s store, and what the
/// scraper of `--scrape-metrics-per-second` did meanwhile.
pub(super) async fn measure(ctx: &Ctx<'_>) -> anyhow::Result<(Vec<Round>, Option<Scraped>)> {
    let n = ctx.args.jobs;
    let rounds = ctx.args.drain_rounds.max(1);
    let mut service = ctx.spawn("bench-drain", &[]).await?;
    let api = Api::new(&service.base)?;
    let per_second = ctx.args.scrape_metrics_per_second;
    let scraper = if per_second > 0 {
        say(
            SCENARIO,
            format_args!(
                "scraping {}/metrics {per_second} times a second",
                service.base
            ),
        );
        Some(Scraper::start(&service.base, per_second)?)
    } else {
        None
    };
    let mut seen = HashSet::new();
    let mut measured = Vec::with_capacity(rounds);
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
            bail!("clocks disagree: the last run finished before the first creation (is the database's clock the host's?)");
        }
        measured.push(Round {
            end_to_end: n as f64 / end_to_end,
            workers: n as f64 / workers,
            create: created.per_second(),
            create_path: created.path.to_string(),
            single: matches!(created.path, CreatePath::Single(_)),
        });
    }
    let scraped = match scraper {
        Some(scraper) => Some(scraper.stop().await),
        None => None,
    };
    service.kill().await?;
    Ok((measured, scraped))
}

pub(super) fn median(measured: &[Round], f: fn(&Round) -> f64) -> f64 {
    median_of(measured.iter().map(f).collect())
}

/// "median of N round(s) of M jobs on one replica: a, b, c".
fn rounds_note(ctx: &Ctx<'_>, measured: &[Round], f: fn(&Round) -> f64) -> String {
    let listed = measured
        .iter()
        .map(|r| format!("{:.0}", f(r)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "median of {} round(s) of {} jobs on one replica: {listed}",
        measured.len(),
        ctx.args.jobs
    )
}

fn figures(ctx: &Ctx<'_>, measured: &[Round]) -> Vec<Figure> {
    let n = ctx.args.jobs;
    let create_name = if measured.iter().any(|r| r.single) {
        "create rate, single"
    } else {
        "create rate, bulk"
    };
    let median = |f: fn(&Round) -> f64| median(measured, f);
    let rounds_note = |f: fn(&Round) -> f64| rounds_note(ctx, measured, f);
    let scraping = match ctx.args.scrape_metrics_per_second {
        0 => String::new(),
        n => format!("; GET /metrics scraped {n} times a second meanwhile"),
    };
    let end_to_end = Figure::new(
        SCENARIO,
        format!("end to end, {n} jobs"),
        median(|r| r.end_to_end),
        "runs/s",
    );
    let (end_to_end, target) = if ctx.embedded() {
        (
            end_to_end,
            format!(
                "; target on an embedded store: ≥ {TARGET_EMBEDDED_RATIO:.1}× a database server's drain \
                 in the same session (--baseline-database-url)"
            ),
        )
    } else {
        (
            end_to_end.target(Cmp::AtLeast, TARGET_RUNS_PER_SECOND),
            String::new(),
        )
    };
    vec![
        end_to_end.note(format!(
            "first create request → last run finished; created by {}; {}{scraping}{target}",
            measured[0].create_path,
            rounds_note(|r| r.end_to_end)
        )),
        Figure::new(SCENARIO, "workers alone", median(|r| r.workers), "runs/s").note(format!(
            "first run started → last run finished; {}",
            rounds_note(|r| r.workers)
        )),
        Figure::new(SCENARIO, create_name, median(|r| r.create), "jobs/s")
            .note(rounds_note(|r| r.create)),
    ]
}

/// The baseline's end-to-end figure, and this store's ÷ it.
fn baseline_figures(
    ctx: &Ctx<'_>,
    base: &Ctx<'_>,
    measured: &[Round],
    based: &[Round],
) -> Vec<Figure> {
    let n = ctx.args.jobs;
    let ours = median(measured, |r| r.end_to_end);
    let theirs = median(based, |r| r.end_to_end);
    vec![
        Figure::new(
            SCENARIO,
            format!("end to end on {}, {n} jobs", base.backend_name()),
            theirs,
            "runs/s",
        )
        .note(format!(
            "the baseline, right after on the same machine; {}",
            rounds_note(base, based, |r| r.end_to_end)
        )),
        Figure::new(
            SCENARIO,
            format!("end to end ÷ {}'s", base.backend_name()),
            ours / theirs.max(1e-9),
            "×",
        )
        .target(Cmp::AtLeast, TARGET_EMBEDDED_RATIO)
        .note(format!(
            "{} ÷ {}, medians of the same rounds and jobs, one replica each, back to back",
            ctx.backend_name(),
            base.backend_name()
        )),
    ]
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
