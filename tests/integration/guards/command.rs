//! `--command-allow`: the `command` handler runs only the listed programs,
//! compared by canonical path; another is refused when the job is created
//! (400 naming `kwargs/program`) and, should the list change, when it runs.

use std::time::Duration;

use serde_json::json;

use crate::scheduling::{create, wait_runs};
use crate::support::{assert_error, TestApp, TestDb};

const FLAGS: &[&str] = &["--enable-command-handler", "--command-allow", "echo"];

#[tokio::test]
async fn only_listed_programs_can_be_created_and_run() {
    let app = TestApp::start_with(FLAGS).await;
    let resp = app
        .post(
            "/api/v1/jobs/command?job_id=shell",
            json!({"program": "sh", "args": ["-c", "id"]}),
        )
        .await;
    assert_error(&resp, 400, "is not in --command-allow (echo = /");
    assert_eq!(resp.1["problems"][0]["field"], "kwargs/program");
    let resp = app
        .post(
            "/api/v1/jobs",
            json!({"handler": "command", "kwargs": {"program": "jobsd-no-such-tool"}}),
        )
        .await;
    assert_error(&resp, 400, "not found in jobsd's PATH");
    let (_, jobs) = app.get("/api/v1/jobs").await;
    assert_eq!(jobs["jobs_count"], 0, "nothing stored: {jobs}");

    create(&app, json!({"job_id": "hello", "handler": "command", "kwargs": {"program": "echo", "args": ["hi"]}})).await;
    let runs = wait_runs(&app, "hello", "succeeded", 1, Duration::from_secs(20)).await;
    assert_eq!(runs[0]["result"]["stdout"], "hi\n");

    // Another name of the same file is the same program.
    let echo = std::fs::canonicalize(which("echo")).unwrap();
    let (status, body) = app
        .post(
            "/api/v1/jobs/command?job_id=by-path",
            json!({"program": echo.to_str().unwrap()}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_program_taken_off_the_list_is_refused_when_it_runs() {
    let app =
        TestApp::start_with(&["--enable-command-handler", "--command-allow", "echo,sh"]).await;
    create(
        &app,
        json!({"job_id": "shell", "handler": "command", "state": "paused", "periodically": "1 day",
               "max_retries": 3, "kwargs": {"program": "sh", "args": ["-c", "echo ran"]}}),
    )
    .await;
    let db = app.stop().await;
    let app = TestApp::start_on(db, FLAGS).await;
    let (status, body) = app.post("/api/v1/jobs/shell/run", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let runs = wait_runs(&app, "shell", "failed", 1, Duration::from_secs(20)).await;
    assert_eq!(runs[0]["attempt"], 1, "fatal, not retried: {}", runs[0]);
    let error = runs[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"sh\"") && error.contains("is not in --command-allow"),
        "{error}"
    );
    assert!(runs[0]["result"].is_null());
}

#[tokio::test]
async fn a_listed_program_that_does_not_exist_stops_start_up() {
    let db = TestDb::new();
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_jobsd"))
            .args(["--database-url", &db.url, "--bind", "127.0.0.1:0"])
            .args([
                "--enable-command-handler",
                "--command-allow",
                "jobsd-no-such-tool",
            ])
            .output(),
    )
    .await
    .expect("jobsd exits in time")
    .expect("jobsd runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--command-allow: \"jobsd-no-such-tool\" is not found in jobsd's PATH"),
        "{stderr}"
    );
}

/// Where PATH finds `program`.
fn which(program: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} in PATH"))
}
