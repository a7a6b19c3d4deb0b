//! Regression tests for the robustness fixes. Each test's name starts
//! with the number of the bug it catches (as the issue numbers them), and
//! each fails on the code before the fix; two more, found by these, cover
//! ways of ending a run that the fix first missed (an operator override:
//! `lock_keys::bug3_an_operator_…`, `lock_keys::bug8_a_deleted_jobs_run_…`).

mod lock_keys;
mod max_instances;
mod one_shot;
mod store;
mod wake_ups;
mod workers;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::scheduling::runs_of;
use crate::support::{wait_for, Replica, TestApp};

/// The job's runs (newest first) as a replica lists them.
async fn replica_runs(r: &Replica, job_id: &str) -> Vec<Value> {
    let (status, body) = r
        .get(&format!("/api/v1/jobs/{job_id}/runs?limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["runs"].as_array().cloned().unwrap_or_default()
}

async fn job_state(app: &TestApp, job_id: &str) -> String {
    let (status, body) = app.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(status, 200, "{body}");
    body["job"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until the job reads `state`; names the state it is stuck in.
async fn wait_job(app: &TestApp, job_id: &str, state: &str, deadline: Duration) {
    let start = Instant::now();
    loop {
        let now = job_state(app, job_id).await;
        if now == state {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "job {job_id} should be {state} within {deadline:?}; it is {now}; runs: {:#?}",
            runs_of(app, job_id).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first run of `job_id` once it is `running`.
async fn wait_running(app: &TestApp, job_id: &str) -> Value {
    wait_for(
        &format!("a running run of {job_id}"),
        Duration::from_secs(10),
        || async {
            runs_of(app, job_id)
                .await
                .into_iter()
                .find(|r| r["state"] == "running")
        },
    )
    .await
}

async fn runs_count(app: &TestApp, query: &str) -> i64 {
    let (status, body) = app.get(&format!("/api/v1/runs?{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["runs_count"].as_i64().unwrap_or(-1)
}
