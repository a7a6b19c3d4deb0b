//! Start-up and shutdown of the real binary.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{listening_address, wait_for, ChildLog, TestApp, TestDb};

fn jobsd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobsd"));
    cmd.env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

// PostgreSQL only: a PostgreSQL server that cannot be reached (the embedded store has no server).
#[tokio::test]
async fn unreachable_database_is_one_clear_line_and_exit_1() {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        jobsd()
            .args(["--database-url", "postgres://bob:hunter2@127.0.0.1:1/jobsd"])
            .args(["--db-connect-timeout", "1s", "--bind", "127.0.0.1:0"])
            .output(),
    )
    .await
    .expect("exits promptly")
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("jobsd: cannot use the database at postgres://bob:***@127.0.0.1:1/jobsd"),
        "{stderr}"
    );
    assert!(line.contains("Start PostgreSQL"), "{line}");
    assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn invalid_database_url_is_a_clear_error() {
    let out = jobsd()
        .args(["--database-url", "mysql:/nope", "--bind", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("unknown database URL scheme (use postgres://, postgresql:// or sqlite://)"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[tokio::test]
async fn creates_the_database_and_stops_on_sigterm() {
    let db = TestDb::new();
    assert!(!db.exists().await, "{} is fresh", db.url);
    let (mut child, address, _stderr) = spawn_serving(&db, &[]).await;
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("http://{address}/api/v1/readiness"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The database (or the embedded store's file) now exists.
    assert!(db.exists().await, "{} was created", db.url);

    let pid = child.id().unwrap() as i32;
    unsafe_kill(pid, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("stops in time")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

fn unsafe_kill(pid: i32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

// PostgreSQL only: replicas racing to CREATE DATABASE (the embedded store serves one process).
#[tokio::test]
async fn two_services_can_create_the_same_database_at_once() {
    let db = TestDb::postgres();
    let config = crate::support::serve_config(&db, &[]);
    let (a, b) = tokio::join!(
        jobsd::app::open_store(&config.database),
        jobsd::app::open_store(&config.database)
    );
    a.expect("first opens");
    b.expect("second opens");
    let app = TestApp::start_on(db, &[]).await;
    wait_for("readiness", Duration::from_secs(5), || async {
        (app.get("/api/v1/readiness").await.0 == 200).then_some(())
    })
    .await;
}

/// Starts `jobsd serve` on a fresh database with stdout and stderr piped,
/// and returns the child, its address, and the open reader of its stderr.
async fn spawn_serving(db: &TestDb, extra: &[&str]) -> (tokio::process::Child, String, ChildLog) {
    let mut child = jobsd()
        .args(["--database-url", &db.url, "--bind", "127.0.0.1:0"])
        .args(["--default-jobs-dir", "/nonexistent"])
        .args(extra)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let address = listening_address(&mut lines, "jobsd").await;
    (child, address, lines)
}

/// The reader of jobsd's logs goes away (a log collector restarts, `jobsd
/// | head`): every later log write fails with EPIPE. The service must go
/// on serving, run jobs, and stop on SIGTERM.
#[tokio::test]
async fn a_closed_log_pipe_does_not_stop_the_service() {
    let db = TestDb::new();
    let (mut child, address, stderr) = spawn_serving(&db, &["--shutdown-grace", "2s"]).await;
    // Close both pipes: from here every write to them fails.
    drop(stderr);
    drop(child.stdout.take());
    let base = format!("http://{address}/api/v1");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // A due one-shot job of the `log` handler: it writes to the closed log.
    let resp = client
        .post(format!("{base}/jobs/log?job_id=pipe"))
        .json(&serde_json::json!({"message": "nobody reads this"}))
        .send()
        .await
        .expect("POST /jobs/log answers");
    assert_eq!(resp.status(), 201);
    let run = wait_for("the run succeeds", Duration::from_secs(20), || async {
        let body: serde_json::Value = client
            .get(format!("{base}/jobs/pipe/runs"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let run = body["runs"][0].clone();
        matches!(run["state"].as_str(), Some("succeeded" | "failed" | "dead")).then_some(run)
    })
    .await;
    assert_eq!(run["state"], "succeeded", "{run}");

    let live = client
        .get(format!("{base}/liveness"))
        .send()
        .await
        .expect("liveness answers");
    assert_eq!(live.status(), 200);

    unsafe_kill(child.id().unwrap() as i32, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("stops within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}
