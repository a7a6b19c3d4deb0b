//! lag: how late runs start after their due time.
//!
//! Two series on one replica, one after the other: jobs due at distinct
//! instants 20 ms apart (50 jobs/s), then 2 ms apart (500 jobs/s), the first
//! ~2 s ahead so that creating them is over before any is due. Each run's
//! lag is `started_at - scheduled_for`, both written by the database, so no
//! clock but PostgreSQL's is involved.

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use super::client::{Api, CreatePath};
use super::load::percentile;
use super::report::{Cmp, Figure};
use super::{say, Ctx};

const SCENARIO: &str = "lag";
/// p99 target at 50 jobs/s.
const TARGET_P99_MS: f64 = 5.0;
/// Time between the creation and the first due time.
const LEAD: Duration = Duration::from_secs(2);

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
    let pace = chrono::Duration::microseconds(1_000_000 / i64::from(series.rate));
    // Single creations are slower: leave them time to finish before the first is due.
    let lead = match ctx.create_path() {
        CreatePath::Bulk(_) => LEAD,
        CreatePath::Single(_) => LEAD + Duration::from_millis(series.count as u64),
    };
    let first_due = Utc::now() + chrono::Duration::from_std(lead)?;
    let prefix = format!("lag{}-", series.rate);
    let specs: Vec<Value> = (0..series.count)
        .map(|i| {
            let due = first_due + pace * i as i32;
            json!({"job_id": format!("{prefix}{i}"), "handler": "log",
                   "kwargs": {"message": "lag"},
                   "when": due.to_rfc3339_opts(SecondsFormat::Micros, true)})
        })
        .collect();
    say(
        SCENARIO,
        format_args!(
            "{} jobs due {} ms apart",
            series.count,
            pace.num_milliseconds()
        ),
    );
    let created = api.create_jobs(specs, ctx.create_path()).await?;
    let overran = Utc::now() - first_due;
    let warning = (overran > chrono::Duration::zero()).then(|| {
        format!(
            "creation ({}) overran the first due time by {} ms",
            created.path,
            overran.num_milliseconds()
        )
    });
    api.wait_succeeded(done_before + series.count as u64, Duration::from_secs(30))
        .await?;
    let runs = api.runs_all(Some("succeeded")).await?;
    let mut lags: Vec<i64> = runs
        .iter()
        .filter(|r| r.job_id.starts_with(&prefix))
        .filter_map(|r| r.started_at.map(|s| s - r.scheduled_for))
        .filter_map(|lag| lag.num_microseconds())
        .collect();
    if lags.len() != series.count {
        bail!("{} of {} runs have a start time", lags.len(), series.count);
    }
    lags.sort_unstable();
    Ok(Lags {
        sorted_us: lags,
        warning,
    })
}

fn series_figures(series: &Series, lags: &Lags) -> Vec<Figure> {
    let ms = |p: f64| percentile(&lags.sorted_us, p).map_or(0.0, |us| us as f64 / 1000.0);
    let label = format!("{} jobs/s", series.rate);
    let mut note = format!("{} jobs, started_at − scheduled_for", series.count);
    if let Some(warning) = &lags.warning {
        note = format!("{note}; {warning}");
    }
    let p99 = Figure::new(SCENARIO, format!("p99 at {label}"), ms(99.0), "ms").note(note.clone());
    let p99 = if series.rate == 50 {
        p99.target(Cmp::AtMost, TARGET_P99_MS)
    } else {
        p99
    };
    vec![
        Figure::new(SCENARIO, format!("p50 at {label}"), ms(50.0), "ms").note(note.clone()),
        p99,
        Figure::new(SCENARIO, format!("max at {label}"), ms(100.0), "ms").note(note),
    ]
}
