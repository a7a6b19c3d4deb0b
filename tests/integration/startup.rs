//! Start-up and shutdown of the real binary.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{admin_url, wait_for, TestApp, TestDb};

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
    assert!(stderr.contains("invalid database URL"), "{stderr}");
}

#[tokio::test]
async fn creates_the_database_and_stops_on_sigterm() {
    let db = TestDb::new();
    let mut child = jobsd()
        .args([
            "--database-url",
            &db.url,
            "--bind",
            "127.0.0.1:0",
            "--default-jobs-dir",
            "/nonexistent",
        ])
        .spawn()
        .unwrap();
    // The log names the address once listening.
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let address = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("address=").nth(1) {
                return rest.split_whitespace().next().map(str::to_string);
            }
        }
        None
    })
    .await
    .expect("jobsd listens in time")
    .expect("jobsd logs its address");
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("http://{address}/api/v1/readiness"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The database now exists.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url())
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db.name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(exists);

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

#[tokio::test]
async fn two_services_can_create_the_same_database_at_once() {
    let db = TestDb::new();
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
