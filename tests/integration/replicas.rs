//! Several real `jobsd` processes against one real PostgreSQL: exactly-once
//! firing, fail-over after `kill -9`, graceful shutdown, database faults.
//!
//! PostgreSQL only: replicas need PostgreSQL (the embedded store serves one process).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;
use serde_json::{json, Value};

use crate::scheduling::{soon, time};
use crate::support::{admin_url, wait_for, Replica, TestDb};

async fn runs_of(r: &Replica, job_id: &str) -> Vec<Value> {
    let (status, body) = r
        .get(&format!("/api/v1/jobs/{job_id}/runs?limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["runs"].as_array().cloned().unwrap_or_default()
}

async fn run_of(r: &Replica, run_id: &str) -> Value {
    r.get(&format!("/api/v1/runs/{run_id}")).await.1["run"].clone()
}

async fn wait_run(r: &Replica, run_id: &str, state: &str, deadline: Duration) -> Value {
    wait_for(&format!("run {run_id} {state}"), deadline, || async {
        let run = run_of(r, run_id).await;
        (run["state"] == state).then_some(run)
    })
    .await
}

/// A local HTTP server counting `POST /hit/{job}` per job.
async fn hit_counter() -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let app =
        axum::Router::new()
            .route(
                "/hit/{job}",
                post(
                    |State(h): State<Arc<Mutex<HashMap<String, usize>>>>,
                     Path(job): Path<String>| async move {
                        *h.lock().unwrap().entry(job).or_default() += 1;
                        // Long enough that one replica's workers cannot
                        // take a whole firing before the others wake.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        "ok"
                    },
                ),
            )
            .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), hits)
}

