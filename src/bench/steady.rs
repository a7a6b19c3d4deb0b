//! steady: sustained periodic firing.
//!
//! One replica; `--steady-jobs` interval jobs (`log`, every
//! `--steady-interval`) whose phases are spread evenly over one interval
//! (job i first due at start + interval·i/N, through `when`), so the
//! scheduler is offered N ÷ interval fires per second, evenly. The window
//! is `--steady-duration` from the first due time. One second after it
//! ends the service is paused (`PUT /api/v1/service/state?state=paused`:
//! nothing fires any more, queued and running runs finish); once no run is
//! queued or running, the runs are read back a second of creation time at a
//! time. Of the runs scheduled inside the window:
//!
//! - achieved: those not `missed`, ÷ the window; the target is every
//!   scheduled time inside the window (N ÷ interval per second when the
//!   window is a whole number of intervals). A time with no run (coalesced
//!   into a later one by a scheduler more than an interval behind, or not
//!   fired by a second after the window) is not achieved;
//! - start lag: `started_at − scheduled_for` (database time), p50/p99/max;
//! - missed: runs in state `missed` (the jobs keep the defaults, no
//!   `misfire_grace_time` and `max_instances` 1: a time is missed when the
//!   job's previous run is still queued or running).
//!
//! CPU over the window (the benchmark's clock, from the first due time to
//! the window's end): the replica's from `/proc/<pid>/stat`; a database
//! server's (PostgreSQL) as [`PostgresCpu`] describes, the whole server and
//! the backends of this benchmark's database. An embedded store has no
//! server: the replica's CPU is all there is, and the report says so.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};

use super::client::{sleep_until, Api, Created, LogJobs};
use super::lag::{lag_figures, sorted_lags_us};
use super::proc::{cpu_percent, cpu_seconds, cpu_ticks, postgres_cpu_ticks, PostgresCpu};
use super::report::{show, Cmp, Figure};
use super::{say, Ctx};

const SCENARIO: &str = "steady";
const PREFIX: &str = "steady-";
const TARGET_P99_MS: f64 = 100.0;
/// The rate the service should sustain with that lag.
const AIM_FIRES_PER_SECOND: f64 = 10_000.0;
/// How long after the window the scheduler may still fire its times.
const SETTLE: Duration = Duration::from_secs(1);
/// How long the wait for the last runs accepts no progress.
const STALL: Duration = Duration::from_secs(60);

/// The database's CPU over the window.
enum ServerCpu {
    /// PostgreSQL's, its processes seen in this host's `/proc`.
    Server(PostgresCpu),
    /// A server whose processes this host does not show.
    NotVisible,
    /// The store runs inside the replica: no server to measure.
    Embedded,
}

/// What the window measured.
struct Window {
    /// Scheduled times inside the window.
    scheduled: u64,
    /// Runs scheduled inside the window that were not missed.
    fired: u64,
    missed: u64,
    /// Start lags of the fired runs, µs, sorted.
    lags_us: Vec<i64>,
    /// CPU ticks of the replica over `wall`.
    jobsd_ticks: u64,
    /// The database server's over `wall`.
    server: ServerCpu,
    wall: Duration,
    created: Created,
    /// Set when creation was not over before the first due time.
    warning: Option<String>,
}

pub(crate) async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Figure>> {
    let interval = ctx.args.steady_interval;
    if ctx.args.steady_jobs == 0 {
        bail!("--steady-jobs must be at least 1");
    }
    if interval < Duration::from_millis(1) || !interval.subsec_nanos().is_multiple_of(1_000_000) {
        bail!("--steady-interval must be a whole number of milliseconds, at least 1 ms");
    }
    if ctx.args.steady_duration.is_zero() {
        bail!("--steady-duration must be more than zero");
    }
    let mut service = ctx.spawn("bench-steady", &[]).await?;
    let api = Api::new(&service.base)?;
    let window = measure(ctx, &api, service.pid())
        .await
        .with_context(|| format!("the replica's log ends:\n{}", service.log_tail()))?;
    service.kill().await?;
    Ok(figures(ctx, &window))
}

