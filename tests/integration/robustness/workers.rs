//! Workers: lease settings checked at start-up (bug 4), runs claimed by a
//! creation whose client hung up (bug 9), slots freed while saturated
//! (bug 10).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::io::AsyncWriteExt;

use super::runs_count;
use crate::scheduling::{create, time, wait_runs};
use crate::support::{admin_url, wait_for, TestApp, TestDb};

// --- Bug 4: lease settings that leave no time to stop handlers before
// their leases expire are refused at start-up.

#[tokio::test]
async fn bug4_a_cancel_grace_too_long_for_the_lease_refuses_to_start() {
    let db = TestDb::new();
    for (lease, grace) in [("10s", "5s"), ("2s", "5s")] {
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_jobsd"))
                .args(["--database-url", &db.url, "--bind", "127.0.0.1:0"])
                .args(["--default-jobs-dir", "/nonexistent"])
                .args(["--lease", lease, "--cancel-grace", grace])
                .env("RUST_LOG", "info")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("jobsd --lease {lease} --cancel-grace {grace} should refuse to start, not serve")
        })
        .unwrap();
        assert!(
            !out.status.success(),
            "--lease {lease} --cancel-grace {grace}: {:?}",
            out.status
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--cancel-grace"),
            "the refusal names --cancel-grace: {stderr}"
        );
    }
}

// --- Bug 9: a client disconnecting mid-request stranded the runs the
// creation had claimed (until their lease expired).

/// Whether the bulk insert's statement is executing in database `name`.
async fn bulk_insert_active(conn: &mut sqlx::PgConnection, name: &str) -> bool {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' \
         AND query LIKE 'WITH input AS%'",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await
    .unwrap()
        > 0
}