#[tokio::test]
async fn three_replicas_fire_every_time_exactly_once() {
    let db = TestDb::postgres();
    let (server, hits) = hit_counter().await;
    // Each replica has fewer workers than the jobs that fall due together,
    // so whichever replica fires them claims a few and queues the rest for
    // every replica's workers: the work spreads however the firing races go.
    let workers = ["--workers", "4"];
    let (a, b, c) = tokio::join!(
        Replica::spawn(&db, "r-a", &workers),
        Replica::spawn(&db, "r-b", &workers),
        Replica::spawn(&db, "r-c", &workers)
    );
    let mut replicas = [a, b, c];
    const JOBS: usize = 20;
    let first = soon(1500);
    for i in 0..JOBS {
        let (status, body) = replicas[i % 3]
            .post(
                "/api/v1/jobs",
                json!({"job_id": format!("j{i}"), "handler": "http", "periodically": "1s",
                       "when": first.to_rfc3339(), "coalesce": false,
                       "kwargs": {"url": format!("{server}/hit/j{i}"), "method": "POST"}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // Let every job fire at least 5 times, then stop firing everywhere.
    wait_for("5 runs of every job", Duration::from_secs(60), || async {
        for i in 0..JOBS {
            let succeeded = runs_of(&replicas[0], &format!("j{i}"))
                .await
                .iter()
                .filter(|r| r["state"] == "succeeded")
                .count();
            if succeeded < 5 {
                return None;
            }
        }
        Some(())
    })
    .await;
    let (status, _) = replicas[1].put("/api/v1/service/state?state=paused").await;
    assert_eq!(status, 200);
    wait_for(
        "no run queued or running",
        Duration::from_secs(30),
        || async {
            let (_, q) = replicas[2].get("/api/v1/runs?state=queued").await;
            let (_, r) = replicas[2].get("/api/v1/runs?state=running").await;
            (q["runs_count"] == 0 && r["runs_count"] == 0).then_some(())
        },
    )
    .await;

    let mut instances = std::collections::HashSet::new();
    for i in 0..JOBS {
        let job = format!("j{i}");
        let mut runs = runs_of(&replicas[0], &job).await;
        runs.sort_by_key(|r| time(&r["scheduled_for"]));
        for (k, run) in runs.iter().enumerate() {
            assert_eq!(
                time(&run["scheduled_for"]),
                first + chrono::Duration::seconds(k as i64),
                "{job}: each time once, none skipped: {runs:#?}"
            );
            assert_eq!(run["state"], "succeeded", "{run}");
            assert_eq!(run["attempt"], 1, "{run}");
            instances.insert(run["instance"].as_str().unwrap().to_string());
        }
        let hit = hits.lock().unwrap().get(&job).copied().unwrap_or(0);
        assert_eq!(hit, runs.len(), "{job}: the handler ran once per run");
    }
    assert!(
        instances.len() >= 2,
        "work spread over replicas: {instances:?}"
    );

    let (_, listed) = replicas[0].get("/api/v1/instances").await;
    let names: Vec<&str> = listed["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, vec!["r-a", "r-b", "r-c"]);
    assert!(listed["instances"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["alive"] == true && i["version"].is_string()));
    for r in &mut replicas {
        r.signal("TERM");
        assert!(r.wait_exit().await.success());
    }
}

#[tokio::test]
async fn a_killed_replicas_run_is_rerun_elsewhere_within_the_lease() {
    let db = TestDb::postgres();
    let mut a = Replica::spawn(&db, "k-a", &[]).await;
    let (status, body) = a
        .post(
            "/api/v1/jobs",
            json!({"job_id": "long", "handler": "sleep", "kwargs": {"seconds": 3},
                                    "periodically": "1 day", "state": "paused", "max_retries": 1}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = a.post("/api/v1/jobs/long/run", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let run_id = body["run"]["run_id"].as_str().unwrap().to_string();
    wait_run(&a, &run_id, "running", Duration::from_secs(10)).await;
    let b = Replica::spawn(&db, "k-b", &[]).await;
    a.signal("KILL");
    a.wait_exit().await;
    let killed_at = chrono::Utc::now();

    let run = wait_run(&b, &run_id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(run["instance"], "k-b");
    assert_eq!(run["attempt"], 2);
    let history = run["history"].as_array().unwrap();
    let states: Vec<&str> = history.iter().map(|e| e["to"].as_str().unwrap()).collect();
    assert_eq!(
        states,
        vec![
            "queued",
            "running",
            "dead",
            "queued",
            "running",
            "succeeded"
        ],
        "{run}"
    );
    let restarted = time(&history[4]["at"]);
    assert!(
        restarted - killed_at < chrono::Duration::seconds(4),
        "re-run {} after the kill",
        restarted - killed_at
    );
}

#[tokio::test]
async fn sigterm_hands_running_runs_to_another_replica() {
    let db = TestDb::postgres();
    let mut a = Replica::spawn(&db, "t-a", &["--shutdown-grace", "300ms", "--workers", "4"]).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let job = format!("s{i}");
        let (status, body) = a
            .post(
                "/api/v1/jobs",
                json!({"job_id": job, "handler": "sleep", "kwargs": {"seconds": 2},
                                        "periodically": "1 day", "state": "paused"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (_, body) = a.post(&format!("/api/v1/jobs/{job}/run"), json!({})).await;
        ids.push(body["run"]["run_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        wait_run(&a, id, "running", Duration::from_secs(10)).await;
    }
    let b = Replica::spawn(&db, "t-b", &[]).await;
    a.signal("TERM");
    assert!(a.wait_exit().await.success(), "exits 0 after handing back");

    for id in &ids {
        let run = wait_run(&b, id, "succeeded", Duration::from_secs(30)).await;
        assert_eq!(run["instance"], "t-b");
        let reasons: Vec<&str> = run["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["reason"].as_str())
            .collect();
        assert!(reasons.contains(&"handed back at shutdown"), "{reasons:?}");
        let succeeded = run["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["to"] == "succeeded")
            .count();
        assert_eq!(succeeded, 1);
        assert_eq!(
            run["attempt"], 1,
            "the interrupted attempt is not counted: {run}"
        );
    }
    let (_, all) = b.get("/api/v1/runs").await;
    assert_eq!(all["runs_count"], 4, "nothing doubled");
}

async fn admin() -> sqlx::PgConnection {
    <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url())
        .await
        .unwrap()
}

async fn terminate_backends(db: &TestDb) -> u64 {
    let mut conn = admin().await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db.name)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    killed.len() as u64
}

#[tokio::test]
async fn recovers_from_killed_connections_and_a_database_outage() {
    let db = TestDb::postgres();
    let r = Replica::spawn(&db, "f-a", &[]).await;
    r.post("/api/v1/jobs", json!({"job_id": "tick", "handler": "log", "kwargs": {"message": "t"}, "periodically": "200ms"}))
        .await;
    wait_for("ticks", Duration::from_secs(10), || async {
        (runs_of(&r, "tick").await.len() >= 3).then_some(())
    })
    .await;

    for _ in 0..3 {
        assert!(terminate_backends(&db).await > 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // An outage: no new connections, existing ones killed. Readiness reports it.
    let mut conn = admin().await;
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
        db.name
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    terminate_backends(&db).await;
    wait_for(
        "readiness reports the outage",
        Duration::from_secs(15),
        || async { (r.get("/api/v1/readiness").await.0 == 503).then_some(()) },
    )
    .await;
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
        db.name
    ))
    .execute(&mut conn)
    .await
    .unwrap();

    wait_for("readiness recovers", Duration::from_secs(20), || async {
        (r.get("/api/v1/readiness").await.0 == 200).then_some(())
    })
    .await;
    let before = runs_of(&r, "tick").await.len();
    wait_for("ticks resume", Duration::from_secs(20), || async {
        (runs_of(&r, "tick").await.len() >= before + 3).then_some(())
    })
    .await;
    let (status, _) = r
        .post(
            "/api/v1/jobs/log?job_id=after",
            json!({"message": "after the outage"}),
        )
        .await;
    assert_eq!(status, 201);
    wait_for("a new job runs", Duration::from_secs(20), || async {
        runs_of(&r, "after")
            .await
            .iter()
            .any(|run| run["state"] == "succeeded")
            .then_some(())
    })
    .await;
    // Nothing is left running past its lease.
    wait_for("no stuck runs", Duration::from_secs(20), || async {
        let (_, running) = r.get("/api/v1/runs?state=running&limit=1000").await;
        running["runs"]
            .as_array()?
            .iter()
            .all(|run| run["job_id"] != "tick" || run["lease_expires_at"].is_string())
            .then_some(())
    })
    .await;
}
