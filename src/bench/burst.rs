//! burst: `--burst-jobs` one-shot jobs due at one instant, fired by the
//! scheduler. Measured twice, each time on a database of its own with a
//! replica of its own:
//!
//! - fresh: a new database, a replica that has just started;
//! - warm: a new database, and first a quiet period on it —
//!   `--burst-quiet-jobs` one-shot jobs due at instants spread evenly over
//!   `--burst-quiet-duration` (300 over 6 s), run to the end — then
//!   `ANALYZE` (statistics taken of nearly empty tables, as autovacuum or
//!   an operator would take them), then the burst on the same replica.
//!
//! The jobs are created with a `when` one `--lead` after creation starts,
//! so creation is over before they are due; the scenario fails if it was
//! not (jobs created already due are run by their creation, not fired by
//! the scheduler). The figure is end to end from the due instant: jobs ÷
//! (last run's `finished_at` − the runs' `scheduled_for`), both written by
//! the store (the database's clock, or the replica's on the embedded one). Lag is each run's `started_at − scheduled_for`. The warm
//! figure should be at least 0.8× the fresh one: a planner misled by the
//! statistics of a quiet database must not slow the burst down.

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;

use super::client::{seconds_between, sleep_until, Api, Created, LogJobs, Run, RunsFilter};
use super::lag::{lag_figures, sorted_lags_us};
use super::report::{Cmp, Figure};
use super::{say, Ctx};

const SCENARIO: &str = "burst";
/// The warm figure ÷ the fresh one.
const TARGET_WARM_RATIO: f64 = 0.8;
const BURST_PREFIX: &str = "burst-";
const QUIET_PREFIX: &str = "quiet-";
/// How long the waits accept no progress.
const STALL: Duration = Duration::from_secs(60);

/// What one burst measured.
struct Burst {
    runs_per_second: f64,
    /// Due instant → last run finished.
    seconds: f64,
    /// `started_at − scheduled_for` of every run, µs, sorted.
    lags_us: Vec<i64>,
    created: Created,
    /// How long before the due instant creation was over.
    ahead: chrono::Duration,
}

pub(crate) async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Figure>> {
    if ctx.args.burst_jobs == 0 {
        bail!("--burst-jobs must be at least 1");
    }
    say(SCENARIO, "fresh: a new database and replica");
    let mut service = ctx
        .spawn_on(Some("fresh"), "bench-burst-fresh", &[])
        .await?;
    let api = Api::new(&service.base)?;
    let fresh = burst(ctx, &api, 0)
        .await
        .with_context(|| format!("fresh: the replica's log ends:\n{}", service.log_tail()))?;
    service.kill().await?;

    say(
        SCENARIO,
        "warm: a new database and replica, a quiet period first",
    );
    let mut service = ctx.spawn_on(Some("warm"), "bench-burst-warm", &[]).await?;
    let api = Api::new(&service.base)?;
    let warm = async {
        let quiet_runs = quiet_period(ctx, &api).await?;
        say(SCENARIO, "warm: ANALYZE");
        ctx.analyze(Some("warm"))
            .await
            .context("ANALYZE of the warm database")?;
        burst(ctx, &api, quiet_runs).await
    }
    .await
    .with_context(|| format!("warm: the replica's log ends:\n{}", service.log_tail()))?;
    service.kill().await?;
    Ok(figures(ctx, &fresh, &warm))
}

/// The quiet period: one-shot jobs due at instants spread evenly over
/// `--burst-quiet-duration`, waited for until all have succeeded. Returns
/// how many runs it made.
async fn quiet_period(ctx: &Ctx<'_>, api: &Api) -> anyhow::Result<u64> {
    let count = ctx.args.burst_quiet_jobs;
    if count == 0 {
        return Ok(0);
    }
    let span = ctx.args.burst_quiet_duration;
    let jobs = LogJobs {
        prefix: QUIET_PREFIX,
        count,
        first_due: Utc::now() + chrono::Duration::from_std(ctx.lead(count))?,
        spread: span,
        every: None,
    };
    say(
        SCENARIO,
        format_args!(
            "warm: quiet period, {count} one-shot jobs over {:.1} s",
            span.as_secs_f64()
        ),
    );
    api.create_jobs(jobs.bodies(), ctx.create_path()).await?;
    sleep_until(jobs.first_due + chrono::Duration::from_std(span)?).await;
    api.wait_succeeded(count as u64, STALL)
        .await
        .context("the quiet period")?;
    Ok(count as u64)
}

