//! `GET /api/v1/stats` and a job's `run_counts` over HTTP, read from the
//! run counters as runs are queued, run and end.

use std::time::Duration;

use serde_json::{json, Value};

use crate::scheduling::create;
use crate::support::{wait_for, TestApp};

/// A paused daily job of `handler` with `lock_key` "k" (its runs come
/// from manual triggers).
async fn locked_job(app: &TestApp, job_id: &str, handler: &str, kwargs: Value) {
    create(
        app,
        json!({"job_id": job_id, "handler": handler, "kwargs": kwargs,
               "periodically": "1 day", "state": "paused", "lock_key": "k"}),
    )
    .await;
}

async fn trigger(app: &TestApp, job_id: &str) {
    let (status, body) = app
        .post(&format!("/api/v1/jobs/{job_id}/run"), json!(null))
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn stats(app: &TestApp) -> Value {
    let (status, body) = app.get("/api/v1/stats").await;
    assert_eq!(status, 200, "{body}");
    body
}

fn every_state(states: &[&str], set: &[(&str, i64)]) -> Value {
    let mut all = serde_json::Map::new();
    for s in states {
        all.insert(s.to_string(), json!(0));
    }
    for (s, n) in set {
        all.insert(s.to_string(), json!(n));
    }
    Value::Object(all)
}

const JOB_STATES: [&str; 3] = ["running", "paused", "completed"];
const RUN_STATES: [&str; 9] = [
    "queued",
    "waiting",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "missed",
    "dead",
];

#[tokio::test]
async fn stats_and_run_counts_follow_runs() {
    let app = TestApp::start().await;
    assert_eq!(
        stats(&app).await,
        json!({"jobs": every_state(&JOB_STATES, &[]), "runs": every_state(&RUN_STATES, &[]),
               "queue": {"depth": 0, "oldest_due_wait_ms": null}})
    );

    // A one-shot job that runs and completes.
    let (status, body) = app
        .post("/api/v1/jobs/log?job_id=once", json!({"message": "hi"}))
        .await;
    assert_eq!(status, 201, "{body}");
    wait_for(
        "the one-shot job completes",
        Duration::from_secs(20),
        || async {
            let (_, body) = app.get("/api/v1/jobs/once").await;
            (body["job"]["state"] == "completed").then_some(())
        },
    )
    .await;
    let (_, body) = app.get("/api/v1/jobs/once").await;
    assert_eq!(body["job"]["run_counts"], json!({"succeeded": 1}));

    // A sleeping run holds lock key "k"; a run of another job waits for it
    // in the queue.
    locked_job(&app, "holder", "sleep", json!({"seconds": 60})).await;
    locked_job(&app, "waiter", "log", json!({"message": "w"})).await;
    trigger(&app, "holder").await;
    wait_for("the holder runs", Duration::from_secs(10), || async {
        let (_, body) = app.get("/api/v1/jobs/holder").await;
        (body["job"]["run_counts"] == json!({"running": 1})).then_some(())
    })
    .await;
    trigger(&app, "waiter").await;
    let (_, body) = app.get("/api/v1/jobs/waiter").await;
    assert_eq!(body["job"]["run_counts"], json!({"queued": 1}));
    let (_, list) = app.get("/api/v1/jobs").await;
    let listed: Vec<(String, Value)> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["job_id"].as_str().unwrap().to_string(),
                j["run_counts"].clone(),
            )
        })
        .collect();
    assert_eq!(
        listed.iter().find(|(id, _)| id == "holder").map(|(_, c)| c),
        Some(&json!({"running": 1})),
        "{list}"
    );

    let body = stats(&app).await;
    assert_eq!(
        body["jobs"],
        every_state(&JOB_STATES, &[("paused", 2), ("completed", 1)])
    );
    assert_eq!(
        body["runs"],
        every_state(
            &RUN_STATES,
            &[("succeeded", 1), ("running", 1), ("queued", 1)]
        )
    );
    assert_eq!(body["queue"]["depth"], 1);
    let waited = body["queue"]["oldest_due_wait_ms"].as_i64();
    assert!(waited.is_some_and(|ms| (0..60_000).contains(&ms)), "{body}");

    // Deleting the waiting job removes its run from the counts.
    let (status, body) = app.delete("/api/v1/jobs/waiter").await;
    assert!(status == 200 || status == 204, "{status} {body}");
    let body = stats(&app).await;
    assert_eq!(body["runs"]["queued"], 0, "{body}");
    assert_eq!(
        body["queue"],
        json!({"depth": 0, "oldest_due_wait_ms": null})
    );
}