async fn measure(ctx: &Ctx<'_>, api: &Api, pid: u32) -> anyhow::Result<Window> {
    let (n, interval) = (ctx.args.steady_jobs, ctx.args.steady_interval);
    let length = ctx.args.steady_duration;
    let jobs = LogJobs {
        prefix: PREFIX,
        count: n,
        first_due: Utc::now() + chrono::Duration::from_std(ctx.lead(n))?,
        spread: interval,
        every: Some(interval),
    };
    say(
        SCENARIO,
        format_args!("{n} jobs every {interval:?}, phases spread evenly"),
    );
    let created = api.create_jobs(jobs.bodies(), ctx.create_path()).await?;
    let warning = created.overran(jobs.first_due).map(|over| {
        format!(
            "creation ({}) overran the first due time by {} ms",
            created.path,
            over.num_milliseconds()
        )
    });
    let start = jobs.first_due;
    let end = start + chrono::Duration::from_std(length)?;
    let database = ctx.database_name(None);
    // A database server's processes; an embedded store has none.
    let server_cpu = || (!ctx.embedded()).then(|| postgres_cpu_ticks(&database));

    sleep_until(start).await;
    say(SCENARIO, format_args!("firing for {length:?}"));
    let (jobsd_before, postgres_before, clock) = (cpu_ticks(pid)?, server_cpu(), Instant::now());
    sleep_until(end).await;
    let (jobsd_after, postgres_after, wall) = (cpu_ticks(pid)?, server_cpu(), clock.elapsed());
    sleep_until(end + chrono::Duration::from_std(SETTLE)?).await;
    api.put("/api/v1/service/state?state=paused", 200)
        .await
        .context("pausing the service after the window")?;
    api.wait_settled(STALL).await?;

    say(SCENARIO, "reading the runs back");
    let runs = api
        .runs_created_between(
            start - chrono::Duration::seconds(1),
            Utc::now() + chrono::Duration::seconds(1),
            chrono::Duration::seconds(1),
        )
        .await?;
    let in_window: Vec<_> = runs
        .iter()
        .filter(|r| {
            r.job_id.starts_with(PREFIX) && r.scheduled_for >= start && r.scheduled_for < end
        })
        .collect();
    let missed = in_window.iter().filter(|r| r.state == "missed").count() as u64;
    let lags_us = sorted_lags_us(in_window.iter().copied().filter(|r| r.state != "missed"));
    let server = match (postgres_before, postgres_after) {
        (Some(before), Some(after)) if before.processes > 0 && after.processes > 0 => {
            ServerCpu::Server(PostgresCpu {
                all: after.all.saturating_sub(before.all),
                database: after.database.saturating_sub(before.database),
                processes: after.processes,
            })
        }
        (Some(_), Some(_)) => ServerCpu::NotVisible,
        _ => ServerCpu::Embedded,
    };
    Ok(Window {
        scheduled: scheduled_before(&jobs, end),
        fired: in_window.len() as u64 - missed,
        missed,
        lags_us,
        jobsd_ticks: jobsd_after.saturating_sub(jobsd_before),
        server,
        wall,
        created,
        warning,
    })
}

/// How many scheduled times of `jobs` (periodic, every `jobs.every`) fall
/// from their first due time until before `end`.
fn scheduled_before(jobs: &LogJobs, end: DateTime<Utc>) -> u64 {
    let every_us = jobs.every.map_or(0, |e| e.as_micros()) as i64;
    (0..jobs.count)
        .map(|i| {
            let span_us = (end - jobs.due(i)).num_microseconds().unwrap_or(0);
            match (span_us, every_us) {
                (s, _) if s <= 0 => 0,
                (_, 0) => 1,
                // Times due, due + every, … before end.
                (s, e) => ((s + e - 1) / e) as u64,
            }
        })
        .sum()
}