// PostgreSQL only: it sees the insert executing in PostgreSQL's pg_stat_activity.
#[tokio::test]
async fn bug9_a_client_disconnecting_mid_bulk_create_strands_no_runs() {
    const JOBS: usize = 2000;
    const ROUNDS: usize = 5;
    // A lease far longer than the test's deadlines: only starting the runs
    // at once, not a rescue, can make them succeed in time.
    let app = TestApp::start_on(TestDb::postgres(), &["--lease", "60s"]).await;
    let address = app.base.trim_start_matches("http://").to_string();
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    let mut created = 0;
    for round in 0..ROUNDS {
        let jobs: Vec<Value> = (0..JOBS)
            .map(|i| {
                json!({"job_id": format!("r{round}-{i}"), "handler": "log",
                       "kwargs": {"message": "x", "level": "debug"}})
            })
            .collect();
        let body = serde_json::to_vec(&json!({ "jobs": jobs })).unwrap();
        let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /api/v1/jobs/bulk HTTP/1.1\r\nHost: {address}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&body).await.unwrap();
        // Hang up while the insert (which claims runs for this replica)
        // executes: the request's future is dropped mid-insert.
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            while !bulk_insert_active(&mut admin, &app.db.name).await {}
        })
        .await
        .is_ok();
        drop(socket);
        assert!(
            seen,
            "round {round}: the bulk insert was never seen executing"
        );

        let jobs_now = wait_for("the insert to commit", Duration::from_secs(10), || async {
            let n = app.get("/api/v1/jobs?limit=1").await.1["jobs_count"].as_i64()?;
            (n as usize >= created + JOBS).then_some(n as usize)
        })
        .await;
        assert_eq!(jobs_now, created + JOBS, "all or nothing");
        created = jobs_now;
        let start = Instant::now();
        loop {
            let succeeded = runs_count(&app, "state=succeeded").await as usize;
            if succeeded == created {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "round {round}: {} of {created} runs succeeded within 10 s; {} running, {} queued",
                succeeded,
                runs_count(&app, "state=running").await,
                runs_count(&app, "state=queued").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// --- Bug 10: free slots sat idle after saturation (no claim until a
// quarter of the slots were free).

#[tokio::test]
async fn bug10_a_slot_freed_while_saturated_is_filled_within_the_poll_interval() {
    let app = TestApp::start_with(&["--workers", "8", "--poll-interval", "1s"]).await;
    for i in 0..7 {
        create(
            &app,
            json!({"job_id": format!("long{i}"), "handler": "sleep", "kwargs": {"seconds": 30}}),
        )
        .await;
    }
    create(
        &app,
        json!({"job_id": "short", "handler": "sleep", "kwargs": {"seconds": 2}}),
    )
    .await;
    wait_for("8 runs running", Duration::from_secs(10), || async {
        (runs_count(&app, "state=running").await == 8).then_some(())
    })
    .await;
    for i in 0..3 {
        create(
            &app,
            json!({"job_id": format!("more{i}"), "handler": "log", "kwargs": {"message": "m"}}),
        )
        .await;
    }
    assert_eq!(
        runs_count(&app, "state=queued").await,
        3,
        "every slot is taken: the rest wait"
    );
    let short = wait_runs(&app, "short", "succeeded", 1, Duration::from_secs(10)).await;
    let freed_at = time(&short[0]["finished_at"]);
    let started = wait_for(
        "a queued run in the freed slot",
        Duration::from_secs(5),
        || async {
            let (_, body) = app.get("/api/v1/runs?limit=1000").await;
            body["runs"]
                .as_array()?
                .iter()
                .filter(|r| r["job_id"].as_str().unwrap_or("").starts_with("more"))
                .filter_map(|r| r["started_at"].as_str())
                .map(|t| t.parse::<DateTime<Utc>>().unwrap())
                .min()
        },
    )
    .await;
    assert!(
        started - freed_at <= chrono::Duration::milliseconds(2000),
        "the freed slot was filled {} after it was freed",
        started - freed_at
    );
}

// --- Self-fencing: a replica that cannot renew its leases stops its
// handlers before the last lease it renewed expires (before, it waited a
// whole lease without renewal, then the cancel grace: another replica could
// take the run over while the handler still ran).

// PostgreSQL only: it cuts the replica off from its database server (an embedded file cannot be).
#[tokio::test]
async fn a_replica_cut_off_from_the_database_stops_its_handlers_before_their_lease_expires() {
    let app = TestApp::start_on(
        TestDb::postgres(),
        &[
            "--enable-command-handler",
            "--lease",
            "3s",
            "--cancel-grace",
            "500ms",
        ],
    )
    .await;
    let file = std::env::temp_dir().join(format!("jobsd-fence-{}", uuid::Uuid::new_v4()));
    // Appends the time (ns since the epoch) every 20 ms until it is killed.
    let script = format!(
        "while true; do date +%s%N >> '{}'; sleep 0.02; done",
        file.display()
    );
    create(
        &app,
        json!({"job_id": "fenced", "handler": "command",
               "kwargs": {"program": "sh", "args": ["-c", script]}}),
    )
    .await;
    let last_write = || -> Option<i64> {
        let text = std::fs::read_to_string(&file).ok()?;
        text.lines().rev().find_map(|l| l.trim().parse().ok())
    };
    wait_for("the handler writes", Duration::from_secs(10), || async {
        last_write().map(|_| ())
    })
    .await;
    // Let one renewal land (every third of the lease), then cut the
    // replica off: no new connections, its pooled ones killed. This
    // connection, opened before, reads the lease it last renewed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut mine = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
        app.db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&app.db.name)
    .execute(&mut mine)
    .await
    .unwrap();
    let lease_ends: DateTime<Utc> = sqlx::query_scalar(
        "SELECT lease_expires_at FROM runs WHERE job_id = 'fenced' AND state = 'running'",
    )
    .fetch_one(&mut mine)
    .await
    .unwrap();
    // The handler stops (the file stops growing). Its stop must begin at
    // least a cancel grace (500 ms) before the lease it holds runs out, so
    // that even a handler taking its whole grace to stop is gone by then
    // (this one, a process, is killed at once).
    let stopped = wait_for("the handler to stop", Duration::from_secs(10), || async {
        let before = last_write();
        tokio::time::sleep(Duration::from_millis(300)).await;
        (last_write() == before).then_some(before)
    })
    .await
    .unwrap();
    let grace_ns = 500_000_000;
    let lease_ends_ns = lease_ends.timestamp_nanos_opt().unwrap();
    assert!(
        stopped <= lease_ends_ns - grace_ns,
        "the handler wrote until {} ms before its lease expired; its stop must begin a cancel \
         grace (500 ms) before",
        (lease_ends_ns - stopped) / 1_000_000
    );
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
        app.db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let _ = std::fs::remove_file(&file);
}
