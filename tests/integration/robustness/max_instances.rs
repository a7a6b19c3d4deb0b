//! `max_instances`: exact across replicas (bug 6); a due time that finds
//! its slot held by a running run waits for it, as the runs API shows
//! (bug 12; the store-level rules are in `store.rs`).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::replica_runs;
use crate::scheduling::{create, runs_of, soon, time};
use crate::support::{wait_for, Replica, TestApp, TestDb};

// --- Bug 6: `max_instances` is exact across replicas, manual triggers
// racing the schedulers included.

// PostgreSQL only: two replicas (replicas need PostgreSQL).
#[tokio::test]
async fn bug6_max_instances_holds_across_replicas_under_manual_triggers() {
    const JOBS: usize = 250;
    const SECONDS: i64 = 12;
    let db = TestDb::postgres();
    let (a, b) = tokio::join!(
        Replica::spawn(&db, "mi-a", &[]),
        Replica::spawn(&db, "mi-b", &[])
    );
    let first = soon(2000);
    let jobs: Vec<Value> = (0..JOBS)
        .map(|j| {
            json!({"job_id": format!("solo{j}"), "handler": "sleep",
                   "kwargs": {"seconds": 0.3}, "periodically": "1s",
                   "when": first.to_rfc3339(), "max_instances": 1})
        })
        .collect();
    let (status, body) = a.post("/api/v1/jobs/bulk", json!({ "jobs": jobs })).await;
    assert_eq!(status, 201, "{body}");
    // Clients hammer `POST /jobs/{id}/run` at both replicas around each
    // scheduled time, when the schedulers fire the jobs too: each job's
    // triggers are sent at another offset from its time (-25 to +2 ms, a
    // new one each second), so some commit while a scheduler fires it.
    let client = reqwest::Client::new();
    let mut sends: Vec<(DateTime<Utc>, usize)> = Vec::new();
    for k in 0..SECONDS {
        for j in 0..JOBS {
            let offset = -60 + 3 * ((j * 7 + k as usize * 3) % 21) as i64;
            let at = first + chrono::Duration::seconds(k) + chrono::Duration::milliseconds(offset);
            sends.push((at, j));
        }
    }
    sends.sort();
    let mut triggers = Vec::new();
    for (at, j) in sends {
        tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await;
        for base in [&a.base, &b.base] {
            let request = client
                .post(format!("{base}/api/v1/jobs/solo{j}/run"))
                .send();
            triggers.push(tokio::spawn(async move {
                request.await.map_or(0, |r| r.status().as_u16())
            }));
        }
    }
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for trigger in triggers {
        *statuses.entry(trigger.await.unwrap()).or_default() += 1;
    }
    let (status, _) = a.put("/api/v1/service/state?state=paused").await;
    assert_eq!(status, 200);
    assert!(
        statuses.keys().all(|s| *s == 201 || *s == 409),
        "triggers answer 201 or 409: {statuses:?}"
    );
    assert!(
        statuses.contains_key(&201),
        "some triggers ran: {statuses:?}"
    );

    let mut overlaps = Vec::new();
    for j in 0..JOBS {
        let job = format!("solo{j}");
        let runs = wait_for(
            &format!("every run of {job} ended"),
            Duration::from_secs(20),
            || async {
                let runs = replica_runs(&a, &job).await;
                runs.iter()
                    .all(|r| {
                        !["queued", "running", "waiting"].contains(&r["state"].as_str().unwrap())
                    })
                    .then_some(runs)
            },
        )
        .await;
        let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>, &Value)> = runs
            .iter()
            .filter(|r| r["started_at"].is_string())
            .map(|r| (time(&r["started_at"]), time(&r["finished_at"]), r))
            .collect();
        spans.sort_by_key(|s| s.0);
        assert!(spans.len() >= 3, "{job}: runs executed: {}", spans.len());
        for pair in spans.windows(2) {
            let ((_, end, earlier), (start, _, later)) = (&pair[0], &pair[1]);
            if end > start {
                overlaps.push(format!("{job}:\n{earlier:#}\n{later:#}"));
            }
        }
    }
    assert!(
        overlaps.is_empty(),
        "{} pairs of runs of max_instances: 1 jobs overlap; the first: {}",
        overlaps.len(),
        overlaps[0]
    );
}

// --- Bug 12 (API side): runs waiting for a slot are listed.

#[tokio::test]
async fn bug12_a_run_waiting_for_a_slot_is_listed_by_the_runs_api() {
    let app = TestApp::start().await;
    // Each run outlasts the interval: the next time waits for its slot.
    create(
        &app,
        json!({"job_id": "slow", "handler": "sleep", "kwargs": {"seconds": 2.5},
               "periodically": "1s", "when": soon(300).to_rfc3339(), "max_instances": 1}),
    )
    .await;
    let waiting = wait_for("a waiting run", Duration::from_secs(10), || async {
        let (status, body) = app.get("/api/v1/runs?state=waiting&job_id=slow").await;
        assert_eq!(status, 200, "{body}");
        body["runs"].as_array()?.first().cloned()
    })
    .await;
    assert_eq!(waiting["state"], "waiting", "{waiting}");
    assert!(runs_of(&app, "slow")
        .await
        .iter()
        .any(|r| r["state"] == "waiting" && r["run_id"] == waiting["run_id"]));
    // The run holding the slot ends after the waiting run's time: skipped.
    let run_id = waiting["run_id"].as_str().unwrap();
    let decided = wait_for(
        "the waiting run decided",
        Duration::from_secs(10),
        || async {
            let (_, body) = app.get(&format!("/api/v1/runs/{run_id}")).await;
            (body["run"]["state"] != "waiting").then(|| body["run"].clone())
        },
    )
    .await;
    assert_eq!(decided["state"], "missed", "{decided}");
    assert!(
        decided["error"].as_str().unwrap_or("").contains("skipped"),
        "{decided}"
    );
}
