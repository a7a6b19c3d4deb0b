//! batch: one batch of `--batch-rows` rows (100,000) for the no-op `log`
//! handler, submitted as one streamed NDJSON body with wait-off set, on
//! one replica of a database of its own.
//!
//! - **rows/s end to end**: rows ÷ (the submit request sent, benchmark
//!   clock → the batch's `finished_at`, store clock), as the drain is timed.
//! - **ingest**: rows ÷ the submit's round trip (the body streamed in,
//!   every row checked, staged and published).
//! - **memory peak**: the replica's `VmHWM` after the batch.
//!
//! The target is relative: rows/s at least twice the one-shot drain's
//! runs/s measured in the same scenario, just before, on the same store
//! (rows need less bookkeeping than runs: no job row, no history).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};

use super::client::{seconds_between, Api};
use super::drain;
use super::proc::memory;
use super::report::{Cmp, Figure};
use super::{say, Ctx};

const SCENARIO: &str = "batch";
/// rows/s ÷ the drain's runs/s.
const TARGET_RATIO: f64 = 2.0;

pub(crate) async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Figure>> {
    let n = ctx.args.batch_rows;
    if n == 0 {
        bail!("--batch-rows must be at least 1");
    }
    say(
        SCENARIO,
        format_args!("the one-shot drain to compare with: {} jobs", ctx.args.jobs),
    );
    let (rounds, _) = drain::measure(ctx)
        .await
        .context("the drain to compare with")?;
    let drain_rate = drain::median(&rounds, |r| r.end_to_end);
    let mut service = ctx.spawn_on(Some("rows"), "bench-batch", &[]).await?;
    let api = Api::new(&service.base)?;
    let mut body = String::with_capacity(n * 24);
    for i in 0..n {
        body.push_str(&format!("{{\"message\":\"noop {i}\"}}\n"));
    }
    say(SCENARIO, format_args!("submitting {n} rows as NDJSON"));
    let sent = Utc::now();
    let began = Instant::now();
    let created = api
        .post_ndjson("/api/v1/batches?handler=log&waitoff=true", body, 201)
        .await?;
    let ingest = began.elapsed().as_secs_f64();
    let id = created["batch"]["batch_id"]
        .as_str()
        .context("the answer has no batch id")?
        .to_string();
    let finished = wait_final(&api, &id, Duration::from_secs(120))
        .await
        .with_context(|| format!("the replica's log ends:\n{}", service.log_tail()))?;
    let (status, success) = (
        finished["status"].as_str().unwrap_or_default().to_string(),
        finished["counts"]["success"].as_u64().unwrap_or(0),
    );
    if success != n as u64 {
        bail!("the batch ended {status} with {success} of {n} rows succeeded");
    }
    let finished_at: DateTime<Utc> =
        serde_json::from_value(finished["finished_at"].clone()).context("finished_at")?;
    let started_at: Option<DateTime<Utc>> =
        serde_json::from_value(finished["started_at"].clone()).ok();
    let end_to_end = n as f64 / seconds_between(sent, finished_at).max(1e-9);
    let workers = started_at.map(|s| n as f64 / seconds_between(s, finished_at).max(1e-9));
    let mem = memory(service.pid())?;
    service.kill().await?;
    let ratio = end_to_end / drain_rate;
    let mut figures = vec![
        Figure::new(SCENARIO, "rows/s end to end", end_to_end, "rows/s").note(format!(
            "{n} rows of the no-op log handler, one NDJSON submit with wait-off, one replica; \
             submit sent → finished_at{}",
            workers.map_or_else(String::new, |w| format!("; workers alone {w:.0} rows/s"))
        )),
        Figure::new(SCENARIO, "rows/s ÷ drain runs/s", ratio, "×")
            .target(Cmp::AtLeast, TARGET_RATIO)
            .note(format!(
                "the one-shot drain in this scenario: {drain_rate:.0} runs/s (median of {} round(s) of {} jobs)",
                rounds.len(),
                ctx.args.jobs
            )),
        Figure::new(SCENARIO, "ingest", n as f64 / ingest.max(1e-9), "rows/s").note(format!(
            "the submit's round trip: {ingest:.2} s for {n} rows streamed, checked, staged and published"
        )),
        Figure::new(
            SCENARIO,
            "memory peak",
            mem.hwm_kib as f64 / 1024.0,
            "MiB",
        )
        .note("the replica's VmHWM after the batch"),
    ];
    figures.retain(|f| f.value.is_finite());
    Ok(figures)
}

async fn wait_final(api: &Api, id: &str, stall: Duration) -> anyhow::Result<serde_json::Value> {
    let mut last_done = -1i64;
    let mut moved = Instant::now();
    loop {
        let got: serde_json::Value = api.get(&format!("/api/v1/batches/{id}")).await?;
        let batch = got["batch"].clone();
        if batch["finished_at"].is_string() {
            return Ok(batch);
        }
        let c = &batch["counts"];
        let done = ["success", "failed", "aborted"]
            .iter()
            .map(|k| c[k].as_i64().unwrap_or(0))
            .sum::<i64>();
        if done != last_done {
            last_done = done;
            moved = Instant::now();
        } else if moved.elapsed() > stall {
            bail!("the batch made no progress for {stall:?}: {batch}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
