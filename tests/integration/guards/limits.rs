//! Size limits: `--max-kwargs-bytes` (on create, bulk create, PATCH and
//! default-job files) and `--max-default-job-file-bytes`.

use std::process::Output;
use std::time::Duration;

use serde_json::json;

use crate::scheduling::create;
use crate::support::{assert_error, wait_for, TestApp};

/// A directory of default-job files, removed afterwards.
pub struct FilesDir(pub std::path::PathBuf);

impl FilesDir {
    pub fn new() -> FilesDir {
        let name = format!("jobsd-guards-{}", uuid::Uuid::new_v4().simple());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).unwrap();
        FilesDir(path)
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for FilesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `jobsd validate` with `args`; it must end within 10 s.
pub async fn validate(args: &[&str]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_jobsd"))
            .arg("validate")
            .args(args)
            .output(),
    )
    .await
    .expect("jobsd validate finishes within 10 s")
    .expect("jobsd validate runs")
}

#[tokio::test]
async fn kwargs_past_the_limit_are_refused_naming_it_and_change_nothing() {
    let app = TestApp::start_with(&["--max-kwargs-bytes", "1000"]).await;
    let big = "x".repeat(1000);
    let resp = app
        .post("/api/v1/jobs/log?job_id=big", json!({"message": big}))
        .await;
    assert_error(
        &resp,
        400,
        "more than the limit of 1000 (--max-kwargs-bytes)",
    );
    assert_eq!(resp.1["problems"][0]["field"], "kwargs");
    let resp = app
        .post(
            "/api/v1/jobs/bulk",
            json!({"jobs": [{"handler": "log", "kwargs": {"message": big}}]}),
        )
        .await;
    assert_error(&resp, 400, "--max-kwargs-bytes");
    let (_, jobs) = app.get("/api/v1/jobs").await;
    assert_eq!(jobs["jobs_count"], 0, "{jobs}");

    create(
        &app,
        json!({"job_id": "small", "handler": "log", "kwargs": {"message": "x"}, "state": "paused"}),
    )
    .await;
    let resp = app
        .patch("/api/v1/jobs/small", json!({"kwargs": {"message": big}}))
        .await;
    assert_error(&resp, 400, "--max-kwargs-bytes");
    let (_, job) = app.get("/api/v1/jobs/small").await;
    assert_eq!(job["job"]["kwargs"], json!({"message": "x"}));
}

#[tokio::test]
async fn the_default_kwargs_limit_is_64_kib() {
    let app = TestApp::start().await;
    let (status, body) = app
        .post(
            "/api/v1/jobs/log?state=paused",
            json!({"message": "x".repeat(60 * 1024)}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let resp = app
        .post(
            "/api/v1/jobs/log",
            json!({"message": "x".repeat(64 * 1024)}),
        )
        .await;
    assert_error(
        &resp,
        400,
        "more than the limit of 65536 (--max-kwargs-bytes)",
    );
}

#[tokio::test]
async fn default_job_files_meet_both_limits() {
    let dir = FilesDir::new();
    dir.write("ok.yaml", "job_id: ok\nhandler: log\nmessage: fine\n");
    dir.write(
        "wordy.yaml",
        &format!(
            "job_id: wordy\nhandler: log\nmessage: {}\n",
            "x".repeat(300)
        ),
    );
    dir.write(
        "padded.yaml",
        &format!(
            "job_id: padded\nhandler: log\nmessage: x\n#{}\n",
            " ".repeat(2000)
        ),
    );

    let output = validate(&[
        dir.arg(),
        "--max-kwargs-bytes",
        "200",
        "--max-default-job-file-bytes",
        "1000",
    ])
    .await;
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("wordy.yaml: kwargs: 314 bytes as JSON, more than the limit of 200 (--max-kwargs-bytes)"), "{stdout}");
    assert!(stdout.contains("padded.yaml: file: 2041 bytes is too large for a job definition (at most 1000; --max-default-job-file-bytes)"), "{stdout}");
    assert!(!stdout.contains("ok.yaml"), "{stdout}");
    // Within the defaults, all three are valid.
    assert!(validate(&[dir.arg()]).await.status.success());

    // The service applies the same limits: the valid file loads, the others do not.
    let app = TestApp::start_with(&[
        "--default-jobs-dir",
        dir.arg(),
        "--max-kwargs-bytes",
        "200",
        "--max-default-job-file-bytes",
        "1000",
    ])
    .await;
    wait_for("ok.yaml loaded", Duration::from_secs(10), || async {
        (app.get("/api/v1/jobs/ok").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(app.get("/api/v1/jobs/wordy").await.0, 404);
    assert_eq!(app.get("/api/v1/jobs/padded").await.0, 404);
}
