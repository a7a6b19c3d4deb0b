//! Lock keys: a blocked run costs nothing, is woken on any replica and
//! starves nobody (bug 3); a deleted job's key stays held until its
//! handler has stopped (bug 8).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jobsd::handlers::{Handler, HandlerResult, RunContext};
use serde_json::{json, Value};
use sqlx::Connection;

use super::{replica_runs, runs_count, wait_running};
use crate::scheduling::{create, runs_of, time, wait_runs};
use crate::support::{admin_url, wait_for, Replica, TestApp, TestDb};

// --- Bug 3: a run waiting for a held lock key made every replica spin,
// and blocked runs could starve claimable ones.

/// Transactions committed in database `name` so far, as the statistics
/// collector has them (backends flush them about once a second).
async fn xact_commits(conn: &mut sqlx::PgConnection, name: &str) -> i64 {
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

/// Creates job `holder` on `r`: a `sleep` of `seconds` holding key `k`;
/// returns its run once it is running.
async fn start_holder(r: &Replica, seconds: u64) -> Value {
    let (status, body) = r
        .post(
            "/api/v1/jobs",
            json!({"job_id": "holder", "handler": "sleep", "kwargs": {"seconds": seconds},
                   "lock_key": "k"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    wait_for("the holder running", Duration::from_secs(10), || async {
        replica_runs(r, "holder")
            .await
            .into_iter()
            .find(|run| run["state"] == "running")
    })
    .await
}

// PostgreSQL only: two replicas, and PostgreSQL's commit statistics.
#[tokio::test]
async fn bug3_a_run_blocked_on_a_held_lock_key_costs_nothing_and_is_woken_on_another_replica() {
    let db = TestDb::postgres();
    // Long polls: only a notification can wake a replica promptly.
    let quiet = ["--poll-interval", "30s", "--shutdown-grace", "30s"];
    let mut a = Replica::spawn(&db, "lock-a", &quiet).await;
    let holder = start_holder(&a, 9).await;
    assert_eq!(holder["instance"], "lock-a");
    let b = Replica::spawn(&db, "lock-b", &quiet).await;
    let (status, body) = b
        .post(
            "/api/v1/jobs",
            json!({"job_id": "waiter", "handler": "log", "kwargs": {"message": "w"},
                   "lock_key": "k"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // While it waits, the two replicas commit only their heartbeats and
    // checks, about ten per second each, where a claim loop spinning on it
    // commits hundreds. Counted second by second: a busy backend flushes
    // its counts about once a second, but an idle one up to 10 s late, so
    // the start-up's land in a second or two of their own; the two
    // quietest of four seconds must be quiet.
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    let mut per_second = Vec::new();
    for _ in 0..4 {
        let before = xact_commits(&mut admin, &db.name).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        per_second.push(xact_commits(&mut admin, &db.name).await - before);
    }
    let mut sorted = per_second.clone();
    sorted.sort_unstable();
    assert!(
        sorted[1] < 100,
        "transactions per second while a run waits for a lock key: {per_second:?}"
    );
    let waiter = replica_runs(&b, "waiter").await;
    assert_eq!(waiter[0]["state"], "queued", "{waiter:#?}");
    let holder_now = replica_runs(&a, "holder").await;
    assert_eq!(
        holder_now[0]["state"], "running",
        "the holder must still hold the key: {holder_now:#?}"
    );

    // lock-a stops claiming (it shuts down) but lets the holder finish: the
    // waiter can only start on lock-b, and only a notification wakes it.
    a.signal("TERM");
    let waiter = wait_for("the waiter succeeded", Duration::from_secs(20), || async {
        replica_runs(&b, "waiter")
            .await
            .into_iter()
            .find(|r| r["state"] == "succeeded")
    })
    .await;
    assert!(a.wait_exit().await.success());
    let holder = replica_runs(&b, "holder").await.remove(0);
    assert_eq!(holder["state"], "succeeded", "{holder}");
    assert_eq!(waiter["instance"], "lock-b", "{waiter}");
    let lag = time(&waiter["started_at"]) - time(&holder["finished_at"]);
    assert!(
        lag < chrono::Duration::milliseconds(500),
        "the waiter started {lag} after the holder ended"
    );
}

/// Every way a lock holder ends must wake the waiters of every replica,
/// now that they no longer spin: here an operator ends the run of a
/// replica that died (its lease is long, so no rescue comes first). The
/// fix's override path sent no wake-up, so the waiter sat out the poll
/// interval (30 s here); the old code's claim loop hid that by spinning.
// PostgreSQL only: a waiter on another replica (replicas need PostgreSQL).
#[tokio::test]
async fn bug3_an_operator_ending_a_lock_holder_wakes_a_waiter_on_another_replica() {
    let db = TestDb::postgres();
    let quiet = [
        "--poll-interval",
        "30s",
        "--lease",
        "60s",
        "--cancel-grace",
        "1s",
    ];
    let mut a = Replica::spawn(&db, "op-a", &quiet).await;
    let holder = start_holder(&a, 60).await;
    let b = Replica::spawn(&db, "op-b", &quiet).await;
    let (status, body) = b
        .post(
            "/api/v1/jobs",
            json!({"job_id": "waiter", "handler": "log", "kwargs": {"message": "w"},
                   "lock_key": "k"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    a.signal("KILL");
    a.wait_exit().await;
    let holder_id = holder["run_id"].as_str().unwrap();
    let (status, body) = b
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/runs/{holder_id}/state"),
            Some(json!({"state": "failed", "reason": "its replica died"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ended_at = time(&body["run"]["finished_at"]);
    let waiter = wait_for("the waiter succeeded", Duration::from_secs(5), || async {
        replica_runs(&b, "waiter")
            .await
            .into_iter()
            .find(|r| r["state"] == "succeeded")
    })
    .await;
    let lag = time(&waiter["started_at"]) - ended_at;
    assert!(
        lag < chrono::Duration::milliseconds(500),
        "the waiter started {lag} after the operator ended the holder"
    );
}

#[tokio::test]
async fn bug3_runs_blocked_on_a_lock_key_do_not_starve_a_claimable_run() {
    let app = TestApp::start_with(&["--workers", "2"]).await;
    create(
        &app,
        json!({"job_id": "holder", "handler": "sleep", "kwargs": {"seconds": 30},
               "lock_key": "k"}),
    )
    .await;
    wait_running(&app, "holder").await;
    let blocked: Vec<Value> = (0..40)
        .map(|i| {
            json!({"job_id": format!("blocked{i}"), "handler": "log",
                   "kwargs": {"message": "b"}, "lock_key": "k"})
        })
        .collect();
    let (status, body) = app
        .post("/api/v1/jobs/bulk", json!({ "jobs": blocked }))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(runs_count(&app, "state=queued").await, 40);
    // Queued after the blocked ones, through the claim loop (a manual run).
    create(
        &app,
        json!({"job_id": "free", "handler": "log", "kwargs": {"message": "f"},
               "periodically": "1 day", "state": "paused"}),
    )
    .await;
    let (status, body) = app.post("/api/v1/jobs/free/run", json!({})).await;
    assert_eq!(status, 201, "{body}");
    wait_runs(&app, "free", "succeeded", 1, Duration::from_secs(3)).await;
    assert_eq!(
        runs_count(&app, "state=queued").await,
        40,
        "the blocked runs still wait"
    );
}

// --- Bug 8: deleting a job freed its lock key while its handler might
// still run.

/// When each run of the `stubborn` handler started and stopped.
type Spans = Arc<Mutex<Vec<(String, Instant, Option<Instant>)>>>;

/// Sleeps `seconds` and ignores cancellation (as a handler stuck in a
/// blocking call would): it stops only when the worker drops it, after
/// the cancel grace. Records when each run started and stopped.
struct Stubborn(Spans);

struct SpanGuard(Spans, usize);

impl Drop for SpanGuard {
    fn drop(&mut self) {
        if let Ok(mut spans) = self.0.lock() {
            spans[self.1].2 = Some(Instant::now());
        }
    }
}

#[async_trait]
impl Handler for Stubborn {
    fn name(&self) -> &str {
        "stubborn"
    }
    fn kwargs_schema(&self) -> Value {
        json!({"type": "object", "properties": {"seconds": {"type": "number"}}})
    }
    fn example(&self) -> Value {
        json!({"seconds": 1})
    }
    async fn execute(&self, ctx: RunContext, kwargs: Value) -> HandlerResult {
        let index = {
            let mut spans = self.0.lock().unwrap();
            spans.push((ctx.job_id.clone(), Instant::now(), None));
            spans.len() - 1
        };
        let _guard = SpanGuard(self.0.clone(), index);
        let seconds = kwargs["seconds"].as_f64().unwrap_or(0.0);
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        Ok(json!({"slept": seconds}))
    }
}

/// A service with the `stubborn` handler registered, and the spans it records.
async fn stubborn_app() -> (TestApp, Spans) {
    let spans: Spans = Arc::default();
    let handler = Stubborn(spans.clone());
    let app = TestApp::start_custom(
        TestDb::new(),
        &["--lease", "9s", "--cancel-grace", "3s"],
        |r| r.register(handler).unwrap(),
    )
    .await;
    (app, spans)
}

#[tokio::test]
async fn bug8_a_deleted_jobs_lock_key_stays_held_until_its_handler_has_stopped() {
    let (app, spans) = stubborn_app().await;
    create(
        &app,
        json!({"job_id": "first", "handler": "stubborn", "kwargs": {"seconds": 60},
               "lock_key": "k"}),
    )
    .await;
    let first = wait_running(&app, "first").await;
    let first_run = first["run_id"].as_str().unwrap().to_string();
    create(
        &app,
        json!({"job_id": "second", "handler": "stubborn", "kwargs": {"seconds": 0.1},
               "lock_key": "k"}),
    )
    .await;
    assert_eq!(runs_of(&app, "second").await[0]["state"], "queued");

    let (status, body) = app.delete("/api/v1/jobs/first").await;
    assert_eq!(status, 200, "{body}");
    let deleted_at = Instant::now();
    let (_, locks) = app.get("/api/v1/locks").await;
    let holders: Vec<(&Value, &Value)> = locks["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (&l["lock_key"], &l["run_id"]))
        .collect();
    assert_eq!(
        holders,
        vec![(&json!("k"), &json!(first_run))],
        "the deleted job's run holds its key while its handler runs"
    );

    wait_runs(&app, "second", "succeeded", 1, Duration::from_secs(20)).await;
    let spans = spans.lock().unwrap().clone();
    let first_span = spans.iter().find(|s| s.0 == "first").unwrap();
    let second_span = spans.iter().find(|s| s.0 == "second").unwrap();
    let first_stopped = first_span.2.expect("the deleted job's handler was stopped");
    assert!(
        first_stopped - deleted_at >= Duration::from_secs(2),
        "the handler took its cancel grace to stop ({:?})",
        first_stopped - deleted_at
    );
    assert!(
        second_span.1 >= first_stopped,
        "the second job on key k started {:?} before the deleted job's handler stopped",
        first_stopped - second_span.1
    );

    // Once its outcome is written, the deleted job's run is gone too.
    wait_for(
        "the deleted job's run gone",
        Duration::from_secs(5),
        || async {
            let (status, _) = app.get(&format!("/api/v1/runs/{first_run}")).await;
            (status == 404).then_some(())
        },
    )
    .await;
    assert_eq!(runs_count(&app, "job_id=first").await, 0);
    assert_eq!(app.get("/api/v1/jobs/first").await.0, 404);
}

/// A deleted job's running run is removed once it has ended, also when an
/// operator ends it: its worker can then no longer write the outcome that
/// removes it, and the fix's override path left it behind for good. (The
/// old code deleted the run with its job, so the override there is a 404.)
#[tokio::test]
async fn bug8_a_deleted_jobs_run_ended_by_an_operator_is_removed() {
    let (app, spans) = stubborn_app().await;
    create(
        &app,
        json!({"job_id": "gone", "handler": "stubborn", "kwargs": {"seconds": 60}}),
    )
    .await;
    let run = wait_running(&app, "gone").await;
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let (status, body) = app.delete("/api/v1/jobs/gone").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/runs/{run_id}/state"),
            Some(json!({"state": "cancelled", "reason": "do not wait for it"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Its handler stops after its grace; by then the run must be gone.
    wait_for("the handler stopped", Duration::from_secs(10), || async {
        spans.lock().unwrap()[0].2.map(|_| ())
    })
    .await;
    wait_for(
        "the deleted job's run gone",
        Duration::from_secs(5),
        || async {
            let (status, _) = app.get(&format!("/api/v1/runs/{run_id}")).await;
            (status == 404).then_some(())
        },
    )
    .await;
}
