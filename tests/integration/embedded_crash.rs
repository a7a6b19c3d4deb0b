//! The embedded store after `kill -9`: nothing acknowledged is lost (WAL),
//! and a restart on the same file rescues the run the killed process was
//! executing once its lease expires. SQLite only: on PostgreSQL the same
//! guarantees are the replica tests' (`replicas.rs`), where another replica
//! takes over.

use std::time::Duration;

use jobsd::store::Backend;
use serde_json::{json, Value};

use crate::support::{wait_for, Replica, TestDb};

#[tokio::test]
async fn kill_9_loses_nothing_acknowledged_and_the_restart_rescues_its_run() {
    let db = TestDb::on(Backend::Sqlite);
    let mut first = Replica::spawn(&db, "crash-a", &[]).await;
    let (status, body) = first
        .post(
            "/api/v1/jobs",
            json!({"job_id": "long", "handler": "sleep", "kwargs": {"seconds": 2},
                   "periodically": "1 day", "state": "paused", "max_retries": 1}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = first.post("/api/v1/jobs/long/run", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let run_id = body["run"]["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    wait_for("the run to start", Duration::from_secs(10), || async {
        let (_, run) = first.get(&format!("/api/v1/runs/{run_id}")).await;
        (run["run"]["state"] == "running").then_some(())
    })
    .await;

    // Writers keep creating jobs while the process is killed: every job
    // whose creation was answered 201 must be there after the restart.
    let base = first.base.clone();
    let writer = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut acknowledged = Vec::new();
        // At most one page of the listing below.
        for i in 0..1000 {
            let job_id = format!("w-{i}");
            let sent = client
                .post(format!("{base}/api/v1/jobs"))
                .json(
                    &json!({"job_id": job_id, "handler": "log", "kwargs": {"message": "x"},
                              "periodically": "1 day"}),
                )
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().as_u16() == 201 => acknowledged.push(job_id),
                _ => break,
            }
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal("KILL");
    first.wait_exit().await;
    let acknowledged = writer
        .await
        .expect("the writer ends when the process is gone");
    assert!(
        acknowledged.len() > 10,
        "jobs were being written at the kill"
    );

    // Same file, a new process: the lock died with the old one.
    let second = Replica::spawn(&db, "crash-b", &[]).await;
    let (status, jobs) = second.get("/api/v1/jobs?limit=1000&job_type=user").await;
    assert_eq!(status, 200, "{jobs}");
    let stored: std::collections::HashSet<&str> = jobs["jobs"]
        .as_array()
        .map(|a| a.iter().filter_map(|j| j["job_id"].as_str()).collect())
        .unwrap_or_default();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");

    // The interrupted run: its lease (2 s in these tests) runs out, the
    // restarted process rescues it and runs it again.
    let run: Value = wait_for(
        "the run to be rescued and run again",
        Duration::from_secs(30),
        || async {
            let (_, run) = second.get(&format!("/api/v1/runs/{run_id}")).await;
            (run["run"]["state"] == "succeeded").then(|| run["run"].clone())
        },
    )
    .await;
    assert_eq!(run["attempt"], 2, "{run}");
    assert_eq!(run["instance"], "crash-b", "{run}");
    let states: Vec<&str> = run["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|e| e["to"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        states,
        [
            "queued",
            "running",
            "dead",
            "queued",
            "running",
            "succeeded"
        ],
        "{run}"
    );
}
