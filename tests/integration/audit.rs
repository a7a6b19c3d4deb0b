//! The audit log over HTTP (issue #12 §7), on the backend
//! `JOBSD_TEST_BACKEND` names: creates, changes, deletes, runs and
//! overrides (with their reason) are recorded with the token's name;
//! refused calls too; reading it needs admin; filtered by job and paged;
//! pruned by `--retention`.

use std::time::Duration;

use chrono::Utc;
use jobsd::auth::Scope;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{assert_error, wait_for, TestApp};

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body read");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn token(app: &TestApp, name: &str, scope: Scope) -> String {
    jobsd::auth::issue(&app.store, name, scope, Utc::now(), None)
        .await
        .unwrap()
        .secret
}

fn paused(job_id: &str) -> Value {
    json!({"job_id": job_id, "handler": "log", "kwargs": {"message": "hi"},
           "periodically": "1 day", "state": "paused"})
}

/// The entries `GET /api/v1/audit{query}` returns, newest first.
async fn audit(app: &TestApp, query: &str, admin: Option<&str>) -> Vec<Value> {
    let (status, body) = send(
        app,
        Method::GET,
        &format!("/api/v1/audit{query}"),
        admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["entries"].as_array().unwrap().clone()
}

/// `(actor, method, path, job_id, status)` of each entry.
fn summary(entries: &[Value]) -> Vec<(String, String, String, Value, u64)> {
    entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["method"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
                e["job_id"].clone(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn row(
    actor: &str,
    method: &str,
    path: &str,
    job: Value,
    status: u64,
) -> (String, String, String, Value, u64) {
    (actor.into(), method.into(), path.into(), job, status)
}

#[tokio::test]
async fn mutating_calls_are_recorded_with_the_token_name_and_an_overrides_reason() {
    let app = TestApp::start_with(&["--auth", "on"]).await;
    let ops = token(&app, "ops", Scope::Admin).await;
    let ci = token(&app, "ci", Scope::Write).await;
    let ci = Some(ci.as_str());
    assert_eq!(
        send(&app, Method::POST, "/api/v1/jobs", ci, Some(paused("j1")))
            .await
            .0,
        201
    );
    // The original form: the path names the handler, the answer the job.
    let (status, created) = send(
        &app,
        Method::POST,
        "/api/v1/jobs/log?job_id=j2&state=paused&periodically=1d",
        ci,
        Some(json!({"message": "x"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        send(
            &app,
            Method::PATCH,
            "/api/v1/jobs/j1",
            ci,
            Some(json!({"description": "d"}))
        )
        .await
        .0,
        200
    );
    let (status, run) = send(&app, Method::POST, "/api/v1/jobs/j1/run", ci, None).await;
    assert_eq!(status, 201, "{run}");
    let run_id = run["run"]["run_id"].as_str().unwrap().to_string();
    let (override_status, _) = send(
        &app,
        Method::PUT,
        &format!("/api/v1/runs/{run_id}/state"),
        Some(&ops),
        Some(json!({"state": "failed", "reason": "stuck after a reboot"})),
    )
    .await;
    assert_eq!(
        send(&app, Method::DELETE, "/api/v1/jobs/j1", ci, None)
            .await
            .0,
        200
    );
    // Reads are not recorded.
    assert_eq!(
        send(&app, Method::GET, "/api/v1/jobs", ci, None).await.0,
        200
    );

    let entries = audit(&app, "", Some(&ops)).await;
    let run_path = format!("/api/v1/runs/{run_id}/state");
    assert_eq!(
        summary(&entries),
        vec![
            row("ci", "DELETE", "/api/v1/jobs/j1", json!("j1"), 200),
            row("ops", "PUT", &run_path, json!("j1"), override_status as u64),
            row("ci", "POST", "/api/v1/jobs/j1/run", json!("j1"), 201),
            row("ci", "PATCH", "/api/v1/jobs/j1", json!("j1"), 200),
            row("ci", "POST", "/api/v1/jobs/log", json!("j2"), 201),
            row("ci", "POST", "/api/v1/jobs", json!("j1"), 201),
        ]
    );
    let overridden = &entries[1];
    assert_eq!(overridden["reason"], "stuck after a reboot");
    assert_eq!(overridden["run_id"], run_id.as_str());
    assert_eq!(entries[2]["run_id"], run_id.as_str(), "the queued run");
    assert!(entries[0]["token_id"].is_string());
    assert!(entries.iter().all(|e| e["at"].is_string()));
    // A failed override keeps its reason too.
    let missing = uuid::Uuid::new_v4();
    let (status, _) = send(
        &app,
        Method::PUT,
        &format!("/api/v1/runs/{missing}/state"),
        Some(&ops),
        Some(json!({"state": "failed", "reason": "no such run?"})),
    )
    .await;
    assert_eq!(status, 404);
    let newest = &audit(&app, "?limit=1", Some(&ops)).await[0];
    assert_eq!(
        (newest["status"].as_u64(), &newest["reason"]),
        (Some(404), &json!("no such run?"))
    );
    assert_eq!(newest["run_id"], missing.to_string());
}

#[tokio::test]
async fn refused_calls_are_recorded_and_the_log_needs_admin() {
    let app = TestApp::start_with(&["--auth", "on"]).await;
    let admin = token(&app, "admin", Scope::Admin).await;
    let reader = token(&app, "reader", Scope::Read).await;
    let writer = token(&app, "writer", Scope::Write).await;
    assert_eq!(
        send(&app, Method::POST, "/api/v1/jobs", None, Some(paused("a")))
            .await
            .0,
        401
    );
    assert_eq!(
        send(&app, Method::DELETE, "/api/v1/jobs/a", Some(&reader), None)
            .await
            .0,
        403
    );
    for t in [&reader, &writer] {
        let refused = send(&app, Method::GET, "/api/v1/audit", Some(t), None).await;
        assert_error(&refused, 403, "needs admin");
    }
    assert_error(
        &send(&app, Method::GET, "/api/v1/audit", None, None).await,
        401,
        "admin",
    );
    let entries = audit(&app, "", Some(&admin)).await;
    assert_eq!(
        summary(&entries),
        vec![
            row("reader", "DELETE", "/api/v1/jobs/a", json!("a"), 403),
            row("anonymous", "POST", "/api/v1/jobs", Value::Null, 401),
        ]
    );
    assert!(entries[1]["token_id"].is_null());
}

#[tokio::test]
async fn the_log_is_filtered_by_job_and_paged_by_cursor() {
    let app = TestApp::start().await;
    for id in ["a", "b"] {
        assert_eq!(app.post("/api/v1/jobs", paused(id)).await.0, 201);
    }
    assert_eq!(
        app.patch("/api/v1/jobs/a", json!({"description": "x"}))
            .await
            .0,
        200
    );
    assert_eq!(app.put("/api/v1/jobs/a?state=running").await.0, 200);
    let of_a = audit(&app, "?job_id=a", None).await;
    assert_eq!(
        summary(&of_a),
        vec![
            row("anonymous", "PUT", "/api/v1/jobs/a", json!("a"), 200),
            row("anonymous", "PATCH", "/api/v1/jobs/a", json!("a"), 200),
            row("anonymous", "POST", "/api/v1/jobs", json!("a"), 201),
        ]
    );
    let (status, page1) = app.get("/api/v1/audit?job_id=a&limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(page1["entries"].as_array().unwrap(), &of_a[..2]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app
        .get(&format!("/api/v1/audit?job_id=a&limit=2&cursor={cursor}"))
        .await;
    assert_eq!(page2["entries"].as_array().unwrap(), &of_a[2..]);
    assert!(page2["next_cursor"].is_null(), "{page2}");
    assert_eq!(audit(&app, "", None).await.len(), 4);
    assert_error(&app.get("/api/v1/audit?cursor=nope").await, 400, "cursor");
    assert_error(&app.get("/api/v1/audit?limit=0").await, 400, "limit");
}

#[tokio::test]
async fn the_log_is_pruned_by_retention() {
    let app = TestApp::start_with(&["--retention", "1s", "--retention-interval", "200ms"]).await;
    assert_eq!(app.post("/api/v1/jobs", paused("a")).await.0, 201);
    assert_eq!(audit(&app, "", None).await.len(), 1);
    wait_for(
        "the entry to be pruned",
        Duration::from_secs(10),
        || async { audit(&app, "", None).await.is_empty().then_some(()) },
    )
    .await;
}
