//! lag: how late runs start after their due time.
//!
//! Two series on one replica, one after the other: jobs due at distinct
//! instants 20 ms apart (50 jobs/s), then 2 ms apart (500 jobs/s), the first
//! `--lead` ahead (by default 2 s plus the estimated creation time) so that
//! creating them is over before any is due. Each run's
//! lag is `started_at - scheduled_for`, both written by the database, so no
//! clock but PostgreSQL's is involved.

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;

use super::client::{Api, LogJobs, Run, RunsFilter};
use super::load::percentile;
use super::report::{Cmp, Figure};
use super::{say, Ctx};

const SCENARIO: &str = "lag";
/// p99 target at 50 jobs/s.
const TARGET_P99_MS: f64 = 5.0;

struct Series {
    rate: u32,
    count: usize,
}

/// The lags of one series' runs, and why they may be off.
struct Lags {
    /// `started_at - scheduled_for` of each run, in µs, sorted.
    sorted_us: Vec<i64>,
    /// Set when creating the jobs was not over before the first was due.
    warning: Option<String>,
}

pub(crate) async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Figure>> {
    let mut service = ctx.spawn("bench-lag", &[]).await?;
    let api = Api::new(&service.base)?;
    let mut figures = Vec::new();
    let mut done = 0u64;
    for series in [
        Series {
            rate: 50,
            count: ctx.args.lag_jobs_50,
        },
        Series {
            rate: 500,
            count: ctx.args.lag_jobs_500,
        },
    ] {
        if series.count == 0 {
            continue;
        }
        let result = measure(ctx, &api, &series, done).await;
        let lags =
            result.with_context(|| format!("the replica's log ends:\n{}", service.log_tail()))?;
        done += series.count as u64;
        figures.extend(series_figures(&series, &lags));
    }
    service.kill().await?;
    Ok(figures)
}

/// Creates one series, waits for its runs, and returns their lags.
async fn measure(
    ctx: &Ctx<'_>,
    api: &Api,
    series: &Series,
    done_before: u64,
) -> anyhow::Result<Lags> {
    let pace = Duration::from_micros(1_000_000 / u64::from(series.rate));
    let prefix = format!("lag{}-", series.rate);
    let jobs = LogJobs {
        prefix: &prefix,
        count: series.count,
        first_due: Utc::now() + chrono::Duration::from_std(ctx.lead(series.count))?,
        spread: pace * series.count as u32,
        every: None,
    };
    say(
        SCENARIO,
        format_args!("{} jobs due {} ms apart", series.count, pace.as_millis()),
    );
    let created = api.create_jobs(jobs.bodies(), ctx.create_path()).await?;
    let warning = created.overran(jobs.first_due).map(|overran| {
        format!(
            "creation ({}) overran the first due time by {} ms",
            created.path,
            overran.num_milliseconds()
        )
    });
    api.wait_succeeded(done_before + series.count as u64, Duration::from_secs(30))
        .await?;
    let runs = api.runs_all(&RunsFilter::in_state("succeeded")).await?;
    let lags = sorted_lags_us(runs.iter().filter(|r| r.job_id.starts_with(&prefix)));
    if lags.len() != series.count {
        bail!("{} of {} runs have a start time", lags.len(), series.count);
    }
    Ok(Lags {
        sorted_us: lags,
        warning,
    })
}

/// The start lags (`started_at − scheduled_for`, µs) of the runs that
/// started, sorted.
pub(super) fn sorted_lags_us<'a>(runs: impl Iterator<Item = &'a Run>) -> Vec<i64> {
    let mut lags: Vec<i64> = runs.filter_map(Run::start_lag_us).collect();
    lags.sort_unstable();
    lags
}

/// "p50 <label>", "p99 <label>" (against `p99_target`, if any) and
/// "max <label>" of sorted lags in µs, in ms, each with `note`.
pub(super) fn lag_figures(
    scenario: &'static str,
    label: &str,
    sorted_us: &[i64],
    note: &str,
    p99_target: Option<f64>,
) -> Vec<Figure> {
    let ms = |p: f64| percentile(sorted_us, p).map_or(0.0, |us| us as f64 / 1000.0);
    let p99 = Figure::new(scenario, format!("p99 {label}"), ms(99.0), "ms").note(note);
    let p99 = match p99_target {
        Some(target) => p99.target(Cmp::AtMost, target),
        None => p99,
    };
    vec![
        Figure::new(scenario, format!("p50 {label}"), ms(50.0), "ms").note(note),
        p99,
        Figure::new(scenario, format!("max {label}"), ms(100.0), "ms").note(note),
    ]
}

fn series_figures(series: &Series, lags: &Lags) -> Vec<Figure> {
    let mut note = format!("{} jobs, started_at − scheduled_for", series.count);
    if let Some(warning) = &lags.warning {
        note = format!("{note}; {warning}");
    }
    let target = (series.rate == 50).then_some(TARGET_P99_MS);
    lag_figures(
        SCENARIO,
        &format!("at {} jobs/s", series.rate),
        &lags.sorted_us,
        &note,
        target,
    )
}
