//! One-shot jobs: paused and resumed while they run (bug 1), and PATCHed
//! while they fire (bug 2).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;

use super::{job_state, wait_job, wait_running};
use crate::scheduling::{create, runs_of, soon, wait_runs};
use crate::support::{assert_stays, TestApp};

// --- Bug 1: a one-shot job paused while its run runs, then resumed, ran
// a second time.

#[tokio::test]
async fn bug1_a_one_shot_job_paused_and_resumed_while_it_runs_runs_once() {
    let app = TestApp::start().await;
    create(
        &app,
        json!({"job_id": "once", "handler": "sleep", "kwargs": {"seconds": 1.5}}),
    )
    .await;
    let run = wait_running(&app, "once").await;
    let (status, body) = app.put("/api/v1/jobs/once?state=paused").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.put("/api/v1/jobs/once?state=running").await;
    assert_eq!(status, 200, "{body}");
    let (_, now) = app
        .get(&format!("/api/v1/runs/{}", run["run_id"].as_str().unwrap()))
        .await;
    assert_eq!(
        now["run"]["state"], "running",
        "the scenario needs the pause and resume to happen while the run runs"
    );

    wait_job(&app, "once", "completed", Duration::from_secs(10)).await;
    assert_stays(
        "one run of the one-shot job",
        Duration::from_secs(2),
        || async { runs_of(&app, "once").await.len() == 1 },
    )
    .await;
    let runs = runs_of(&app, "once").await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["state"], "succeeded", "{runs:#?}");
    assert_eq!(job_state(&app, "once").await, "completed");
}

#[tokio::test]
async fn bug1_a_fired_one_shot_job_paused_until_its_run_ended_completes_and_never_fires_again() {
    let app = TestApp::start().await;
    create(
        &app,
        json!({"job_id": "once", "handler": "sleep", "kwargs": {"seconds": 1}}),
    )
    .await;
    wait_running(&app, "once").await;
    let (status, body) = app.put("/api/v1/jobs/once?state=paused").await;
    assert_eq!(status, 200, "{body}");
    wait_runs(&app, "once", "succeeded", 1, Duration::from_secs(10)).await;
    // Its run ended: the job is done, paused or not.
    wait_job(&app, "once", "completed", Duration::from_secs(5)).await;

    // Resuming it cannot fire it again.
    let (status, body) = app.put("/api/v1/jobs/once?state=running").await;
    assert!(
        status == 409 && body["error"].as_str().unwrap_or("").contains("completed"),
        "resuming a completed one-shot job: {status} {body}"
    );
    assert_stays(
        "one run of the one-shot job",
        Duration::from_secs(2),
        || async { runs_of(&app, "once").await.len() == 1 },
    )
    .await;
    assert_eq!(job_state(&app, "once").await, "completed");
}

// --- Bug 2: PATCHes racing a one-shot job's firing left it `running`
// forever with its one run done.

#[tokio::test]
async fn bug2_patches_racing_one_shot_firings_leave_every_job_completed_with_one_run() {
    let app = TestApp::start().await;
    const JOBS: usize = 20;
    const CLIENTS: usize = 4;
    let when = soon(2000);
    for i in 0..JOBS {
        create(
            &app,
            json!({"job_id": format!("p{i}"), "handler": "log", "kwargs": {"message": "p"},
                   "when": when.to_rfc3339()}),
        )
        .await;
    }
    // Clients PATCH the descriptions, each cycling over every job, from
    // before the jobs are due until well after their runs ended.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (client, base, stop) = (app.client.clone(), app.base.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut answers: Vec<(u16, String)> = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let job = format!("p{}", (n + c * JOBS / CLIENTS) % JOBS);
                let resp = client
                    .patch(format!("{base}/api/v1/jobs/{job}"))
                    .json(&json!({"description": format!("client {c}, change {n}")}))
                    .send()
                    .await
                    .expect("PATCH sent");
                let status = resp.status().as_u16();
                answers.push((status, resp.text().await.unwrap_or_default()));
                n += 1;
            }
            answers
        }));
    }
    let load_until = when + chrono::Duration::milliseconds(1500);
    let left = (load_until - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }

    // Every PATCH was applied, or refused clearly after its bounded retries.
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let unclear: Vec<&(u16, String)> = answers
        .iter()
        .filter(|(s, body)| !(*s == 200 || (*s == 409 && body.contains("try again"))))
        .collect();
    assert!(unclear.is_empty(), "unexpected answers: {unclear:?}");
    assert!(
        ok * 10 >= answers.len() * 9,
        "nearly every PATCH applies ({ok} of {})",
        answers.len()
    );

    let settled = wait_for_all_completed(&app, JOBS).await;
    assert!(settled.is_empty(), "jobs not completed: {settled:#?}");
    for i in 0..JOBS {
        let job = format!("p{i}");
        let runs = runs_of(&app, &job).await;
        assert_eq!(runs.len(), 1, "{job}: exactly one run: {runs:#?}");
        assert_eq!(runs[0]["state"], "succeeded", "{job}: {runs:#?}");
    }
}

/// Waits up to 10 s for the jobs `p0..` to read `completed`; returns the
/// ones that did not, with their state and runs.
async fn wait_for_all_completed(app: &TestApp, jobs: usize) -> Vec<(String, String, usize)> {
    let start = Instant::now();
    loop {
        let mut stuck = Vec::new();
        for i in 0..jobs {
            let job = format!("p{i}");
            let state = job_state(app, &job).await;
            if state != "completed" {
                stuck.push((job.clone(), state, runs_of(app, &job).await.len()));
            }
        }
        if stuck.is_empty() || start.elapsed() > Duration::from_secs(10) {
            return stuck;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
