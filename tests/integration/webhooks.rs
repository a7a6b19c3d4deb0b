//! Webhooks (issue #13 §2) through a real jobsd and a real receiver: an
//! axum server in the test that checks every delivery's signature with an
//! implementation written here from the Standard Webhooks specification
//! (not the code under test). Retries with `Retry-After`, a 410 disabling
//! the webhook, a rotated secret signing beside the new one, a replica
//! killed mid-delivery (the same `webhook-id` arrives again from another
//! replica), and bad input that changes nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::time::Instant;

use crate::support::{self, assert_error, wait_for, Replica, TestApp, TestDb};

/// What the receiver answers to one request.
#[derive(Clone)]
enum Answer {
    Status(u16, Option<&'static str>),
    /// Never answers (the request stays open).
    Hold,
}

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Got {
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct ReceiverState {
    got: Vec<Got>,
    /// Answers to give, in order; then 200.
    answers: VecDeque<Answer>,
}

#[derive(Clone, Default)]
struct Receiver {
    state: Arc<Mutex<ReceiverState>>,
    url: String,
}

impl Receiver {
    async fn start(answers: Vec<Answer>) -> Receiver {
        let state: Arc<Mutex<ReceiverState>> = Arc::default();
        state.lock().unwrap().answers = answers.into();
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let shared = shared.clone();
                async move {
                    let answer = {
                        let mut s = shared.lock().unwrap();
                        s.got.push(Got {
                            at: Instant::now(),
                            headers,
                            body,
                        });
                        s.answers.pop_front()
                    };
                    match answer.unwrap_or(Answer::Status(200, None)) {
                        Answer::Hold => std::future::pending::<Response>().await,
                        Answer::Status(code, retry_after) => {
                            let status = StatusCode::from_u16(code).unwrap();
                            match retry_after {
                                Some(after) => {
                                    (status, [("retry-after", after)], "busy").into_response()
                                }
                                None => (status, "thanks").into_response(),
                            }
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            state,
            url: format!("http://{address}/hook"),
        }
    }

    fn got(&self) -> Vec<Got> {
        self.state.lock().unwrap().got.clone()
    }

    async fn wait_for_count(&self, n: usize, deadline: Duration) -> Vec<Got> {
        wait_for(&format!("{n} deliveries"), deadline, || async {
            let got = self.got();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

/// The Standard Webhooks check, from the specification: the secret is
/// `whsec_` and base64 of the key; the signed content is
/// `{webhook-id}.{webhook-timestamp}.{body}`; `webhook-signature` is a
/// space-separated list of `v1,<base64 HMAC-SHA256>`. Returns, for each
/// signature in the header, whether `secret` produced it.
fn signatures_by(secret: &str, got: &Got) -> Vec<bool> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 key");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(
        format!(
            "{}.{}.",
            got.header("webhook-id"),
            got.header("webhook-timestamp")
        )
        .as_bytes(),
    );
    mac.update(&got.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    got.header("webhook-signature")
        .split(' ')
        .map(|sig| sig == format!("v1,{expected}"))
        .collect()
}

/// Checks what every delivery must carry, signed by `secret`.
fn assert_signed(secret: &str, got: &Got) {
    assert!(got.header("webhook-id").starts_with("msg_"), "{got:?}");
    let ts: i64 = got
        .header("webhook-timestamp")
        .parse()
        .expect("unix seconds");
    assert!((Utc::now().timestamp() - ts).abs() < 300, "timestamp {ts}");
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(signatures_by(secret, got), [true], "{got:?}");
    let body = got.json();
    assert!(
        body["type"].is_string() && body["timestamp"].is_string(),
        "{body}"
    );
    assert!(body.get("data").is_some(), "{body}");
}

async fn create(app: &TestApp, body: Value) -> (String, String) {
    let (status, created) = app.post("/api/v1/webhooks", body).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (
        created["webhook"]["id"].as_str().unwrap().to_string(),
        secret,
    )
}

async fn deliveries(app: &TestApp, id: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/webhooks/{id}/deliveries")).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().cloned().unwrap_or_default()
}

const FAST_RETRIES: [&str; 2] = ["--webhook-retry-delays", "100ms,100ms,100ms"];

#[tokio::test]
async fn events_are_delivered_signed_and_filtered() {
    let app = TestApp::start().await;
    let receiver = Receiver::start(vec![]).await;
    let (id, secret) = create(
        &app,
        json!({"name": "ops", "url": receiver.url, "event_types": ["run.succeeded"],
               "tags": ["billing"]}),
    )
    .await;
    let (status, listed) = app.get("/api/v1/webhooks").await;
    assert_eq!(status, 200);
    assert!(!listed.to_string().contains(&secret), "no secret in lists");
    for (job_id, tags) in [("other", json!([])), ("invoice", json!(["billing"]))] {
        let (status, body) = app
            .post(
                "/api/v1/jobs",
                json!({"job_id": job_id, "handler": "log", "kwargs": {"message": "hi"},
                       "when": Utc::now().to_rfc3339(), "tags": tags}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let got = receiver.wait_for_count(1, Duration::from_secs(20)).await;
    assert_signed(&secret, &got[0]);
    let body = got[0].json();
    assert_eq!(body["type"], "run.succeeded");
    assert_eq!(body["data"]["job_id"], "invoice");
    assert_eq!(body["data"]["data"]["run"]["job_id"], "invoice");
    // The other job's events and the other types are not sent.
    support::assert_stays("one delivery only", Duration::from_secs(2), || async {
        receiver.got().len() == 1
    })
    .await;
    let log = wait_for("the attempt logged", Duration::from_secs(10), || async {
        let d = deliveries(&app, &id).await;
        (d.first().map(|d| d["state"] == "delivered") == Some(true)).then_some(d)
    })
    .await;
    assert_eq!(log[0]["message_id"], got[0].header("webhook-id"));
    assert_eq!(log[0]["attempts"][0]["status"], 200);
    assert_eq!(log[0]["attempts"][0]["response"], "thanks");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("jobsd_webhook_deliveries_total{result=\"delivered\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn retries_honour_retry_after_and_a_410_disables_the_webhook() {
    let app = TestApp::start_with(&FAST_RETRIES).await;
    let receiver = Receiver::start(vec![
        Answer::Status(503, Some("2")),
        Answer::Status(500, None),
    ])
    .await;
    let (id, secret) = create(&app, json!({"name": "flaky", "url": receiver.url})).await;
    let (status, test) = app
        .post(&format!("/api/v1/webhooks/{id}/test"), json!({}))
        .await;
    assert_eq!(status, 202, "{test}");
    let got = receiver.wait_for_count(3, Duration::from_secs(20)).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After: 2 honoured: {gap:?}"
    );
    // Without Retry-After, the (test) schedule's 100 ms.
    assert!(got[2].at - got[1].at < Duration::from_millis(1500));
    let message = got[0].header("webhook-id");
    for g in &got {
        assert_signed(&secret, g);
        assert_eq!(g.header("webhook-id"), message, "stable across retries");
        assert_eq!(g.json()["type"], "webhook.test");
    }
    let log = wait_for("three attempts logged", Duration::from_secs(10), || async {
        let d = deliveries(&app, &id).await;
        (d.iter().any(|d| d["state"] == "delivered")).then_some(d)
    })
    .await;
    let test_delivery = log
        .iter()
        .find(|d| d["message_id"] == message.as_str())
        .unwrap();
    let statuses: Vec<i64> = test_delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 500, 200]);

    // 410 Gone: the webhook is disabled and says why, with an event.
    let gone = Receiver::start(vec![Answer::Status(410, None)]).await;
    let (gone_id, _) = create(&app, json!({"name": "gone", "url": gone.url})).await;
    app.post(&format!("/api/v1/webhooks/{gone_id}/test"), json!({}))
        .await;
    let hook = wait_for("disabled", Duration::from_secs(15), || async {
        let (_, body) = app.get(&format!("/api/v1/webhooks/{gone_id}")).await;
        body["webhook"]["disabled_at"]
            .is_string()
            .then_some(body["webhook"].clone())
    })
    .await;
    assert!(
        hook["disabled_reason"].as_str().unwrap().contains("410"),
        "{hook}"
    );
    let events = wait_for("webhook.disabled", Duration::from_secs(10), || async {
        let (_, body) = app.get("/api/v1/events?type=webhook.").await;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "webhook.disabled");
    assert!(events[0]["data"]["reason"]
        .as_str()
        .unwrap()
        .contains("gone"));
    // The flaky webhook, which answered 200 at last, got that event too.
    let got = receiver.wait_for_count(4, Duration::from_secs(20)).await;
    assert_eq!(got[3].json()["type"], "webhook.disabled");
    // Nothing more goes to the disabled one, until it is re-enabled.
    app.post(&format!("/api/v1/webhooks/{gone_id}/test"), json!({}))
        .await;
    support::assert_stays(
        "no delivery while disabled",
        Duration::from_secs(2),
        || async { gone.got().len() == 1 },
    )
    .await;
    let (status, body) = app
        .patch(
            &format!("/api/v1/webhooks/{gone_id}"),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["webhook"]["disabled_at"].is_null(), "{body}");
    gone.wait_for_count(2, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_new_one() {
    let app = TestApp::start().await;
    let receiver = Receiver::start(vec![]).await;
    let (id, old) = create(&app, json!({"name": "rotating", "url": receiver.url})).await;
    let (status, rotated) = app
        .post(
            &format!("/api/v1/webhooks/{id}/rotate"),
            json!({"keep_previous": "1h"}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(rotated["webhook"]["previous_secret_until"].is_string());
    app.post(&format!("/api/v1/webhooks/{id}/test"), json!({}))
        .await;
    let got = receiver.wait_for_count(1, Duration::from_secs(15)).await;
    assert_eq!(signatures_by(&new, &got[0]), [true, false]);
    assert_eq!(signatures_by(&old, &got[0]), [false, true]);
    // Ending the rotation at once: only the new secret signs.
    app.post(
        &format!("/api/v1/webhooks/{id}/rotate"),
        json!({"keep_previous": "0s"}),
    )
    .await;
    let (_, body) = app.get(&format!("/api/v1/webhooks/{id}")).await;
    assert!(body["webhook"]["previous_secret_until"].is_null(), "{body}");
}

#[tokio::test]
async fn bad_input_gets_a_4xx_and_changes_nothing() {
    let app = TestApp::start_with(&["--max-body-bytes", "4096"]).await;
    let receiver = Receiver::start(vec![]).await;
    let (id, _) = create(&app, json!({"name": "ok", "url": receiver.url})).await;
    let (_, before) = app.get("/api/v1/webhooks").await;
    let bad = [
        (
            json!({"name": "a", "url": "ftp://example.com/x"}),
            400,
            "http",
        ),
        (
            json!({"name": "a", "url": "file:///etc/passwd"}),
            400,
            "http",
        ),
        (
            json!({"name": "a", "url": "http://169.254.169.254/latest/meta-data/"}),
            400,
            "refused",
        ),
        (
            json!({"name": "a", "url": "http://[fe80::1]/"}),
            400,
            "refused",
        ),
        (
            json!({"name": "a", "url": receiver.url, "event_types": ["run.exploded"]}),
            400,
            "event type",
        ),
        (
            json!({"name": "a", "url": receiver.url, "secret": "whsec_mine"}),
            400,
            "unknown field",
        ),
        (
            json!({"name": "not a name", "url": receiver.url}),
            400,
            "name",
        ),
        (json!({"name": "ok", "url": receiver.url}), 409, "exists"),
        (
            json!({"name": "a", "url": receiver.url, "tags": ["x".repeat(5000)]}),
            413,
            "limit",
        ),
    ];
    for (body, status, needle) in bad {
        let answer = app.post("/api/v1/webhooks", body.clone()).await;
        assert_error(&answer, status, needle);
    }
    let raw = app
        .client
        .post(app.url("/api/v1/webhooks"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    for (path, body, status, needle) in [
        (
            format!("/api/v1/webhooks/{id}"),
            json!({"url": "http://0.0.0.0/"}),
            400,
            "refused",
        ),
        (
            format!("/api/v1/webhooks/{id}"),
            json!({"event_types": ["nope."]}),
            400,
            "event type",
        ),
        (
            format!("/api/v1/webhooks/{id}"),
            json!({"paused": "yes"}),
            400,
            "paused",
        ),
        (
            format!("/api/v1/webhooks/{id}"),
            json!({"enabled": false}),
            400,
            "enabled",
        ),
        (
            "/api/v1/webhooks/missing".to_string(),
            json!({"paused": true}),
            404,
            "no webhook",
        ),
    ] {
        let answer = app.patch(&path, body).await;
        assert_error(&answer, status, needle);
    }
    for (path, body, status, needle) in [
        (
            format!("/api/v1/webhooks/{id}/rotate"),
            json!({"keep_previous": "forever"}),
            400,
            "keep_previous",
        ),
        (
            format!("/api/v1/webhooks/{id}/rotate"),
            json!({"keep": "1h"}),
            400,
            "unknown field",
        ),
        (
            format!("/api/v1/webhooks/{id}/deliveries/not-a-uuid/retry"),
            json!({}),
            400,
            "delivery id",
        ),
        (
            format!(
                "/api/v1/webhooks/{id}/deliveries/{}/retry",
                uuid::Uuid::now_v7()
            ),
            json!({}),
            404,
            "no delivery",
        ),
        (
            "/api/v1/webhooks/missing/test".to_string(),
            json!({}),
            404,
            "no webhook",
        ),
    ] {
        let answer = app.post(&path, body).await;
        assert_error(&answer, status, needle);
    }
    let answer = app
        .get(&format!("/api/v1/webhooks/{id}/deliveries?limit=0"))
        .await;
    assert_error(&answer, 400, "limit");
    let (_, after) = app.get("/api/v1/webhooks").await;
    assert_eq!(before, after, "nothing changed");
    assert!(deliveries(&app, &id).await.is_empty());
}

/// PostgreSQL only (two replicas), whatever JOBSD_TEST_BACKEND says; left
/// out of the SQLite profile (.config/nextest.toml).
#[tokio::test]
async fn a_replica_killed_mid_delivery_leaves_it_to_another() {
    let db = TestDb::postgres();
    let receiver = Receiver::start(vec![Answer::Hold]).await;
    let mut a = Replica::spawn(&db, "hook-a", &[]).await;
    let (status, created) = a
        .post(
            "/api/v1/webhooks",
            json!({"name": "held", "url": receiver.url}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    let id = created["webhook"]["id"].as_str().unwrap().to_string();
    let (status, _) = a
        .post(&format!("/api/v1/webhooks/{id}/test"), json!({}))
        .await;
    assert_eq!(status, 202);
    // A is sending it: the receiver holds the request open.
    let first = receiver.wait_for_count(1, Duration::from_secs(15)).await;
    let b = Replica::spawn(&db, "hook-b", &[]).await;
    a.signal("KILL");
    a.wait_exit().await;
    // After A's lease (2 s) runs out, B sends it again: the same id.
    let got = receiver.wait_for_count(2, Duration::from_secs(20)).await;
    assert_eq!(got[1].header("webhook-id"), first[0].header("webhook-id"));
    assert_signed(&secret, &got[1]);
    let delivered = wait_for("delivered by B", Duration::from_secs(10), || async {
        let (_, body) = b.get(&format!("/api/v1/webhooks/{id}/deliveries")).await;
        let d = body["deliveries"][0].clone();
        (d["state"] == "delivered").then_some(d)
    })
    .await;
    // A's attempt was never recorded; B's is attempt 2.
    assert_eq!(delivered["attempt"], 2, "{delivered}");
    assert_eq!(delivered["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(delivered["attempts"][0]["status"], 200);
}

#[tokio::test]
async fn a_jobs_notify_list_overrides_the_webhooks_filters() {
    // A default-job file (YAML) listing the webhook under `notify`.
    let dir = std::env::temp_dir().join(format!("jobsd-notify-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("nightly.yaml"),
        "job_id: nightly\nhandler: log\nperiodically: 1 hour\nnotify: [narrow]\nkwargs:\n  message: hi\n",
    )
    .unwrap();
    let dir_text = dir.to_string_lossy().into_owned();
    let app = TestApp::start_with(&["--default-jobs-dir", &dir_text]).await;
    let receiver = Receiver::start(vec![]).await;
    // Its own filter takes only service events.
    let (_, secret) = create(
        &app,
        json!({"name": "narrow", "url": receiver.url, "event_types": ["service."]}),
    )
    .await;
    let (status, body) = app
        .post(
            "/api/v1/jobs",
            json!({"job_id": "noisy", "handler": "log", "kwargs": {"message": "x"},
                   "when": Utc::now().to_rfc3339(), "notify": ["narrow"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["job"]["notify"], json!(["narrow"]), "{body}");
    let (status, body) = app
        .post(
            "/api/v1/jobs",
            json!({"job_id": "quiet", "handler": "log", "kwargs": {"message": "x"},
                   "when": Utc::now().to_rfc3339()}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let got = wait_for("noisy's run.succeeded", Duration::from_secs(20), || async {
        let got = receiver.got();
        got.iter()
            .any(|g| g.json()["type"] == "run.succeeded")
            .then_some(got)
    })
    .await;
    for g in &got {
        assert_signed(&secret, g);
        let job = g.json()["data"]["job_id"].clone();
        assert!(job == "noisy" || job == "nightly", "{:?}", g.json());
    }

    // The YAML job's notify is stored as the file says.
    let (_, job) = app.get("/api/v1/jobs/nightly").await;
    assert_eq!(job["job"]["notify"], json!(["narrow"]), "{job}");
    let answer = app
        .post(
            "/api/v1/jobs",
            json!({"job_id": "bad", "handler": "log", "notify": ["not a name"]}),
        )
        .await;
    assert_error(&answer, 400, "notify");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn webhooks_need_an_admin_token_when_auth_is_on() {
    let app = TestApp::start_with(&["--auth", "on"]).await;
    let admin = jobsd::auth::issue(
        &app.store,
        "root",
        jobsd::auth::Scope::Admin,
        Utc::now(),
        None,
    )
    .await
    .unwrap()
    .secret;
    let writer = jobsd::auth::issue(
        &app.store,
        "ci",
        jobsd::auth::Scope::Write,
        Utc::now(),
        None,
    )
    .await
    .unwrap()
    .secret;
    let body = json!({"name": "ops", "url": "http://127.0.0.1:9/hook"});
    let send = |token: Option<String>, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = app.client.request(method, app.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    use reqwest::Method;
    assert_eq!(send(None, Method::GET, "/api/v1/webhooks", None).await, 401);
    assert_eq!(
        send(
            Some(writer.clone()),
            Method::POST,
            "/api/v1/webhooks",
            Some(body.clone())
        )
        .await,
        403
    );
    assert_eq!(
        send(Some(writer), Method::GET, "/api/v1/webhooks", None).await,
        403
    );
    assert_eq!(
        send(
            Some(admin.clone()),
            Method::POST,
            "/api/v1/webhooks",
            Some(body)
        )
        .await,
        201
    );
    assert_eq!(
        send(
            Some(admin),
            Method::GET,
            "/api/v1/webhooks/ops/deliveries",
            None
        )
        .await,
        200
    );
}

#[tokio::test]
async fn five_days_of_failures_disable_the_webhook_with_an_event() {
    let app = TestApp::start_with(&FAST_RETRIES).await;
    let receiver = Receiver::start(vec![Answer::Status(500, None)]).await;
    let (id, _) = create(&app, json!({"name": "stale", "url": receiver.url})).await;
    // Its failures began six days ago (no API sets that).
    let six_days_ago = Utc::now() - chrono::Duration::days(6);
    let changed = support::execute_sql(
        &app.store,
        &format!(
            "UPDATE webhooks SET failing_since = '{}' WHERE name = 'stale'",
            six_days_ago.to_rfc3339()
        ),
        &format!(
            "UPDATE webhooks SET failing_since = {} WHERE name = 'stale'",
            support::micros(six_days_ago)
        ),
    )
    .await;
    assert_eq!(changed, 1);
    app.post(&format!("/api/v1/webhooks/{id}/test"), json!({}))
        .await;
    let hook = wait_for("disabled", Duration::from_secs(15), || async {
        let (_, body) = app.get(&format!("/api/v1/webhooks/{id}")).await;
        body["webhook"]["disabled_at"]
            .is_string()
            .then_some(body["webhook"].clone())
    })
    .await;
    assert!(
        hook["disabled_reason"].as_str().unwrap().contains("5 days"),
        "{hook}"
    );
    let events = wait_for("webhook.disabled", Duration::from_secs(10), || async {
        let (_, body) = app.get("/api/v1/events?type=webhook.disabled").await;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert!(events[0]["data"]["reason"]
        .as_str()
        .unwrap()
        .contains("stale"));
    // One attempt, not retried: the webhook is disabled.
    support::assert_stays("no retry", Duration::from_secs(1), || async {
        receiver.got().len() == 1
    })
    .await;
    let log = deliveries(&app, &id).await;
    assert_eq!(log[0]["state"], "failed", "{log:?}");
}

/// An alert is an event like any other: a webhook subscribed to the
/// `alert.` group gets it, signed, with the job as it is (its open alerts).
#[tokio::test]
async fn alerts_are_delivered_to_webhooks_subscribed_to_them() {
    let app = TestApp::start_with(&["--failures-before-alert", "1"]).await;
    let receiver = Receiver::start(vec![]).await;
    let (_, secret) = create(
        &app,
        json!({"name": "pager", "url": receiver.url, "event_types": ["alert."]}),
    )
    .await;
    let (status, body) = app
        .post(
            "/api/v1/jobs",
            json!({"job_id": "broken", "handler": "http",
                   "kwargs": {"url": "http://127.0.0.1:1/", "timeout": 1},
                   "when": Utc::now().to_rfc3339()}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let got = receiver.wait_for_count(1, Duration::from_secs(20)).await;
    assert_signed(&secret, &got[0]);
    let body = got[0].json();
    assert_eq!(body["type"], "alert.failing", "{body}");
    assert_eq!(body["data"]["job_id"], "broken");
    assert_eq!(body["data"]["data"]["alert"], "failing");
    assert_eq!(
        body["data"]["data"]["job"]["alerts_open"],
        json!(["failing"])
    );
}
