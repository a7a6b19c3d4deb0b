//! Bounded history through the service (README "Bounded history"): the
//! maintenance loop keeps a busy job's stored runs bounded, honours a job's
//! `keep_runs`, and `--retention 0` keeps everything. Runs on both backends.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{assert_error, wait_for, TestApp};

/// A `log` job every second.
fn every_second(job_id: &str) -> Value {
    json!({"job_id": job_id, "handler": "log", "kwargs": {"message": job_id}, "periodically": "1s"})
}

/// The stored runs of `job_id`, newest first.
async fn stored_runs(app: &TestApp, job_id: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/api/v1/jobs/{job_id}/runs?limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["runs"].as_array().cloned().unwrap_or_default()
}

fn is_finished(run: &Value) -> bool {
    !matches!(
        run["state"].as_str(),
        Some("queued" | "waiting" | "running")
    )
}

fn finished(runs: &[Value]) -> Vec<Value> {
    runs.iter().filter(|r| is_finished(r)).cloned().collect()
}

/// With `--retention 2s`, a job firing every second keeps only its last
/// few seconds of finished runs while it keeps running.
#[tokio::test]
async fn a_busy_jobs_history_stays_bounded() {
    let app = TestApp::start_with(&["--retention", "2s", "--retention-interval", "200ms"]).await;
    let (status, body) = app.post("/api/v1/jobs", every_second("tick")).await;
    assert_eq!(status, 201, "{body}");
    // Bound: two seconds of one run a second, plus the one pass interval
    // and a run finishing meanwhile; without pruning it would reach 10.
    const BOUND: usize = 5;
    let mut seen = std::collections::HashSet::new();
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let runs = stored_runs(&app, "tick").await;
        let done = finished(&runs);
        assert!(
            done.len() <= BOUND,
            "{} finished runs are stored after {:?}: {runs:#?}",
            done.len(),
            start.elapsed()
        );
        seen.extend(
            runs.iter()
                .filter_map(|r| r["run_id"].as_str().map(String::from)),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.len() >= 7,
        "runs kept happening: {} seen in 10 s",
        seen.len()
    );
}

/// A job with `keep_runs: 3` keeps exactly its newest three finished runs
/// (the retention, 14 days by default, would keep them all).
#[tokio::test]
async fn keep_runs_keeps_the_newest_finished_runs() {
    let app = TestApp::start_with(&["--retention-interval", "200ms"]).await;
    let mut job = every_second("kept");
    job["keep_runs"] = json!(3);
    let (status, body) = app.post("/api/v1/jobs", job).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["job"]["keep_runs"], 3);
    let mut seen = std::collections::HashSet::new();
    let start = tokio::time::Instant::now();
    while seen.len() < 6 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "six runs within 20 s; seen {seen:?}"
        );
        for run in stored_runs(&app, "kept").await {
            seen.insert(run["run_id"].as_str().unwrap_or_default().to_string());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.put("/api/v1/jobs/kept?state=paused").await.0, 200);
    let kept = wait_for(
        "three finished runs and none active",
        Duration::from_secs(20),
        || async {
            let runs = stored_runs(&app, "kept").await;
            (runs.len() == 3 && finished(&runs).len() == 3).then_some(runs)
        },
    )
    .await;
    // The newest three of every run seen (run ids are time-ordered).
    let mut kept_ids: Vec<String> = kept
        .iter()
        .map(|r| r["run_id"].as_str().unwrap_or_default().to_string())
        .collect();
    kept_ids.sort();
    seen.extend(kept_ids.iter().cloned());
    let mut all: Vec<String> = seen.into_iter().collect();
    all.sort();
    let newest: Vec<String> = all[all.len() - 3..].to_vec();
    assert_eq!(kept_ids, newest, "{kept:#?}");

    // A PATCH changes it, and null clears it.
    let (status, body) = app
        .patch("/api/v1/jobs/kept", json!({"keep_runs": 1}))
        .await;
    assert_eq!(
        (status, &body["job"]["keep_runs"]),
        (200, &json!(1)),
        "{body}"
    );
    wait_for("one finished run", Duration::from_secs(20), || async {
        (stored_runs(&app, "kept").await.len() == 1).then_some(())
    })
    .await;
    let (status, body) = app
        .patch("/api/v1/jobs/kept", json!({"keep_runs": null}))
        .await;
    assert_eq!(
        (status, &body["job"]["keep_runs"]),
        (200, &Value::Null),
        "{body}"
    );
}

/// `keep_runs` must be a whole number of at least 1: anything else is a
/// 400 naming it, on create and on PATCH, and changes nothing.
#[tokio::test]
async fn a_bad_keep_runs_is_refused_naming_it() {
    let app = TestApp::start().await;
    for bad in [json!(0), json!(-1), json!(1.5), json!("3"), json!(true)] {
        let mut job = every_second("bad");
        job["keep_runs"] = bad.clone();
        assert_error(&app.post("/api/v1/jobs", job).await, 400, "keep_runs");
    }
    assert_eq!(app.get("/api/v1/jobs/bad").await.0, 404);
    assert_error(
        &app.post("/api/v1/jobs/log?keep_runs=0", json!({"message": "x"}))
            .await,
        400,
        "keep_runs",
    );
    let mut job = every_second("good");
    job["keep_runs"] = json!(2);
    assert_eq!(app.post("/api/v1/jobs", job).await.0, 201);
    for bad in [json!(0), json!(-3), json!(2.5), json!("many")] {
        assert_error(
            &app.patch("/api/v1/jobs/good", json!({"keep_runs": bad}))
                .await,
            400,
            "keep_runs",
        );
    }
    assert_eq!(app.get("/api/v1/jobs/good").await.1["job"]["keep_runs"], 2);
}

/// `--retention 0` keeps every finished run.
#[tokio::test]
async fn retention_zero_keeps_every_run() {
    let app = TestApp::start_with(&["--retention", "0", "--retention-interval", "100ms"]).await;
    let (status, body) = app.post("/api/v1/jobs", every_second("all")).await;
    assert_eq!(status, 201, "{body}");
    let mut seen = std::collections::HashSet::new();
    let start = tokio::time::Instant::now();
    loop {
        let runs = stored_runs(&app, "all").await;
        let ids: std::collections::HashSet<String> = runs
            .iter()
            .filter_map(|r| r["run_id"].as_str().map(String::from))
            .collect();
        assert!(
            seen.is_subset(&ids),
            "a run was pruned: {seen:?} then {ids:?}"
        );
        seen = ids;
        if finished(&runs).len() >= 5 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "five finished runs within 20 s: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
