//! `Idempotency-Key` over HTTP (issue #12 §6), on the backend
//! `JOBSD_TEST_BACKEND` names: a retry gets the first answer and creates
//! nothing; concurrent retries create one job; another request under the
//! key is refused; a key is free again once expired (and pruned); run-now
//! queues one run; bad keys and keys left pending by a dead server.

use std::time::Duration;

use jobsd::store::{Begun, IdempotencyBegin, IdempotencyKey};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{assert_error, execute_sql, micros, wait_for, TestApp};

/// The answer to a request: status, the replay header, the location, the body.
struct Answer {
    status: u16,
    replayed: bool,
    location: Option<String>,
    body: Value,
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    key: Option<&[u8]>,
    body: Option<&Value>,
) -> Answer {
    let mut req = app.client.request(method, app.url(path));
    if let Some(key) = key {
        req = req.header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes(key).expect("a header value"),
        );
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.expect("request sent");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let location = header("location");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body read");
    Answer {
        status,
        replayed,
        location,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

async fn create(app: &TestApp, key: &str, body: &Value) -> Answer {
    send(
        app,
        Method::POST,
        "/api/v1/jobs",
        Some(key.as_bytes()),
        Some(body),
    )
    .await
}

/// A paused job, so that nothing runs while the test looks.
fn paused(job_id: Option<&str>) -> Value {
    let mut job = json!({"handler": "log", "kwargs": {"message": "hi"},
                         "periodically": "1 day", "state": "paused"});
    if let Some(id) = job_id {
        job["job_id"] = json!(id);
    }
    job
}

async fn job_count(app: &TestApp) -> i64 {
    let (status, body) = app.get("/api/v1/jobs").await;
    assert_eq!(status, 200, "{body}");
    body["jobs_count"].as_i64().unwrap()
}

#[tokio::test]
async fn a_retry_gets_the_first_answer_again_and_creates_nothing() {
    let app = TestApp::start().await;
    // No job_id: every request that ran would create a job of its own.
    let job = paused(None);
    let first = create(&app, "order-1", &job).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(!first.replayed);
    for _ in 0..3 {
        let again = create(&app, "order-1", &job).await;
        assert_eq!(again.status, 201, "{}", again.body);
        assert!(again.replayed, "marked Idempotent-Replayed: true");
        assert_eq!(again.body, first.body);
    }
    assert_eq!(job_count(&app).await, 1);

    // A 4xx answer is kept and replayed too.
    let bad = json!({"handler": "log", "periodically": "5 parsecs"});
    let refused = create(&app, "order-2", &bad).await;
    assert_error(&(refused.status, refused.body.clone()), 400, "periodically");
    let again = create(&app, "order-2", &bad).await;
    assert_eq!((again.status, again.replayed), (400, true));
    assert_eq!(again.body, refused.body);

    // Without a key, nothing is replayed: a second request runs again.
    let plain = send(&app, Method::POST, "/api/v1/jobs", None, Some(&job)).await;
    assert_eq!((plain.status, plain.replayed), (201, false));
    assert_eq!(job_count(&app).await, 2);
}

#[tokio::test]
async fn concurrent_requests_under_one_key_create_one_job() {
    let app = TestApp::start().await;
    let job = paused(None);
    let answers = futures::future::join_all((0..12).map(|_| create(&app, "burst", &job))).await;
    let created: Vec<&Answer> = answers.iter().filter(|a| a.status == 201).collect();
    assert!(!created.is_empty(), "one of them ran");
    for a in &answers {
        assert!(
            a.status == 201 || a.status == 409,
            "{}: {}",
            a.status,
            a.body
        );
        if a.status == 409 {
            assert_error(&(a.status, a.body.clone()), 409, "in progress");
        }
    }
    let job_id = &created[0].body["job"]["job_id"];
    assert!(created.iter().all(|a| &a.body["job"]["job_id"] == job_id));
    assert_eq!(job_count(&app).await, 1, "exactly one job created");
    // Once answered, every retry replays it.
    let later = create(&app, "burst", &job).await;
    assert_eq!((later.status, later.replayed), (201, true));
    assert_eq!(&later.body["job"]["job_id"], job_id);
}

#[tokio::test]
async fn another_request_under_the_same_key_is_refused_with_422() {
    let app = TestApp::start().await;
    let first = create(&app, "k", &paused(Some("a"))).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let other = create(&app, "k", &paused(Some("b"))).await;
    assert_error(
        &(other.status, other.body.clone()),
        422,
        "different request",
    );
    // The same key on another route is another key.
    let run = send(&app, Method::POST, "/api/v1/jobs/a/run", Some(b"k"), None).await;
    assert_eq!(run.status, 201, "{}", run.body);
    assert_eq!(job_count(&app).await, 1);
}

#[tokio::test]
async fn an_expired_key_is_free_again_and_pruned() {
    let app = TestApp::start_with(&["--retention-interval", "200ms"]).await;
    let first = create(&app, "daily", &paused(Some("a"))).await;
    assert_eq!(first.status, 201, "{}", first.body);
    // A day and an hour ago.
    let old = chrono::Utc::now() - chrono::Duration::hours(25);
    let aged = execute_sql(
        &app.store,
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'daily'",
        &format!(
            "UPDATE idempotency_keys SET created_at = {} WHERE key = 'daily'",
            micros(old)
        ),
    )
    .await;
    assert_eq!(aged, 1);
    // Pruned by the maintenance loop...
    wait_for(
        "the expired key to be pruned",
        Duration::from_secs(10),
        || async {
            let left = execute_sql(
                &app.store,
                "UPDATE idempotency_keys SET key = key WHERE key = 'daily'",
                "UPDATE idempotency_keys SET key = key WHERE key = 'daily'",
            )
            .await;
            (left == 0).then_some(())
        },
    )
    .await;
    // ...and the key is free for a new request.
    let next = create(&app, "daily", &paused(Some("b"))).await;
    assert_eq!((next.status, next.replayed), (201, false), "{}", next.body);
    assert_eq!(job_count(&app).await, 2);
}

#[tokio::test]
async fn run_now_under_a_key_queues_one_run() {
    let app = TestApp::start().await;
    assert_eq!(
        create(&app, "c", &paused(Some("nightly"))).await.status,
        201
    );
    let first = send(
        &app,
        Method::POST,
        "/api/v1/jobs/nightly/run",
        Some(b"r1"),
        None,
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = send(
        &app,
        Method::POST,
        "/api/v1/jobs/nightly/run",
        Some(b"r1"),
        None,
    )
    .await;
    assert_eq!((again.status, again.replayed), (201, true));
    assert_eq!(again.body["run"]["run_id"], first.body["run"]["run_id"]);
    assert!(first.location.is_some());
    assert_eq!(again.location, first.location, "the Location is replayed");
    let (status, runs) = app.get("/api/v1/jobs/nightly/runs").await;
    assert_eq!(status, 200);
    assert_eq!(runs["runs_count"], 1, "{runs}");
}

#[tokio::test]
async fn bad_keys_are_refused_with_400_and_change_nothing() {
    let app = TestApp::start().await;
    let long = "k".repeat(256);
    for (key, needle) in [
        (long.as_bytes(), "1 to 255"),
        (&b""[..], "1 to 255"),
        ("clé".as_bytes(), "printable ascii"),
    ] {
        let a = send(
            &app,
            Method::POST,
            "/api/v1/jobs",
            Some(key),
            Some(&paused(None)),
        )
        .await;
        assert_error(&(a.status, a.body.clone()), 400, needle);
    }
    assert_eq!(job_count(&app).await, 0);
}

/// A key left pending (its server stopped between storing it and
/// answering) answers 409 until it expires: nothing is done twice.
#[tokio::test]
async fn a_key_left_pending_answers_409() {
    let app = TestApp::start().await;
    let job = paused(Some("once"));
    let body = serde_json::to_vec(&job).unwrap();
    let now = chrono::Utc::now();
    let pending = IdempotencyBegin {
        key: IdempotencyKey {
            caller: "anonymous".into(),
            method: "POST".into(),
            route: "/api/v1/jobs".into(),
            key: "stuck".into(),
        },
        claim: uuid::Uuid::new_v4(),
        request_hash: jobsd::idempotency::request_hash("/api/v1/jobs", &body),
        now,
        expired_before: jobsd::idempotency::expired_before(now),
    };
    assert_eq!(
        app.store.idempotency_begin(&pending).await.unwrap(),
        Begun::Started
    );
    let a = create(&app, "stuck", &job).await;
    assert_error(
        &(a.status, a.body.clone()),
        409,
        "stopped before it answered",
    );
    assert_error(&(a.status, a.body.clone()), 409, "expires at");
    assert_eq!(job_count(&app).await, 0);
}

/// Keys are per caller: two tokens sending the same key make two jobs,
/// and each token's retry replays its own answer.
#[tokio::test]
async fn each_token_has_keys_of_its_own() {
    let app = TestApp::start_with(&["--auth", "on"]).await;
    let mut answers = Vec::new();
    for name in ["ci", "cron"] {
        let token = jobsd::auth::issue(
            &app.store,
            name,
            jobsd::auth::Scope::Write,
            chrono::Utc::now(),
            None,
        )
        .await
        .unwrap()
        .secret;
        let mut sent = Vec::new();
        for _ in 0..2 {
            let resp = app
                .client
                .post(app.url("/api/v1/jobs"))
                .bearer_auth(&token)
                .header("Idempotency-Key", "shared")
                .json(&paused(None))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 201);
            let body: Value = resp.json().await.unwrap();
            sent.push(body["job"]["job_id"].clone());
        }
        assert_eq!(sent[0], sent[1], "{name}'s retry replays its answer");
        answers.push(sent[0].clone());
    }
    assert_ne!(answers[0], answers[1], "two tokens, two jobs");
}

/// A 5xx answer is not kept: it releases the key, and a retry runs the
/// request again (here, once the fault is gone, it queues the run).
#[tokio::test]
async fn a_server_error_releases_the_key() {
    let app = TestApp::start().await;
    assert_eq!(create(&app, "c", &paused(Some("j"))).await.status, 201);
    // A fault: every insert into runs fails.
    execute_sql(
        &app.store,
        "CREATE FUNCTION refuse_runs() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql",
        "SELECT 1",
    )
    .await;
    execute_sql(
        &app.store,
        "CREATE TRIGGER refuse_runs BEFORE INSERT ON runs FOR EACH ROW EXECUTE FUNCTION refuse_runs()",
        "CREATE TRIGGER refuse_runs BEFORE INSERT ON runs BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    .await;
    let failed = send(&app, Method::POST, "/api/v1/jobs/j/run", Some(b"r"), None).await;
    assert_eq!(failed.status, 500, "{}", failed.body);
    execute_sql(
        &app.store,
        "DROP TRIGGER refuse_runs ON runs",
        "DROP TRIGGER refuse_runs",
    )
    .await;
    let retried = send(&app, Method::POST, "/api/v1/jobs/j/run", Some(b"r"), None).await;
    assert_eq!(
        (retried.status, retried.replayed),
        (201, false),
        "{}",
        retried.body
    );
    let again = send(&app, Method::POST, "/api/v1/jobs/j/run", Some(b"r"), None).await;
    assert_eq!((again.status, again.replayed), (201, true));
}
