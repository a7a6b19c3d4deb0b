//! Remote completion (issue #14 §4, §5): an `http` job with
//! `"callback": true` whose request a real local server accepts (202),
//! then reports back through the run's callback URL with its token: the
//! run waits, still `running`, for the service; progress, heartbeats and
//! the end come from the service; every call is fenced by run and attempt.
//! On the test backend (`JOBSD_TEST_BACKEND`); the replica test is
//! PostgreSQL's (two `jobsd serve` processes on one database).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{json, Value};

use crate::support::{assert_error, assert_stays, wait_for, Replica, TestApp, TestDb};

/// What the called service saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    callback_url: String,
    token: String,
    run_id: String,
    attempt: String,
}

/// A service that accepts every request with 202 and keeps its callback
/// headers, for the test to report back with.
struct Service {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Service {
    async fn start() -> Service {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let router = axum::Router::new()
            .route(
                "/work",
                post(
                    |State(seen): State<Arc<Mutex<Vec<Seen>>>>, headers: HeaderMap| async move {
                        let header = |name: &str| {
                            headers
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string()
                        };
                        seen.lock().unwrap().push(Seen {
                            callback_url: header("x-jobsd-callback-url"),
                            token: header("x-jobsd-callback-token"),
                            run_id: header("x-jobsd-run-id"),
                            attempt: header("x-jobsd-attempt"),
                        });
                        (StatusCode::ACCEPTED, "accepted")
                    },
                ),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Service {
            url: format!("http://{address}/work"),
            seen,
        }
    }

    /// The `n`th request (1-based) once it has come.
    async fn request(&self, n: usize) -> Seen {
        wait_for(
            &format!("request {n} at the service"),
            Duration::from_secs(15),
            || async { self.seen.lock().unwrap().get(n - 1).cloned() },
        )
        .await
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A free local port, and the flags that serve on it and name it as the
/// public URL.
fn public_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn app_with_public_url(extra: &[&str]) -> TestApp {
    let port = public_port();
    let bind = format!("127.0.0.1:{port}");
    let public = format!("http://127.0.0.1:{port}");
    let mut args = vec!["--bind", &bind, "--public-url", &public];
    args.extend_from_slice(extra);
    TestApp::start_with(&args).await
}

/// Calls a callback route with `token` as the bearer credential.
async fn report(url: &str, route: &str, token: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/{route}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn create(app: &TestApp, job_id: &str, service: &Service, extra: Value) {
    let mut body = json!({
        "job_id": job_id,
        "handler": "http",
        "kwargs": {"url": service.url, "method": "POST", "callback": true},
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, body) = app.post("/api/v1/jobs", body).await;
    assert_eq!(status, 201, "{body}");
}

async fn run(app: &TestApp, run_id: &str) -> Value {
    let (status, body) = app.get(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(status, 200, "{body}");
    body["run"].clone()
}

async fn wait_state(app: &TestApp, run_id: &str, state: &str, within: Duration) -> Value {
    wait_for(&format!("run {run_id} {state}"), within, || async {
        let run = run(app, run_id).await;
        (run["state"] == state).then_some(run)
    })
    .await
}

fn reasons(run: &Value) -> Vec<String> {
    run["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until the run's request was accepted and recorded so.
async fn wait_accepted(app: &TestApp, run_id: &str) -> Value {
    wait_for(
        "the run waiting for its callback",
        Duration::from_secs(10),
        || async {
            // The newest step: a retried run's earlier attempt was
            // accepted too, and its step must not pass for this one's.
            let run = run(app, run_id).await;
            reasons(&run)
                .last()
                .is_some_and(|r| r.starts_with("request accepted"))
                .then_some(run)
        },
    )
    .await
}

#[tokio::test]
async fn a_callback_run_waits_for_its_service_which_reports_progress_and_success() {
    let service = Service::start().await;
    let app = app_with_public_url(&[]).await;
    create(&app, "remote", &service, json!({})).await;
    let seen = service.request(1).await;
    assert_eq!(seen.attempt, "1");
    assert_eq!(
        seen.callback_url,
        app.url(&format!("/api/v1/runs/{}", seen.run_id)),
        "the callback URL is the run's under --public-url"
    );
    assert!(seen.token.starts_with("jobsdcb_"), "{seen:?}");

    // Accepted, not done: the run stays running, without a lease.
    let waiting = wait_accepted(&app, &seen.run_id).await;
    assert_eq!(waiting["state"], "running", "{waiting}");
    assert!(waiting["lease_expires_at"].is_null(), "{waiting}");
    assert_stays("the run running", Duration::from_millis(600), || async {
        run(&app, &seen.run_id).await["state"] == "running"
    })
    .await;

    // Progress: on the run and on its job, with its time.
    let (status, ack) = report(
        &seen.callback_url,
        "progress",
        &seen.token,
        json!({"progress": {"done": 3, "total": 10}}),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    let shown = run(&app, &seen.run_id).await;
    assert_eq!(shown["progress"], json!({"done": 3, "total": 10}));
    assert_eq!(shown["progress_updated_at"], ack["progress_updated_at"]);
    assert!(shown["progress_updated_at"].is_string(), "{shown}");
    let (_, job) = app.get("/api/v1/jobs/remote").await;
    assert_eq!(
        job["job"]["progress"]["progress"],
        json!({"done": 3, "total": 10}),
        "{job}"
    );
    assert_eq!(job["job"]["progress"]["run_id"], json!(seen.run_id));
    assert_eq!(
        job["job"]["progress"]["updated_at"],
        ack["progress_updated_at"]
    );
    let (_, list) = app.get("/api/v1/jobs").await;
    assert_eq!(list["jobs"][0]["progress"]["progress"]["done"], 3, "{list}");
    // And as an event, at the time the run shows.
    let events = wait_for("the progress event", Duration::from_secs(10), || async {
        let (_, page) = app
            .get(&format!(
                "/api/v1/events?type=run.progress&run_id={}",
                seen.run_id
            ))
            .await;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["job_id"], "remote");
    assert_eq!(
        events[0]["data"]["run"]["progress"],
        json!({"done": 3, "total": 10})
    );
    assert_eq!(
        events[0]["at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap(),
        ack["progress_updated_at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    );

    // Bad bodies change nothing.
    let (status, _) = report(
        &seen.callback_url,
        "complete",
        &seen.token,
        json!({"state": "done"}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = report(
        &seen.callback_url,
        "progress",
        &seen.token,
        json!({"nope": 1}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(run(&app, &seen.run_id).await["state"], "running");

    // Malformed and unknown tokens: 401, nothing changed.
    let unknown = format!("jobsdcb_{}", "a".repeat(40));
    for token in ["not-a-token", unknown.as_str()] {
        let response = report(
            &seen.callback_url,
            "complete",
            token,
            json!({"state": "succeeded"}),
        )
        .await;
        assert_error(&response, 401, "callback token");
    }
    let response = reqwest::Client::new()
        .post(format!("{}/complete", seen.callback_url))
        .json(&json!({"state": "succeeded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401, "no token at all");
    assert_eq!(run(&app, &seen.run_id).await["state"], "running");

    // The end, reported by the service.
    let (status, ack) = report(
        &seen.callback_url,
        "complete",
        &seen.token,
        json!({"state": "succeeded", "result": {"rows": 42, "echo": seen.token}}),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["state"], "succeeded");
    let done = run(&app, &seen.run_id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["rows"], 42);
    assert_eq!(
        done["result"]["echo"], "***",
        "the token is scrubbed: {done}"
    );
    assert!(
        reasons(&done).contains(&"the service reported succeeded".to_string()),
        "{done}"
    );
    // The one-shot job completed and its counters moved, as for any run.
    let (_, job) = app.get("/api/v1/jobs/remote").await;
    assert_eq!(job["job"]["state"], "completed", "{job}");
    assert_eq!(job["job"]["run_counts"]["succeeded"], 1, "{job}");
    assert!(
        job["job"].get("progress").is_none(),
        "no progress once ended: {job}"
    );
    // And the end is counted, as a worker's outcome is.
    let scraped = crate::metrics::scrape(&app).await;
    assert_eq!(
        scraped.value("jobsd_runs", &[("handler", "http"), ("state", "succeeded")]),
        Some(1.0)
    );

    // A second complete: 409, nothing changed.
    let response = report(
        &seen.callback_url,
        "complete",
        &seen.token,
        json!({"state": "failed"}),
    )
    .await;
    assert_error(&response, 409, "succeeded already");
    let response = report(
        &seen.callback_url,
        "progress",
        &seen.token,
        json!({"progress": 1}),
    )
    .await;
    assert_eq!(response.0, 409);
    let after = run(&app, &seen.run_id).await;
    assert_eq!(after["state"], "succeeded");
    assert_eq!(after["history"], done["history"]);

    // The token is shown nowhere.
    let (_, runs) = app.get("/api/v1/runs").await;
    assert!(!runs.to_string().contains(&seen.token[8..]), "{runs}");
}

#[tokio::test]
async fn a_reported_failure_is_retried_with_a_new_token_and_the_old_one_is_stale() {
    let service = Service::start().await;
    let app = app_with_public_url(&[]).await;
    create(
        &app,
        "flaky",
        &service,
        json!({"max_retries": 1, "retry_backoff": "0s"}),
    )
    .await;
    let first = service.request(1).await;
    wait_accepted(&app, &first.run_id).await;
    let (status, ack) = report(
        &first.callback_url,
        "complete",
        &first.token,
        json!({"state": "failed", "error": "disk full"}),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["state"], "queued", "retried: {ack}");

    let second = service.request(2).await;
    assert_eq!(second.run_id, first.run_id);
    assert_eq!(second.attempt, "2");
    assert_ne!(second.token, first.token, "a new attempt, a new token");
    let waiting = wait_accepted(&app, &second.run_id).await;
    assert_eq!(waiting["attempt"], 2);

    // The first attempt's token: 409, nothing changed.
    for route in ["complete", "progress", "heartbeat"] {
        let response = report(
            &first.callback_url,
            route,
            &first.token,
            json!({"state": "succeeded", "progress": 1}),
        )
        .await;
        assert_error(&response, 409, "attempt 1");
    }
    let unchanged = run(&app, &second.run_id).await;
    assert_eq!(unchanged["state"], "running");
    assert_eq!(unchanged["history"], waiting["history"]);
    assert!(unchanged["progress"].is_null());

    // The last attempt fails for good: a failure record, as for any run.
    let (status, ack) = report(
        &second.callback_url,
        "complete",
        &second.token,
        json!({"state": "failed", "error": "disk still full"}),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    let failed = run(&app, &second.run_id).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["error"], "disk still full");
    let (_, failures) = app.get("/api/v1/jobs?job_type=failed").await;
    assert_eq!(failures["jobs_count"], 1, "{failures}");
}

#[tokio::test]
async fn without_a_callback_the_run_times_out_at_its_deadline_and_heartbeats_extend_it() {
    let service = Service::start().await;
    let app = app_with_public_url(&["--lease", "1s", "--cancel-grace", "300ms"]).await;
    // No callback ever: timed out once its timeout (end to end) passes.
    create(&app, "silent", &service, json!({"timeout": "2s"})).await;
    let silent = service.request(1).await;
    wait_accepted(&app, &silent.run_id).await;
    let ended = wait_state(&app, &silent.run_id, "timed_out", Duration::from_secs(15)).await;
    assert_eq!(ended["attempt"], 1, "{ended}");
    let started =
        chrono::DateTime::parse_from_rfc3339(ended["started_at"].as_str().unwrap()).unwrap();
    let finished =
        chrono::DateTime::parse_from_rfc3339(ended["finished_at"].as_str().unwrap()).unwrap();
    assert!(
        finished - started >= chrono::Duration::seconds(2),
        "{ended}"
    );
    let response = report(
        &silent.callback_url,
        "complete",
        &silent.token,
        json!({"state": "succeeded"}),
    )
    .await;
    assert_error(&response, 409, "timed_out");

    // A service that heartbeats keeps its run past the timeout.
    create(&app, "beating", &service, json!({"timeout": "2s"})).await;
    let beating = service.request(2).await;
    wait_accepted(&app, &beating.run_id).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut last_deadline = Value::Null;
    while tokio::time::Instant::now() < until {
        let (status, ack) = report(
            &beating.callback_url,
            "heartbeat",
            &beating.token,
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "{ack}");
        assert!(ack["deadline"].is_string(), "{ack}");
        last_deadline = ack["deadline"].clone();
        assert_eq!(run(&app, &beating.run_id).await["state"], "running");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(last_deadline.is_string());
    // Then it stops: timed out a window after its last heartbeat.
    wait_state(&app, &beating.run_id, "timed_out", Duration::from_secs(15)).await;
    assert_eq!(service.count(), 2, "no retries without max_retries");
}

#[tokio::test]
async fn callback_jobs_need_a_public_url() {
    let service = Service::start().await;
    let app = TestApp::start().await;
    let (status, body) = app
        .post(
            "/api/v1/jobs",
            json!({"job_id": "nowhere", "handler": "http",
                   "kwargs": {"url": service.url, "callback": true}}),
        )
        .await;
    assert_error(&(status, body), 400, "--public-url");
    let (status, _) = app.get("/api/v1/jobs/nowhere").await;
    assert_eq!(status, 404, "nothing was created");
    // An existing job cannot be turned into one either.
    let (status, body) = app
        .post(
            "/api/v1/jobs",
            json!({"job_id": "plain", "handler": "http", "state": "paused",
                   "kwargs": {"url": service.url}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let response = app
        .patch(
            "/api/v1/jobs/plain",
            json!({"kwargs": {"url": service.url, "callback": true}}),
        )
        .await;
    assert_error(&response, 400, "--public-url");
}

/// A kill -9 of the replica that sent the request leaves the run waiting:
/// no lease to expire, so no rescue; the service completes it through the
/// other replica.
#[tokio::test]
async fn a_killed_replica_leaves_the_run_waiting_and_another_replica_completes_it() {
    let db = TestDb::postgres();
    let service = Service::start().await;
    // The service reports through the other replica whatever the URL says.
    let public = ["--public-url", "http://jobsd.invalid"];
    let a = Replica::spawn(&db, "cb-a", &public).await;
    let (status, body) = a
        .post(
            "/api/v1/jobs",
            json!({"job_id": "far", "handler": "http",
                   "kwargs": {"url": service.url, "method": "POST", "callback": true}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let seen = service.request(1).await;
    let b = Replica::spawn(&db, "cb-b", &public).await;
    let path = format!("/api/v1/runs/{}", seen.run_id);
    wait_for(
        "the run waiting for its callback",
        Duration::from_secs(10),
        || async {
            let (_, body) = b.get(&path).await;
            reasons(&body["run"])
                .iter()
                .any(|r| r.starts_with("request accepted"))
                .then_some(())
        },
    )
    .await;
    a.signal("KILL");
    // Well past the 2 s lease and several supervisor passes of b.
    assert_stays(
        "the run running, neither dead nor rescued",
        Duration::from_secs(5),
        || async {
            let (_, body) = b.get(&path).await;
            body["run"]["state"] == "running"
        },
    )
    .await;
    let other_replica = format!("{}{path}", b.base);
    let (status, ack) = report(
        &other_replica,
        "complete",
        &seen.token,
        json!({"state": "succeeded", "result": {"done": true}}),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    let (_, body) = b.get(&path).await;
    let run = &body["run"];
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["attempt"], 1, "not retried: {run}");
    assert_eq!(run["result"]["done"], true);
    let steps: Vec<&str> = run["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to"].as_str().unwrap())
        .collect();
    assert!(!steps.contains(&"dead"), "never dead: {run}");
    assert_eq!(service.count(), 1, "never sent again");
}