fn figures(ctx: &Ctx<'_>, w: &Window) -> Vec<Figure> {
    let (n, interval) = (ctx.args.steady_jobs, ctx.args.steady_interval);
    let seconds = ctx.args.steady_duration.as_secs_f64();
    let mut offered_note = format!(
        "{n} periodic jobs every {:.3} s, phases spread evenly; created in {:.2} s ({})",
        interval.as_secs_f64(),
        w.created.elapsed.as_secs_f64(),
        w.created.path
    );
    if let Some(warning) = &w.warning {
        offered_note = format!("{offered_note}; {warning}");
    }
    let unfired = w.scheduled.saturating_sub(w.fired + w.missed);
    let mut figures = vec![
        Figure::new(
            SCENARIO,
            "fires/s offered",
            n as f64 / interval.as_secs_f64(),
            "fires/s",
        )
        .note(offered_note),
        Figure::new(SCENARIO, "fires/s achieved", w.fired as f64 / seconds, "fires/s")
            .target(Cmp::AtLeast, w.scheduled as f64 / seconds)
            .note(format!(
                "{} of the {} times scheduled in the {seconds:.0} s window ran, {} missed, {unfired} without a run; \
                 aim: {} with p99 ≤ {TARGET_P99_MS:.0} ms",
                w.fired, w.scheduled, w.missed, show(AIM_FIRES_PER_SECOND, "fires/s")
            )),
    ];
    figures.extend(lag_figures(
        SCENARIO,
        "start lag",
        &w.lags_us,
        &format!("{} runs, started_at − scheduled_for", w.lags_us.len()),
        Some(TARGET_P99_MS),
    ));
    figures.push(
        Figure::new(SCENARIO, "missed runs", w.missed as f64, "runs")
            .target(Cmp::AtMost, 0.0)
            .note("runs scheduled in the window in state missed (the job's previous run still queued or running); 0 below capacity"),
    );
    let per_fire_us = |ticks: u64| cpu_seconds(ticks) * 1e6 / w.fired.max(1) as f64;
    let window = format!(
        "% of one core over the {:.1} s window",
        w.wall.as_secs_f64()
    );
    let embedded = match w.server {
        ServerCpu::Embedded => format!(
            "; {} embedded, no database server: this is all the service's CPU",
            ctx.backend_name()
        ),
        _ => String::new(),
    };
    figures.push(
        Figure::new(
            SCENARIO,
            "CPU, jobsd",
            cpu_percent(w.jobsd_ticks, w.wall),
            "%",
        )
        .note(format!(
            "{window}; the replica's utime + stime (/proc/<pid>/stat); {:.0} µs per fire{embedded}",
            per_fire_us(w.jobsd_ticks)
        )),
    );
    match &w.server {
        ServerCpu::Server(pg) => {
            figures.push(
                Figure::new(SCENARIO, "CPU, PostgreSQL", cpu_percent(pg.all, w.wall), "%").note(format!(
                    "{window}; every postgres process on this host plus the postmaster's exited children \
                     (the whole server, other clients included); {:.0} µs per fire",
                    per_fire_us(pg.all)
                )),
            );
            figures.push(
                Figure::new(
                    SCENARIO,
                    "CPU, PostgreSQL backends of the bench database",
                    cpu_percent(pg.database, w.wall),
                    "%",
                )
                .note(format!(
                    "{window}; backends whose process title names the database, while they lived; {:.0} µs per fire",
                    per_fire_us(pg.database)
                )),
            );
        }
        ServerCpu::NotVisible => say(
            SCENARIO,
            "no postgres process visible in /proc: PostgreSQL's CPU not measured",
        ),
        ServerCpu::Embedded => {}
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(count: usize, every_ms: u64) -> LogJobs<'static> {
        LogJobs {
            prefix: PREFIX,
            count,
            first_due: "2030-01-01T00:00:00Z".parse().unwrap(),
            spread: Duration::from_millis(every_ms),
            every: Some(Duration::from_millis(every_ms)),
        }
    }

    #[test]
    fn counts_the_scheduled_times_inside_the_window() {
        let j = jobs(4, 1000);
        let start = j.first_due;
        let at = |ms: i64| start + chrono::Duration::milliseconds(ms);
        assert_eq!(j.due(1), at(250), "phases spread over the interval");
        // A whole number of intervals: N per interval.
        assert_eq!(scheduled_before(&j, at(2000)), 8);
        // 2.5 s: the jobs at 0 and 250 ms fire a third time.
        assert_eq!(scheduled_before(&j, at(2500)), 10);
        // Half-open: a time at the end does not count.
        assert_eq!(scheduled_before(&j, at(250)), 1);
        assert_eq!(scheduled_before(&j, start), 0);
        let j = jobs(3, 1000);
        assert_eq!(j.due(1), at(333) + chrono::Duration::microseconds(333));
        assert_eq!(scheduled_before(&j, at(30_000)), 90);
    }
}
