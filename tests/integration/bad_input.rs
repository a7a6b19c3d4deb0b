//! Bad input: each answers the exact 4xx status in the error shape, names
//! what is wrong, and stores nothing.

use serde_json::{json, Value};

use crate::support::{assert_error, TestApp};

async fn post_raw(app: &TestApp, path: &str, body: &str) -> (u16, Value) {
    let resp = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn assert_nothing_stored(app: &TestApp) {
    let (status, body) = app.get("/api/v1/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(body["jobs_count"], 0, "nothing may be stored: {body}");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::start().await;
    assert_error(
        &post_raw(&app, "/api/v1/jobs", "{\"handler\": ").await,
        400,
        "not valid JSON",
    );
    assert_error(
        &post_raw(&app, "/api/v1/jobs/log", "[1, 2").await,
        400,
        "not valid JSON",
    );
    assert_error(
        &post_raw(&app, "/api/v1/jobs", "[]").await,
        400,
        "not valid JSON",
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn unknown_handler() {
    let app = TestApp::start().await;
    let resp = app
        .post("/api/v1/jobs", json!({"handler": "teleport"}))
        .await;
    assert_error(&resp, 400, "unknown handler \"teleport\"");
    assert_eq!(resp.1["problems"][0]["field"], "handler");
    assert_error(
        &app.post("/api/v1/jobs/teleport", json!({})).await,
        404,
        "teleport",
    );
    assert_error(
        &app.post("/api/v1/jobs", json!({})).await,
        400,
        "handler: required",
    );
    assert_error(
        &app.post("/api/v1/jobs", json!({"handler": "ErrorHandler"}))
            .await,
        400,
        "failure records",
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn kwargs_violating_the_schema_name_the_field() {
    let app = TestApp::start().await;
    let resp = app
        .post("/api/v1/jobs", json!({"handler": "log", "kwargs": {}}))
        .await;
    assert_error(&resp, 400, "message");
    assert_eq!(resp.1["problems"][0]["field"], "kwargs");
    let resp = app.post("/api/v1/jobs/log", json!({"message": 42})).await;
    assert_error(&resp, 400, "kwargs/message");
    assert_eq!(resp.1["problems"][0]["field"], "kwargs/message");
    assert_error(
        &app.post(
            "/api/v1/jobs/http",
            json!({"url": "http://x", "method": "BREW"}),
        )
        .await,
        400,
        "kwargs/method",
    );
    assert_error(
        &app.post("/api/v1/jobs", json!({"handler": "log", "kwargs": "hi"}))
            .await,
        400,
        "kwargs",
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn command_handler_is_refused_unless_enabled() {
    let app = TestApp::start().await;
    assert_error(
        &app.post("/api/v1/jobs/command", json!({"program": "true"}))
            .await,
        400,
        "--enable-command-handler",
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn invalid_schedules() {
    let app = TestApp::start().await;
    let cases = [
        (json!({"cron": "61 * * * *"}), "cron"),
        (json!({"cron": "* * *"}), "cron"),
        (json!({"cron": "@reboot"}), "cron"),
        (
            json!({"cron": "0 3 * * *", "timezone": "Mars/Base"}),
            "timezone",
        ),
        (json!({"periodically": "-5m"}), "periodically"),
        (json!({"periodically": -5}), "periodically"),
        (json!({"periodically": "5 parsecs"}), "periodically"),
        (json!({"periodically": "0s"}), "periodically"),
        (json!({"periodically": "1 month"}), "periodically"),
        (
            json!({"periodically": "1h", "cron": "0 * * * *"}),
            "either periodically or cron",
        ),
        (json!({"when": "next tuesday"}), "when"),
        (json!({"when": "2030-02-30"}), "when"),
        (json!({"misfire_grace_time": "-1s"}), "misfire_grace_time"),
        (json!({"misfire_grace_time": "soon"}), "misfire_grace_time"),
        (json!({"timeout": "0s"}), "timeout"),
        (json!({"state": "sleeping"}), "state"),
        (json!({"max_instances": 0}), "max_instances"),
        (json!({"max_retries": -1}), "max_retries"),
        (json!({"job_id": ""}), "job_id"),
        (json!({"job_id": "a/b"}), "job_id"),
        (json!({"job_id": "clean-failed"}), "job_id"),
        (json!({"max_instances": "two"}), "max_instances"),
        (json!({"colour": "red"}), "colour"),
    ];
    for (extra, field) in cases {
        let mut spec = json!({"handler": "log", "kwargs": {"message": "x"}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let resp = app.post("/api/v1/jobs", spec).await;
        assert_error(&resp, 400, field);
    }
    // The query-string form reports the same way.
    assert_error(
        &app.post(
            "/api/v1/jobs/log?periodically=soonish",
            json!({"message": "x"}),
        )
        .await,
        400,
        "periodically",
    );
    assert_error(
        &app.post("/api/v1/jobs/log?cron=banana", json!({"message": "x"}))
            .await,
        400,
        "cron",
    );
    assert_error(
        &app.post("/api/v1/jobs/log?state=zombie", json!({"message": "x"}))
            .await,
        400,
        "state",
    );
    assert_error(
        &app.post(
            "/api/v1/jobs/log?max_instances=many",
            json!({"message": "x"}),
        )
        .await,
        400,
        "max_instances",
    );
    assert_error(
        &app.post("/api/v1/jobs/log?bogus=1", json!({"message": "x"}))
            .await,
        400,
        "bogus",
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn several_problems_are_reported_together() {
    let app = TestApp::start().await;
    let resp = app
        .post(
            "/api/v1/jobs",
            json!({"handler": "log", "kwargs": {}, "periodically": "soon", "state": "x"}),
        )
        .await;
    assert_eq!(resp.0, 400);
    let fields: Vec<&str> = resp.1["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["field"].as_str())
        .collect();
    assert!(
        fields.contains(&"kwargs") && fields.contains(&"periodically") && fields.contains(&"state"),
        "{fields:?}"
    );
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = TestApp::start_with(&["--max-body-bytes", "2048"]).await;
    let big = "x".repeat(4096);
    let resp = app.post("/api/v1/jobs/log", json!({"message": big})).await;
    assert_error(&resp, 413, "larger than the limit");
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn duplicate_job_id_is_409() {
    let app = TestApp::start().await;
    let spec = json!({"job_id": "dup", "handler": "log", "kwargs": {"message": "first"}});
    assert_eq!(app.post("/api/v1/jobs", spec.clone()).await.0, 201);
    let mut second = spec.clone();
    second["kwargs"]["message"] = json!("second");
    assert_error(
        &app.post("/api/v1/jobs", second).await,
        409,
        "already exists",
    );
    let (_, body) = app.get("/api/v1/jobs/dup").await;
    assert_eq!(
        body["job"]["kwargs"]["message"], "first",
        "the first job is untouched"
    );
}

#[tokio::test]
async fn bad_list_parameters() {
    let app = TestApp::start().await;
    assert_error(
        &app.get("/api/v1/jobs?job_type=weird").await,
        400,
        "job_type",
    );
    assert_error(&app.get("/api/v1/jobs?limit=0").await, 400, "limit");
    assert_error(&app.get("/api/v1/jobs?limit=abc").await, 400, "limit");
    assert_error(&app.get("/api/v1/jobs?offset=-1").await, 400, "offset");
    assert_error(&app.get("/api/v1/jobs?state=odd").await, 400, "state");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = TestApp::start().await;
    assert_error(&app.get("/api/v1/nothing-here").await, 404, "no route");
    assert_error(&app.get("/api/v2/jobs").await, 404, "/api/v1");
    assert_error(
        &app.call(reqwest::Method::PUT, "/api/v1/jobs", None).await,
        405,
        "not allowed",
    );
}

#[tokio::test]
async fn sub_millisecond_durations_are_400_naming_the_field() {
    let app = TestApp::start().await;
    let cases = [
        (json!({"periodically": "0.0004"}), "periodically"),
        (json!({"periodically": 0.0004}), "periodically"),
        (json!({"timeout": "0.0001"}), "timeout"),
        (json!({"timeout": 0.0009}), "timeout"),
    ];
    for (extra, field) in cases {
        let mut spec = json!({"handler": "log", "kwargs": {"message": "x"}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let resp = app.post("/api/v1/jobs", spec).await;
        assert_error(&resp, 400, &format!("{field}: "));
        assert_error(&resp, 400, "at least 1 millisecond");
        assert_eq!(resp.1["problems"][0]["field"], field, "{}", resp.1);
    }
    // The query-string form, a PATCH and a bulk creation report the same way.
    for query in ["periodically=0.0004", "timeout=0.0001"] {
        let field = query.split('=').next().unwrap_or_default();
        assert_error(
            &app.post(
                &format!("/api/v1/jobs/log?{query}"),
                json!({"message": "x"}),
            )
            .await,
            400,
            &format!("{field}: "),
        );
    }
    assert_error(
        &app.post(
            "/api/v1/jobs/bulk",
            json!({"jobs": [{"handler": "log", "kwargs": {"message": "x"}, "timeout": "0.0001"}]}),
        )
        .await,
        400,
        "timeout",
    );
    assert_nothing_stored(&app).await;

    let spec = json!({"job_id": "p", "handler": "log", "kwargs": {"message": "x"},
                      "periodically": "1h", "state": "paused"});
    assert_eq!(app.post("/api/v1/jobs", spec).await.0, 201);
    let resp = app
        .patch("/api/v1/jobs/p", json!({"periodically": "0.0004"}))
        .await;
    assert_error(&resp, 400, "periodically: ");
    let (_, body) = app.get("/api/v1/jobs/p").await;
    assert_eq!(body["job"]["periodically"], "1:00:00", "unchanged: {body}");
}
