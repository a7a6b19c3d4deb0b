//! idle: what one replica costs while it holds many jobs that are not due.
//!
//! Creates `--idle-jobs` one-shot jobs due in a year, restarts the replica
//! (SIGTERM, then a new process on the same database) so its memory shows
//! the steady state rather than the creation burst, waits `--idle-settle`,
//! then samples its CPU time (`/proc/<pid>/stat`, user + system) over
//! `--idle-duration`, and reads its resident memory (`/proc/<pid>/status`:
//! VmRSS now, VmHWM the peak since the restart). A database server's own
//! CPU is not included; an embedded store's is (it runs in the replica).

use std::time::Instant;

use anyhow::{bail, Context};
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use super::client::Api;
use super::proc::{cpu_percent, cpu_ticks, memory};
use super::report::{Cmp, Figure};
use super::{say, Ctx};

const SCENARIO: &str = "idle";
const TARGET_CPU_PERCENT: f64 = 1.0;
const TARGET_RSS_MB: f64 = 150.0;
const INSTANCE: &str = "bench-idle";

fn megabytes(kib: u64) -> f64 {
    (kib * 1024) as f64 / 1e6
}

pub(crate) async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Figure>> {
    let n = ctx.args.idle_jobs;
    let mut service = ctx.spawn(INSTANCE, &[]).await?;
    let api = Api::new(&service.base)?;
    let due = (Utc::now() + chrono::Duration::days(365)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let specs: Vec<Value> = (0..n)
        .map(|_| json!({"handler": "log", "kwargs": {"message": "idle"}, "when": due}))
        .collect();
    say(SCENARIO, format_args!("creating {n} jobs due in a year"));
    let created = api.create_jobs(specs, ctx.create_path()).await?;
    service
        .stop()
        .await
        .context("stopping the replica after creation")?;
    drop(service);

    say(SCENARIO, "restarted; settling");
    let mut service = ctx.spawn(INSTANCE, &[]).await?;
    let api = Api::new(&service.base)?;
    let listed: Value = api.get("/api/v1/jobs?limit=1").await?;
    let held = listed["jobs_count"].as_u64().unwrap_or(0);
    if held != n as u64 {
        bail!("the replica holds {held} jobs, expected {n}");
    }
    tokio::time::sleep(ctx.args.idle_settle).await;

    let pid = service.pid();
    say(
        SCENARIO,
        format_args!("sampling CPU for {:?}", ctx.args.idle_duration),
    );
    let (ticks_before, started) = (cpu_ticks(pid)?, Instant::now());
    tokio::time::sleep(ctx.args.idle_duration).await;
    let (ticks_after, wall) = (cpu_ticks(pid)?, started.elapsed());
    let mem = memory(pid)?;
    service.kill().await?;

    let cpu_percent = cpu_percent(ticks_after.saturating_sub(ticks_before), wall);
    let window = format!(
        "{n} jobs not due; {:.0} s window after {:.0} s settling",
        wall.as_secs_f64(),
        ctx.args.idle_settle.as_secs_f64()
    );
    let scope = if ctx.embedded() {
        format!(
            "{} embedded: the replica's CPU is all the service uses (no database server)",
            ctx.backend_name()
        )
    } else {
        format!("{}'s own CPU not included", ctx.backend_name())
    };
    Ok(vec![
        Figure::new(SCENARIO, "CPU, one replica", cpu_percent, "%")
            .target(Cmp::Below, TARGET_CPU_PERCENT)
            .note(format!("% of one core; {window}; {scope}")),
        Figure::new(
            SCENARIO,
            "resident memory (VmRSS)",
            megabytes(mem.rss_kib),
            "MB",
        )
        .target(Cmp::Below, TARGET_RSS_MB)
        .note(format!("after the window; {n} jobs held")),
        Figure::new(
            SCENARIO,
            "peak memory (VmHWM)",
            megabytes(mem.hwm_kib),
            "MB",
        )
        .note("peak since the restart"),
        Figure::new(SCENARIO, "create rate", created.per_second(), "jobs/s").note(format!(
            "{n} jobs in {:.1} s, {}",
            created.elapsed.as_secs_f64(),
            created.path
        )),
    ])
}
