//! failover: how long a run of a replica killed with `kill -9` waits
//! before it starts again on another replica.
//!
//! Two replicas with `--lease` (default 2 s). A paused job with the `sleep`
//! handler (10 s, `max_retries: 1`) is triggered once; whichever replica
//! claims the run (its `instance`) is killed with SIGKILL. The run's
//! `history` then shows `dead` (the survivor's supervisor saw the lease
//! expire) and `running` again; both are measured from the kill (the
//! benchmark's clock; the history's times are the database's, the same clock
//! when PostgreSQL runs on this host). Expect about one lease plus up to a
//! quarter lease (the supervisor's period) plus the claim.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::Utc;
use serde_json::json;

use super::client::{seconds_between, Api, HistoryEntry, Run};
use super::report::Figure;
use super::{say, Ctx};

const SCENARIO: &str = "failover";
const JOB_ID: &str = "bench-failover";

pub(crate) async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Vec<Figure>> {
    let lease = ctx.args.lease;
    let lease_flag = format!("{}ms", lease.as_millis());
    // A replica must be able to stop its handlers within its lease (see
    // `worker::check_lease_settings`): a quarter of the lease is the grace.
    let grace_flag = format!("{}ms", lease.as_millis() / 4);
    let extra = [
        "--lease",
        lease_flag.as_str(),
        "--cancel-grace",
        grace_flag.as_str(),
    ];
    let a = ctx.spawn("bench-a", &extra).await?;
    let b = ctx.spawn("bench-b", &extra).await?;
    let api = Api::new(&a.base)?;
    api.post(
        "/api/v1/jobs",
        &json!({"job_id": JOB_ID, "handler": "sleep", "kwargs": {"seconds": 10},
                "periodically": "1 day", "state": "paused", "max_retries": 1}),
        201,
    )
    .await?;
    let triggered = api
        .post(&format!("/api/v1/jobs/{JOB_ID}/run"), &json!({}), 201)
        .await?;
    let run_id = triggered["run"]["run_id"]
        .as_str()
        .ok_or_else(|| anyhow!("the trigger answered no run_id: {triggered}"))?
        .to_string();
    let running = poll(&api, &run_id, Duration::from_secs(20), |run| {
        run.state == "running"
    })
    .await
    .context("waiting for the run to start")?;
    let owner = running.instance.unwrap_or_default();
    let (mut victim, mut survivor) = match owner.as_str() {
        "bench-a" => (a, b),
        "bench-b" => (b, a),
        other => bail!("the run is on an unknown instance {other:?}"),
    };
    say(
        SCENARIO,
        format_args!("kill -9 {} (lease {lease:?})", victim.instance),
    );
    victim.kill_signal()?;
    let killed_at = Utc::now();
    victim.kill().await?;

    let survivor_api = Api::new(&survivor.base)?;
    let deadline = lease * 5 + Duration::from_secs(30);
    let rerun = poll(&survivor_api, &run_id, deadline, |run| {
        restart_of(&run.history).is_some()
    })
    .await
    .with_context(|| {
        format!(
            "waiting for the run to start again on {}",
            survivor.instance
        )
    })?;
    let Some((dead, restarted)) = restart_of(&rerun.history) else {
        bail!("the run's history lost its restart");
    };
    survivor.kill().await?;
    let note = format!(
        "2 replicas, --lease {:.1} s; run killed on {}, restarted on {}",
        lease.as_secs_f64(),
        victim.instance,
        rerun.instance.as_deref().unwrap_or("?")
    );
    Ok(vec![
        Figure::new(
            SCENARIO,
            "kill → run marked dead",
            seconds_between(killed_at, dead.at),
            "s",
        )
        .note(note.clone()),
        Figure::new(
            SCENARIO,
            "kill → run running again",
            seconds_between(killed_at, restarted.at),
            "s",
        )
        .note(note),
    ])
}

/// The `dead` entry and the first `running` entry after it.
fn restart_of(history: &[HistoryEntry]) -> Option<(&HistoryEntry, &HistoryEntry)> {
    let dead = history.iter().position(|e| e.to == "dead")?;
    let running = history[dead..].iter().find(|e| e.to == "running")?;
    Some((&history[dead], running))
}

/// Reads the run every 10 ms until `done` holds, for at most `deadline`.
async fn poll(
    api: &Api,
    run_id: &str,
    deadline: Duration,
    done: impl Fn(&Run) -> bool,
) -> anyhow::Result<Run> {
    let start = Instant::now();
    loop {
        let run = api.run(run_id).await?;
        if done(&run) {
            return Ok(run);
        }
        if start.elapsed() > deadline {
            bail!(
                "not within {deadline:?}; the run is {} ({:?})",
                run.state,
                run.history
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