/// Creates the burst's jobs, all due one `--lead` from now, waits for
/// their runs (after `done_before` runs that succeeded earlier) and
/// measures them.
async fn burst(ctx: &Ctx<'_>, api: &Api, done_before: u64) -> anyhow::Result<Burst> {
    let n = ctx.args.burst_jobs;
    let lead = ctx.lead(n);
    let jobs = LogJobs {
        prefix: BURST_PREFIX,
        count: n,
        first_due: Utc::now() + chrono::Duration::from_std(lead)?,
        spread: Duration::ZERO,
        every: None,
    };
    say(
        SCENARIO,
        format_args!(
            "{n} one-shot jobs, all due {:.1} s from now",
            lead.as_secs_f64()
        ),
    );
    let created = api.create_jobs(jobs.bodies(), ctx.create_path()).await?;
    if let Some(over) = created.overran(jobs.first_due) {
        bail!(
            "creating {n} jobs ({}) took {:.1} s and ended {} ms after their due instant, \
             so they did not all come due at once; give a --lead longer than {:.1} s",
            created.path,
            created.elapsed.as_secs_f64(),
            over.num_milliseconds(),
            lead.as_secs_f64()
        );
    }
    let ahead = jobs.first_due - created.finished_at;
    sleep_until(jobs.first_due).await;
    api.wait_succeeded(done_before + n as u64, STALL).await?;
    let runs: Vec<Run> = api
        .runs_all(&RunsFilter::in_state("succeeded"))
        .await?
        .into_iter()
        .filter(|r| r.job_id.starts_with(BURST_PREFIX))
        .collect();
    if runs.len() != n {
        bail!(
            "read back {} succeeded burst runs, expected {n}",
            runs.len()
        );
    }
    let due = runs.iter().map(|r| r.scheduled_for).min();
    let last_finish = runs.iter().filter_map(|r| r.finished_at).max();
    let (Some(due), Some(last_finish)) = (due, last_finish) else {
        bail!("succeeded runs without a finish time");
    };
    if runs.iter().any(|r| r.scheduled_for != due) {
        bail!("the burst's runs are not all scheduled for one instant");
    }
    let seconds = seconds_between(due, last_finish);
    if seconds <= 0.0 {
        bail!("the last run finished before the due instant");
    }
    Ok(Burst {
        runs_per_second: n as f64 / seconds,
        seconds,
        lags_us: sorted_lags_us(runs.iter()),
        created,
        ahead,
    })
}

fn figures(ctx: &Ctx<'_>, fresh: &Burst, warm: &Burst) -> Vec<Figure> {
    let n = ctx.args.burst_jobs;
    let how = |b: &Burst| {
        format!(
            "due instant → last run finished ({:.2} s); created in {:.2} s ({}), {:.1} s before the due instant",
            b.seconds,
            b.created.elapsed.as_secs_f64(),
            b.created.path,
            b.ahead.num_milliseconds() as f64 / 1000.0
        )
    };
    let quiet = format!(
        "after {} one-shot jobs over {:.1} s and ANALYZE, on that replica",
        ctx.args.burst_quiet_jobs,
        ctx.args.burst_quiet_duration.as_secs_f64()
    );
    let mut figures = vec![
        Figure::new(
            SCENARIO,
            format!("fresh database, {n} jobs"),
            fresh.runs_per_second,
            "runs/s",
        )
        .note(format!("{}; a replica just started", how(fresh))),
        Figure::new(
            SCENARIO,
            format!("after a quiet period, {n} jobs"),
            warm.runs_per_second,
            "runs/s",
        )
        .note(format!("{}; {quiet}", how(warm))),
        Figure::new(
            SCENARIO,
            "after a quiet period ÷ fresh",
            warm.runs_per_second / fresh.runs_per_second.max(1e-9),
            "×",
        )
        .target(Cmp::AtLeast, TARGET_WARM_RATIO)
        .note("one burst each, on separate databases and replicas"),
    ];
    let lag_note = format!("{n} runs, started_at − scheduled_for");
    figures.extend(lag_figures(
        SCENARIO,
        "start lag, fresh",
        &fresh.lags_us,
        &lag_note,
        None,
    ));
    figures.extend(lag_figures(
        SCENARIO,
        "start lag, after a quiet period",
        &warm.lags_us,
        &lag_note,
        None,
    ));
    figures
}
