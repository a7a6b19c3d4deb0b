//! Hostile input: NUL characters (PostgreSQL cannot store them; both
//! stores answer 400 naming the field and store nothing), a default-job
//! file of deeply nested brackets (refused at once, not after 41 s of
//! parsing), program output holding NULs (kept, with the NULs replaced),
//! and arbitrary bodies, which never answer 500.

use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Map, Value};

use super::limits::{validate, FilesDir};
use crate::scheduling::{create, wait_runs};
use crate::support::{assert_error, wait_for, TestApp};

async fn assert_no_jobs(app: &TestApp) {
    let (status, body) = app.get("/api/v1/jobs").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobs_count"], 0, "nothing may be stored: {body}");
}

/// Sends `body` as it is (serde_json escapes a NUL as \u0000).
async fn send(app: &TestApp, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
    let resp = app
        .client
        .request(method, app.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_nul_character_answers_400_naming_the_field_and_stores_nothing() {
    let app = TestApp::start().await;
    let cases = [
        (
            r#"{"handler": "log", "kwargs": {"message": "a\u0000b"}}"#,
            "kwargs/message",
        ),
        (
            r#"{"handler": "log", "kwargs": {"message": "x", "extra": {"k\u0000": 1}}}"#,
            "kwargs/extra",
        ),
        (
            r#"{"handler": "log", "kwargs": {"message": "x"}, "description": "\u0000"}"#,
            "description",
        ),
        (
            r#"{"handler": "log", "kwargs": {"message": "x"}, "lock_key": "k\u0000"}"#,
            "lock_key",
        ),
        (
            r#"{"handler": "log", "kwargs": {"message": "x"}, "tags": ["\u0000"]}"#,
            "tags/0",
        ),
        (
            r#"{"handler": "log", "kwargs": {"message": "x"}, "job_id": "a\u0000"}"#,
            "job_id",
        ),
        (
            r#"{"handler": "log", "kwargs": {"message": "x"}, "cron": "0 * * * *", "timezone": "UTC\u0000"}"#,
            "timezone",
        ),
        (
            r#"{"handler": "http", "kwargs": {"url": "http://x/", "headers": {"a": "\u0000"}}}"#,
            "kwargs/headers/a",
        ),
    ];
    for (body, field) in cases {
        let resp = send(&app, reqwest::Method::POST, "/api/v1/jobs", body).await;
        assert_eq!(resp.0, 400, "{body}: {}", resp.1);
        let problems = resp.1["problems"].as_array().cloned().unwrap_or_default();
        assert!(
            problems.iter().any(|p| p["field"] == field),
            "{body}: {}",
            resp.1
        );
    }
    let bulk = r#"{"jobs": [{"handler": "log", "kwargs": {"message": "ok"}}, {"handler": "log", "kwargs": {"message": "\u0000"}}]}"#;
    let resp = send(&app, reqwest::Method::POST, "/api/v1/jobs/bulk", bulk).await;
    assert_error(&resp, 400, "jobs[1].kwargs/message");
    // The original form: kwargs in the body, fields in the query.
    let resp = send(
        &app,
        reqwest::Method::POST,
        "/api/v1/jobs/log",
        r#"{"message": "\u0000"}"#,
    )
    .await;
    assert_error(&resp, 400, "kwargs/message");
    let resp = app
        .post(
            "/api/v1/jobs/log?description=a%00b",
            json!({"message": "x"}),
        )
        .await;
    assert_eq!(resp.0, 400, "{}", resp.1);
    assert_no_jobs(&app).await;

    create(
        &app,
        json!({"job_id": "kept", "handler": "log", "kwargs": {"message": "x"}, "state": "paused"}),
    )
    .await;
    let resp = send(
        &app,
        reqwest::Method::PATCH,
        "/api/v1/jobs/kept",
        r#"{"description": "\u0000"}"#,
    )
    .await;
    assert_error(&resp, 400, "description");
    let resp = send(
        &app,
        reqwest::Method::PATCH,
        "/api/v1/jobs/kept",
        r#"{"kwargs": {"message": "\u0000"}}"#,
    )
    .await;
    assert_error(&resp, 400, "kwargs/message");
    let (_, job) = app.get("/api/v1/jobs/kept").await;
    assert_eq!(job["job"]["kwargs"], json!({"message": "x"}));
    assert!(job["job"]["description"].is_null(), "{job}");
}

#[tokio::test]
async fn a_nul_character_in_a_path_or_query_is_never_a_500() {
    let app = TestApp::start().await;
    create(
        &app,
        json!({"job_id": "kept", "handler": "log", "kwargs": {"message": "x"}, "state": "paused"}),
    )
    .await;
    for path in [
        "/api/v1/jobs?handler=a%00b",
        "/api/v1/jobs?state=%00",
        "/api/v1/runs?job_id=a%00",
        "/api/v1/runs?handler=%00",
        "/api/v1/jobs/a%00b",
        "/api/v1/jobs/a%00b/runs",
        "/api/v1/jobs/a%00b/runs/latest",
        "/api/v1/runs/%00",
    ] {
        let (status, body) = app.get(path).await;
        assert!(status == 400, "GET {path}: {status} {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("NUL")),
            "GET {path}: {body}"
        );
    }
    for (method, path) in [
        (reqwest::Method::POST, "/api/v1/jobs/a%00b/run"),
        (reqwest::Method::PUT, "/api/v1/jobs/a%00b?state=paused"),
        (reqwest::Method::PATCH, "/api/v1/jobs/a%00b"),
        (reqwest::Method::DELETE, "/api/v1/jobs/a%00b"),
        (reqwest::Method::PUT, "/api/v1/service?state=%00"),
    ] {
        let (status, body) = app.call(method.clone(), path, Some(json!({}))).await;
        assert_eq!(status, 400, "{method} {path}: {body}");
    }
    // A run's override reason is text that is stored.
    let (_, run) = app.post("/api/v1/jobs/kept/run", json!({})).await;
    let run_id = run["run"]["run_id"].as_str().expect("a run id").to_string();
    let resp = send(
        &app,
        reqwest::Method::PUT,
        &format!("/api/v1/runs/{run_id}/state"),
        r#"{"state": "cancelled", "reason": "a\u0000b"}"#,
    )
    .await;
    assert_error(&resp, 400, "reason");
    let (_, jobs) = app.get("/api/v1/jobs").await;
    assert_eq!(jobs["jobs_count"], 1, "{jobs}");
}

#[tokio::test]
async fn program_output_holding_nul_is_kept_with_the_nul_replaced() {
    let app = TestApp::start_with(&["--enable-command-handler"]).await;
    create(
        &app,
        json!({"job_id": "binary", "handler": "command",
        "kwargs": {"program": "printf", "args": ["a\\000b"]}}),
    )
    .await;
    let runs = wait_runs(&app, "binary", "succeeded", 1, Duration::from_secs(20)).await;
    assert_eq!(runs[0]["result"]["stdout"], "a\u{FFFD}b");
    create(
        &app,
        json!({"job_id": "binary-error", "handler": "command",
        "kwargs": {"program": "sh", "args": ["-c", "printf 'bad\\000news' >&2; exit 3"]}}),
    )
    .await;
    let runs = wait_runs(&app, "binary-error", "failed", 1, Duration::from_secs(20)).await;
    let error = runs[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("bad\u{FFFD}news"), "{error}");
}

#[tokio::test]
async fn a_file_of_nested_brackets_is_refused_at_once_for_its_depth() {
    let dir = FilesDir::new();
    let depth = 100_000; // 200 KB of brackets
    dir.write(
        "deep.yaml",
        &format!(
            "job_id: deep\nhandler: log\nmessage: x\nkwargs: {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
    );
    dir.write("ok.yaml", "job_id: ok\nhandler: log\nmessage: fine\n");
    // Within 10 s (a hang guard, not a benchmark: it takes milliseconds).
    let output = validate(&[dir.arg()]).await;
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(
            "deep.yaml: yaml: nested deeper than 64 levels of [ ] or { } at line 4 column 73"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("ok.yaml"), "{stdout}");

    // The service skips it the same way and loads the rest.
    let app = TestApp::start_with(&["--default-jobs-dir", dir.arg()]).await;
    wait_for("ok.yaml loaded", Duration::from_secs(10), || async {
        (app.get("/api/v1/jobs/ok").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(app.get("/api/v1/jobs/deep").await.0, 404);
}

/// Field names of a job definition, often with a value of the right kind.
const FIELDS: &[&str] = &[
    "job_id",
    "handler",
    "kwargs",
    "periodically",
    "cron",
    "timezone",
    "when",
    "misfire_grace_time",
    "coalesce",
    "max_instances",
    "lock_key",
    "timeout",
    "max_retries",
    "retry_backoff",
    "state",
    "description",
    "tags",
    "url",
    "message",
    "program",
    "seconds",
];

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|n| serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
        proptest::sample::select(vec![
            "log",
            "http",
            "sleep",
            "command",
            "ErrorHandler",
            "1 day",
            "*/5 * * * *",
            "@reboot",
            "Europe/Berlin",
            "2030-02-20 14:56",
            "paused",
            "running",
            "\u{0}",
            "1e999",
            "-1",
            "http://169.254.169.254/",
            "9999999 weeks",
            "PT0S",
            "0 0 30 2 *",
            "bulk",
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(FIELDS), inner), 0..5).prop_map(
                |pairs| {
                    Value::Object(
                        pairs
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect::<Map<_, _>>(),
                    )
                }
            ),
        ]
    })
}

fn definition() -> impl Strategy<Value = Value> {
    proptest::collection::vec((proptest::sample::select(FIELDS), value()), 0..8).prop_map(|pairs| {
        Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Map<_, _>>(),
        )
    })
}

/// Arbitrary definitions sent to every endpoint that takes one: each is
/// answered 201/200 or a 4xx in the error shape, never a 500.
#[tokio::test]
async fn arbitrary_definitions_never_answer_500() {
    let app = TestApp::start().await;
    create(
        &app,
        json!({"job_id": "base", "handler": "log", "kwargs": {"message": "x"}, "state": "paused"}),
    )
    .await;
    let mut runner = TestRunner::deterministic();
    let strategy = definition();
    for case in 0..150 {
        let body = strategy.new_tree(&mut runner).expect("a case").current();
        let text = body.to_string();
        for (method, path) in [
            (reqwest::Method::POST, "/api/v1/jobs".to_string()),
            (reqwest::Method::PATCH, "/api/v1/jobs/base".to_string()),
            (
                reqwest::Method::POST,
                "/api/v1/jobs/log?state=paused".to_string(),
            ),
            (reqwest::Method::POST, "/api/v1/jobs/bulk".to_string()),
        ] {
            let sent = if path.ends_with("bulk") {
                format!("{{\"jobs\": [{text}]}}")
            } else {
                text.clone()
            };
            let (status, answer) = send(&app, method.clone(), &path, &sent).await;
            let ok = matches!(status, 200 | 201)
                || ((400..500).contains(&status) && answer["error"].is_string());
            assert!(
                ok,
                "case {case}: {method} {path} {sent} answered {status} {answer}"
            );
        }
        // Whatever was created, the base job still reads back.
        assert_eq!(
            app.get("/api/v1/jobs/base").await.0,
            200,
            "case {case}: {text}"
        );
    }
}
