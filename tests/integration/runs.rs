//! Execution: manual runs, failures and failure records, panics, retries,
//! timeouts, cancellation, lock keys, the runs API, and the built-in
//! handlers against real servers and processes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::routing::get;
use jobsd::handlers::{Handler, HandlerResult, RunContext};
use serde_json::{json, Value};

use crate::scheduling::{create, runs_of, time, wait_job_state, wait_runs};
use crate::support::{assert_error, wait_for, TestApp, TestDb};

async fn run_of(app: &TestApp, run_id: &str) -> Value {
    let (status, body) = app.get(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(status, 200, "{body}");
    body["run"].clone()
}

async fn wait_run(app: &TestApp, run_id: &str, state: &str, deadline: Duration) -> Value {
    wait_for(&format!("run {run_id} {state}"), deadline, || async {
        let run = run_of(app, run_id).await;
        (run["state"] == state).then_some(run)
    })
    .await
}

async fn trigger(app: &TestApp, job_id: &str) -> (u16, Value, Option<String>) {
    let resp = app
        .client
        .post(app.url(&format!("/api/v1/jobs/{job_id}/run")))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    (status, resp.json().await.unwrap(), location)
}

fn reasons(run: &Value) -> Vec<String> {
    run["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}->{}: {}",
                e["from"].as_str().unwrap_or("-"),
                e["to"].as_str().unwrap_or("?"),
                e["reason"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// A paused job that only runs when triggered.
async fn paused_job(app: &TestApp, job_id: &str, handler: &str, kwargs: Value, extra: Value) {
    let mut spec = json!({"job_id": job_id, "handler": handler, "kwargs": kwargs, "periodically": "1 day", "state": "paused"});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    create(app, spec).await;
}

#[tokio::test]
async fn manual_run_returns_201_with_location_and_runs() {
    let app = TestApp::start().await;
    paused_job(&app, "manual", "log", json!({"message": "now"}), json!({})).await;
    let (status, body, location) = trigger(&app, "manual").await;
    assert_eq!(status, 201, "{body}");
    let run_id = body["run"]["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        location.as_deref(),
        Some(format!("/api/v1/runs/{run_id}").as_str())
    );
    assert_eq!(body["run"]["trigger"], "manual");
    let run = wait_run(&app, &run_id, "succeeded", Duration::from_secs(10)).await;
    assert_eq!(run["result"], json!({"message": "now"}));

    // latest redirects to it
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects
        .get(app.url("/api/v1/jobs/manual/runs/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(resp.headers()["location"], format!("/api/v1/runs/{run_id}"));
    let (_, job) = app.get("/api/v1/jobs/manual").await;
    assert_eq!(job["job"]["last_run"]["run_id"], run_id.as_str());
    let (status, body, _) = trigger(&app, "nope").await;
    assert_error(&(status, body), 404, "no job");
}

#[tokio::test]
async fn max_instances_reached_is_409() {
    let app = TestApp::start().await;
    paused_job(&app, "slow", "sleep", json!({"seconds": 30}), json!({})).await;
    let (status, body, _) = trigger(&app, "slow").await;
    assert_eq!(status, 201);
    let (status, second, _) = trigger(&app, "slow").await;
    assert_eq!(status, 409, "{second}");
    assert!(second["error"].as_str().unwrap().contains("max_instances"));
    let run_id = body["run"]["run_id"].as_str().unwrap();
    app.post(&format!("/api/v1/runs/{run_id}/cancel"), json!({}))
        .await;
}

#[tokio::test]
async fn failing_handler_writes_a_failure_record_that_can_be_rerun() {
    let app = TestApp::start().await;
    let kwargs = json!({"url": "http://127.0.0.1:1/unreachable", "timeout": 2});
    paused_job(&app, "broken", "http", kwargs.clone(), json!({})).await;
    let (_, body, _) = trigger(&app, "broken").await;
    let run_id = body["run"]["run_id"].as_str().unwrap().to_string();
    let run = wait_run(&app, &run_id, "failed", Duration::from_secs(15)).await;
    assert!(
        run["error"].as_str().unwrap().contains("127.0.0.1:1"),
        "{run}"
    );
    assert!(run["traceback"].as_str().unwrap().len() > 10, "{run}");

    let (_, failed) = app.get("/api/v1/jobs?job_type=failed").await;
    assert_eq!(failed["jobs_count"], 1, "{failed}");
    let record = &failed["jobs"][0];
    assert_eq!(record["handler"], "ErrorHandler");
    assert_eq!(record["state"], "paused");
    assert_eq!(record["next_run_at"], Value::Null);
    assert_eq!(record["kwargs"]["failed_job_id"], "broken");
    assert_eq!(record["kwargs"]["failed_job_handler"], "http");
    assert_eq!(record["kwargs"]["failed_handler_kwargs"], kwargs);
    assert_eq!(record["kwargs"]["failed_run_id"], run_id.as_str());
    assert_eq!(record["kwargs"]["exc_str"], run["error"]);
    assert_eq!(record["kwargs"]["exc_traceback"], run["traceback"]);
    assert_eq!(record["failed_run_id"], run_id.as_str());

    // Re-run the failed job from its record: a new run of the original job, same kwargs.
    let record_id = record["job_id"].as_str().unwrap();
    let (status, rerun, _) = trigger(&app, record_id).await;
    assert_eq!(status, 201, "{rerun}");
    assert_eq!(rerun["run"]["job_id"], "broken");
    assert_eq!(rerun["run"]["kwargs"], kwargs);
    assert_eq!(rerun["run"]["trigger"], "manual");
    wait_run(
        &app,
        rerun["run"]["run_id"].as_str().unwrap(),
        "failed",
        Duration::from_secs(15),
    )
    .await;

    let (status, cleaned) = app.delete("/api/v1/jobs/clean-failed").await;
    assert_eq!(status, 200);
    assert_eq!(cleaned["deleted"], 2);
    assert_eq!(
        cleaned["removed"].as_array().map(Vec::len),
        Some(2),
        "{cleaned}"
    );
    assert_eq!(
        app.get("/api/v1/jobs?job_type=failed").await.1["jobs_count"],
        0
    );
}

struct Panicker;

#[async_trait]
impl Handler for Panicker {
    fn name(&self) -> &str {
        "panicker"
    }
    fn kwargs_schema(&self) -> Value {
        json!({"type": "object"})
    }
    fn example(&self) -> Value {
        json!({})
    }
    async fn execute(&self, _ctx: RunContext, _kwargs: Value) -> HandlerResult {
        let values: Vec<u32> = Vec::new();
        Ok(json!(values[3]))
    }
}

#[tokio::test]
async fn a_panicking_handler_fails_its_run_and_the_service_keeps_serving() {
    let app = TestApp::start_custom(TestDb::new(), &[], |r| r.register(Panicker).unwrap()).await;
    create(&app, json!({"job_id": "bad", "handler": "panicker"})).await;
    let runs = wait_runs(&app, "bad", "failed", 1, Duration::from_secs(10)).await;
    let run = &runs[0];
    assert!(
        run["error"].as_str().unwrap().contains("handler panicked"),
        "{run}"
    );
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("index out of bounds"),
        "{run}"
    );
    assert!(
        run["traceback"]
            .as_str()
            .unwrap()
            .contains("stack backtrace"),
        "{run}"
    );
    assert_eq!(
        app.get("/api/v1/jobs?job_type=failed").await.1["jobs_count"],
        1
    );
    // Still serving, still running jobs.
    assert_eq!(app.get("/api/v1/liveness").await.0, 200);
    create(
        &app,
        json!({"job_id": "good", "handler": "log", "kwargs": {"message": "still here"}}),
    )
    .await;
    wait_runs(&app, "good", "succeeded", 1, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn retries_back_off_then_fail() {
    let app = TestApp::start().await;
    paused_job(
        &app,
        "flaky",
        "http",
        json!({"url": "http://127.0.0.1:1/", "timeout": 1}),
        json!({"max_retries": 2, "retry_backoff": "400ms"}),
    )
    .await;
    let (_, body, _) = trigger(&app, "flaky").await;
    let run_id = body["run"]["run_id"].as_str().unwrap().to_string();
    let run = wait_run(&app, &run_id, "failed", Duration::from_secs(20)).await;
    assert_eq!(run["attempt"], 3, "{run}");
    let history = run["history"].as_array().unwrap();
    let states: Vec<&str> = history.iter().map(|e| e["to"].as_str().unwrap()).collect();
    assert_eq!(
        states,
        vec!["queued", "running", "queued", "running", "queued", "running", "failed"]
    );
    assert!(
        reasons(&run)[2].contains("retry 1 of 2"),
        "{:?}",
        reasons(&run)
    );
    // Exponential: the second wait (base·2, halved at worst by jitter) is at least 400 ms.
    let at = |i: usize| time(&history[i]["at"]);
    assert!(
        at(3) - at(2) >= chrono::Duration::milliseconds(190),
        "{:?}",
        at(3) - at(2)
    );
    assert!(
        at(5) - at(4) >= chrono::Duration::milliseconds(390),
        "{:?}",
        at(5) - at(4)
    );
    assert_eq!(
        app.get("/api/v1/jobs?job_type=failed").await.1["jobs_count"],
        1
    );
}

#[tokio::test]
async fn timeout_ends_the_run_timed_out() {
    let app = TestApp::start().await;
    paused_job(
        &app,
        "long",
        "sleep",
        json!({"seconds": 60}),
        json!({"timeout": "500ms"}),
    )
    .await;
    let (_, body, _) = trigger(&app, "long").await;
    let run_id = body["run"]["run_id"].as_str().unwrap().to_string();
    let run = wait_run(&app, &run_id, "timed_out", Duration::from_secs(10)).await;
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 0.5s"),
        "{run}"
    );
    let took = time(&run["finished_at"]) - time(&run["started_at"]);
    assert!(took < chrono::Duration::seconds(5), "{took}");
}

#[tokio::test]
async fn cancel_a_running_and_a_queued_run() {
    let app = TestApp::start().await;
    // Two jobs sharing a lock key: the second waits while the first runs.
    paused_job(
        &app,
        "holder",
        "sleep",
        json!({"seconds": 60}),
        json!({"lock_key": "k"}),
    )
    .await;
    paused_job(
        &app,
        "waiter",
        "log",
        json!({"message": "w"}),
        json!({"lock_key": "k"}),
    )
    .await;
    let (_, holder, _) = trigger(&app, "holder").await;
    let holder_id = holder["run"]["run_id"].as_str().unwrap().to_string();
    wait_run(&app, &holder_id, "running", Duration::from_secs(10)).await;
    let (_, waiter, _) = trigger(&app, "waiter").await;
    let waiter_id = waiter["run"]["run_id"].as_str().unwrap().to_string();
    crate::support::assert_stays(
        "the waiter queued behind the lock",
        Duration::from_millis(1200),
        || async { run_of(&app, &waiter_id).await["state"] == "queued" },
    )
    .await;
    let (_, running) = app.get("/api/v1/runs?state=running").await;
    assert_eq!(running["runs_count"], 1);
    let (status, locks) = app.get("/api/v1/locks").await;
    assert_eq!(status, 200);
    assert_eq!(locks["locks"].as_array().unwrap().len(), 1, "{locks}");
    assert_eq!(locks["locks"][0]["lock_key"], "k");
    assert_eq!(locks["locks"][0]["run_id"], holder_id.as_str());
    assert_eq!(locks["locks"][0]["job_id"], "holder");

    let (status, cancelled) = app
        .post(&format!("/api/v1/runs/{waiter_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["run"]["state"], "cancelled");

    let (status, cancelling) = app
        .post(&format!("/api/v1/runs/{holder_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(cancelling["run"]["cancel_requested"], true);
    let run = wait_run(&app, &holder_id, "cancelled", Duration::from_secs(10)).await;
    assert!(time(&run["finished_at"]) - time(&run["started_at"]) < chrono::Duration::seconds(10));
    assert_error(
        &app.post(&format!("/api/v1/runs/{holder_id}/cancel"), json!({}))
            .await,
        409,
        "already finished",
    );
}

#[tokio::test]
async fn lock_key_serializes_jobs() {
    let app = TestApp::start().await;
    for id in ["a", "b", "c"] {
        paused_job(
            &app,
            id,
            "sleep",
            json!({"seconds": 0.3}),
            json!({"lock_key": "shared"}),
        )
        .await;
    }
    let mut ids = Vec::new();
    for id in ["a", "b", "c"] {
        ids.push(
            trigger(&app, id).await.1["run"]["run_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut spans = Vec::new();
    for id in &ids {
        let run = wait_run(&app, id, "succeeded", Duration::from_secs(15)).await;
        spans.push((time(&run["started_at"]), time(&run["finished_at"])));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "runs with one lock_key overlapped: {spans:?}"
        );
    }
}

#[tokio::test]
async fn operator_override_is_recorded() {
    let app = TestApp::start().await;
    paused_job(&app, "stuck", "sleep", json!({"seconds": 60}), json!({})).await;
    let (_, body, _) = trigger(&app, "stuck").await;
    let run_id = body["run"]["run_id"].as_str().unwrap().to_string();
    wait_run(&app, &run_id, "running", Duration::from_secs(10)).await;
    let path = format!("/api/v1/runs/{run_id}/state");
    assert_error(
        &app.call(
            reqwest::Method::PUT,
            &path,
            Some(json!({"state": "failed", "reason": " "})),
        )
        .await,
        400,
        "reason",
    );
    assert_error(
        &app.call(
            reqwest::Method::PUT,
            &path,
            Some(json!({"state": "running", "reason": "x"})),
        )
        .await,
        400,
        "state",
    );
    assert_error(
        &app.call(
            reqwest::Method::PUT,
            &path,
            Some(json!({"state": "failed"})),
        )
        .await,
        400,
        "reason",
    );
    let (status, body) = app
        .call(
            reqwest::Method::PUT,
            &path,
            Some(json!({"state": "failed", "reason": "host rebooted"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["run"]["state"], "failed");
    let last = body["run"]["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["reason"], "operator: host rebooted");
    assert_eq!(last["from"], "running");
    // The worker still running it can no longer overwrite the operator's state.
    crate::support::assert_stays(
        "the override to stick",
        Duration::from_millis(1500),
        || async { run_of(&app, &run_id).await["state"] == "failed" },
    )
    .await;
    // Re-queueing by hand respects max_instances (1): another run is active now.
    let (status, _, _) = trigger(&app, "stuck").await;
    assert_eq!(status, 201);
    let requeue = json!({"state": "queued", "reason": "try again"});
    assert_error(
        &app.call(reqwest::Method::PUT, &path, Some(requeue)).await,
        409,
        "max_instances",
    );
}

#[tokio::test]
async fn runs_api_filters_and_errors() {
    let app = TestApp::start().await;
    paused_job(&app, "r1", "log", json!({"message": "1"}), json!({})).await;
    paused_job(&app, "r2", "log", json!({"message": "2"}), json!({})).await;
    for _ in 0..3 {
        let id = trigger(&app, "r1").await.1["run"]["run_id"]
            .as_str()
            .unwrap()
            .to_string();
        wait_run(&app, &id, "succeeded", Duration::from_secs(10)).await;
    }
    let id = trigger(&app, "r2").await.1["run"]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_run(&app, &id, "succeeded", Duration::from_secs(10)).await;

    let (_, all) = app.get("/api/v1/runs").await;
    assert_eq!(all["runs_count"], 4);
    let (_, r1) = app
        .get("/api/v1/runs?job_id=r1&state=succeeded&limit=2")
        .await;
    assert_eq!(r1["runs_count"], 3);
    assert_eq!(r1["runs"].as_array().unwrap().len(), 2);
    let (_, job_runs) = app.get("/api/v1/jobs/r1/runs?limit=20").await;
    assert_eq!(job_runs["runs_count"], 3);
    let since = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339()
        .replace('+', "%2B");
    assert_eq!(
        app.get(&format!("/api/v1/runs?since={since}")).await.1["runs_count"],
        0
    );
    assert_eq!(runs_of(&app, "r2").await.len(), 1);

    assert_error(&app.get("/api/v1/runs?state=exploded").await, 400, "state");
    assert_error(&app.get("/api/v1/runs?since=yesterday").await, 400, "since");
    assert_error(&app.get("/api/v1/runs/not-a-uuid").await, 400, "run_id");
    assert_error(
        &app.get(&format!("/api/v1/runs/{}", uuid::Uuid::new_v4()))
            .await,
        404,
        "no run",
    );
    assert_error(&app.get("/api/v1/jobs/nope/runs").await, 404, "nope");
    paused_job(&app, "r3", "log", json!({"message": "3"}), json!({})).await;
    assert_error(
        &app.get("/api/v1/jobs/r3/runs/latest").await,
        404,
        "no runs",
    );
}

#[tokio::test]
async fn http_handler_calls_a_real_server() {
    let server =
        axum::Router::new().route("/ping", get(|| async { axum::Json(json!({"pong": true})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, server).await });

    let app = TestApp::start().await;
    let (status, body) = app
        .post(
            "/api/v1/jobs/http?job_id=ping",
            json!({"url": format!("http://{address}/ping")}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let runs = wait_runs(&app, "ping", "succeeded", 1, Duration::from_secs(10)).await;
    assert_eq!(runs[0]["result"]["status"], 200);
    assert_eq!(runs[0]["result"]["body"], json!({"pong": true}));
    wait_job_state(&app, "ping", "completed").await;
}

/// Every request of an `http` run names the run, so the service called can
/// de-duplicate a run executed again after a crash (issue #14 §3).
#[tokio::test]
async fn http_requests_carry_the_run_headers_a_server_can_deduplicate_by() {
    let server = axum::Router::new().route(
        "/seen",
        get(|headers: axum::http::HeaderMap| async move {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            axum::Json(json!({
                "run_id": header("x-jobsd-run-id"),
                "job_id": header("x-jobsd-job-id"),
                "scheduled_for": header("x-jobsd-scheduled-for"),
                "attempt": header("x-jobsd-attempt"),
                "idempotency_key": header("idempotency-key"),
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, server).await });

    let app = TestApp::start().await;
    let url = format!("http://{address}/seen");
    let (status, body) = app
        .post("/api/v1/jobs/http?job_id=named", json!({"url": url}))
        .await;
    assert_eq!(status, 201, "{body}");
    let runs = wait_runs(&app, "named", "succeeded", 1, Duration::from_secs(10)).await;
    let run = &runs[0];
    let seen = &run["result"]["body"];
    assert_eq!(seen["run_id"], run["run_id"], "{run}");
    assert_eq!(seen["idempotency_key"], run["run_id"], "{run}");
    assert_eq!(seen["job_id"], "named");
    assert_eq!(seen["attempt"], "1");
    let sent = chrono::DateTime::parse_from_rfc3339(seen["scheduled_for"].as_str().unwrap())
        .expect("RFC 3339");
    let scheduled =
        chrono::DateTime::parse_from_rfc3339(run["scheduled_for"].as_str().unwrap()).unwrap();
    assert_eq!(sent, scheduled, "{run}");

    // A kwarg turns them off.
    let (status, body) = app
        .post(
            "/api/v1/jobs/http?job_id=quiet",
            json!({"url": url, "run_headers": false}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let runs = wait_runs(&app, "quiet", "succeeded", 1, Duration::from_secs(10)).await;
    assert_eq!(
        runs[0]["result"]["body"],
        json!({"run_id": null, "job_id": null, "scheduled_for": null, "attempt": null, "idempotency_key": null})
    );
}

#[tokio::test]
async fn command_handler_runs_a_real_process_when_enabled() {
    let app = TestApp::start_with(&["--enable-command-handler"]).await;
    let (status, body) = app
        .post(
            "/api/v1/jobs/command?job_id=echo",
            json!({"program": "sh", "args": ["-c", "echo \"hi $WHO\" | tr a-z A-Z"], "env": {"WHO": "there"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let runs = wait_runs(&app, "echo", "succeeded", 1, Duration::from_secs(10)).await;
    assert_eq!(runs[0]["result"]["exit_code"], 0);
    // `env` values are secrets, masked where a result repeats them as
    // given; upper-cased, this one shows that it reached the program.
    assert_eq!(runs[0]["result"]["stdout"], "HI THERE\n");

    app.post(
        "/api/v1/jobs/command?job_id=fails",
        json!({"program": "sh", "args": ["-c", "echo oops >&2; exit 3"]}),
    )
    .await;
    let runs = wait_runs(&app, "fails", "failed", 1, Duration::from_secs(10)).await;
    let error = runs[0]["error"].as_str().unwrap();
    assert!(error.contains('3') && error.contains("oops"), "{error}");
}

#[tokio::test]
async fn progress_reported_by_a_handler_is_stored_while_it_runs() {
    let app = TestApp::start_with(&["--lease", "1500ms", "--cancel-grace", "300ms"]).await;
    paused_job(&app, "napper", "sleep", json!({"seconds": 5}), json!({})).await;
    let (_, body, _) = trigger(&app, "napper").await;
    let run_id = body["run"]["run_id"].as_str().unwrap().to_string();
    let run = wait_for("progress stored", Duration::from_secs(10), || async {
        let run = run_of(&app, &run_id).await;
        (run["state"] == "running"
            && run["progress"]["slept_seconds"].as_f64().unwrap_or(0.0) > 0.0)
            .then_some(run)
    })
    .await;
    assert!(run["lease_expires_at"].is_string(), "{run}");
    app.post(&format!("/api/v1/runs/{run_id}/cancel"), json!({}))
        .await;
}

/// A worker whose lease was taken over stops its handler (here a real
/// process, which must stop writing) and never records an outcome over the
/// new owner's.
#[tokio::test]
async fn a_worker_that_loses_its_lease_stops_its_handler() {
    let app = TestApp::start_with(&[
        "--enable-command-handler",
        "--lease",
        "1500ms",
        "--cancel-grace",
        "300ms",
    ])
    .await;
    let file = std::env::temp_dir().join(format!("jobsd-lease-{}", uuid::Uuid::new_v4()));
    let script = format!(
        "while true; do echo x >> '{}'; sleep 0.05; done",
        file.display()
    );
    paused_job(
        &app,
        "writer",
        "command",
        json!({"program": "sh", "args": ["-c", script]}),
        json!({}),
    )
    .await;
    let (_, body, _) = trigger(&app, "writer").await;
    let run_id = body["run"]["run_id"].as_str().unwrap().to_string();
    wait_run(&app, &run_id, "running", Duration::from_secs(10)).await;
    let size = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    wait_for("the process writes", Duration::from_secs(10), || async {
        (size() > 0).then_some(())
    })
    .await;

    // Another instance takes the run over (as the supervisor of a replica would).
    crate::support::take_over_run(&app.store, &run_id, "thief").await;
    // Within a heartbeat or two the handler is stopped: the file stops growing.
    let stopped_at = wait_for(
        "the process to be stopped",
        Duration::from_secs(10),
        || async {
            let before = size();
            tokio::time::sleep(Duration::from_millis(300)).await;
            (size() == before).then_some(before)
        },
    )
    .await;
    crate::support::assert_stays(
        "the process stays stopped",
        Duration::from_millis(500),
        || async { size() == stopped_at },
    )
    .await;
    let run = run_of(&app, &run_id).await;
    assert_eq!(
        run["state"], "running",
        "the new owner's run is untouched: {run}"
    );
    assert_eq!(run["instance"], "thief");
    let _ = std::fs::remove_file(&file);
}

/// Sleeps briefly and keeps the highest number of executions at once.
#[derive(Clone, Default)]
struct ConcurrencyProbe {
    now: Arc<AtomicUsize>,
    highest: Arc<AtomicUsize>,
}

#[async_trait]
impl Handler for ConcurrencyProbe {
    fn name(&self) -> &str {
        "probe"
    }
    fn kwargs_schema(&self) -> Value {
        json!({"type": "object"})
    }
    fn example(&self) -> Value {
        json!({})
    }
    async fn execute(&self, _ctx: RunContext, _kwargs: Value) -> HandlerResult {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.highest.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(json!(null))
    }
}

#[tokio::test]
async fn workers_bounds_how_many_handlers_execute_at_once() {
    let probe = ConcurrencyProbe::default();
    let registered = probe.clone();
    let app = TestApp::start_custom(TestDb::new(), &["--workers", "3"], |r| {
        r.register(registered).unwrap()
    })
    .await;
    let jobs: Vec<Value> = (0..12)
        .map(|i| json!({"job_id": format!("w{i}"), "handler": "probe"}))
        .collect();
    let (status, body) = app.post("/api/v1/jobs/bulk", json!({"jobs": jobs})).await;
    assert_eq!(status, 201, "{body}");
    for i in 0..12 {
        wait_runs(
            &app,
            &format!("w{i}"),
            "succeeded",
            1,
            Duration::from_secs(20),
        )
        .await;
    }
    assert_eq!(
        probe.highest.load(Ordering::SeqCst),
        3,
        "--workers 3: three at once, never more"
    );
}
