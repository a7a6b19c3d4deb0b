//! Service state, probes, handler catalogue, Swagger UI and the OpenAPI document.

use std::time::Duration;

use serde_json::Value;

use crate::support::{assert_error, wait_for, TestApp};

#[tokio::test]
async fn probes() {
    let app = TestApp::start().await;
    let (status, body) = app.get("/api/v1/liveness").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.get("/api/v1/readiness").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn service_state_pause_and_resume() {
    let app = TestApp::start().await;
    let (status, body) = app.get("/api/v1/service/state").await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "running");
    let (status, body) = app.put("/api/v1/service/state?state=paused").await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "paused");
    assert_eq!(app.get("/api/v1/service/state").await.1["state"], "paused");
    assert!(app.store.service_paused().await.unwrap());
    let (_, body) = app.put("/api/v1/service/state?state=active").await;
    assert_eq!(body["state"], "running");
    assert_error(
        &app.put("/api/v1/service/state?state=off").await,
        400,
        "state",
    );
    assert_error(&app.put("/api/v1/service/state").await, 400, "state");
}

#[tokio::test]
async fn handlers_are_listed_with_schemas_and_examples() {
    let app = TestApp::start().await;
    let (status, body) = app.get("/api/v1/handlers").await;
    assert_eq!(status, 200);
    let handlers = body["handlers"].as_array().unwrap();
    let names: Vec<&str> = handlers.iter().filter_map(|h| h["name"].as_str()).collect();
    for expected in ["ErrorHandler", "command", "http", "log", "sleep"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    for h in handlers {
        assert_eq!(h["kwargs_schema"]["type"], "object", "{h}");
        assert!(h["example"].is_object(), "{h}");
    }
    let command = handlers.iter().find(|h| h["name"] == "command").unwrap();
    assert_eq!(command["enabled"], false);
    assert!(command["disabled_reason"]
        .as_str()
        .unwrap()
        .contains("--enable-command-handler"));
}

#[tokio::test]
async fn swagger_ui_and_document_are_served() {
    let app = TestApp::start().await;
    let resp = app.client.get(app.url("/api/v1/ui/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "Swagger UI page");
    let resp = app
        .client
        .get(app.url("/api/v1/ui/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("/api/v1/openapi.json"));

    // `/` leads to the UI.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects.get(app.url("/")).send().await.unwrap();
    assert!(resp.status().is_redirection());
    assert_eq!(resp.headers()["location"], "/api/v1/ui/");

    let (status, doc) = app.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let committed: Value =
        serde_json::from_str(include_str!("../../openapi/openapi.json")).unwrap();
    assert_eq!(doc, committed, "the served document is the committed one");
}

#[test]
fn committed_openapi_matches_the_code() {
    let registry = jobsd::handlers::HandlerRegistry::with_builtins(Default::default());
    let generated = jobsd::api::openapi::document_text(&registry);
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json exists");
    assert!(
        generated == committed,
        "openapi/openapi.json is stale: run `cargo run -- openapi > openapi/openapi.json`"
    );
}

#[test]
fn every_handler_has_its_create_endpoint_documented() {
    let registry = jobsd::handlers::HandlerRegistry::with_builtins(Default::default());
    let doc = jobsd::api::openapi::document(&registry);
    assert!(
        doc["paths"]["/api/v1/jobs/ErrorHandler"].is_null(),
        "failure records have no create form"
    );
    for handler in registry.iter().filter(|h| !h.inert()) {
        let path = format!("/api/v1/jobs/{}", handler.name());
        let op = &doc["paths"][&path]["post"];
        assert!(op.is_object(), "{path} documented");
        let content = &op["requestBody"]["content"]["application/json"];
        assert_eq!(content["schema"], handler.kwargs_schema(), "{path} schema");
        assert_eq!(content["example"], handler.example(), "{path} example");
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for p in [
            "job_id",
            "periodically",
            "cron",
            "when",
            "misfire_grace_time",
            "state",
        ] {
            assert!(params.contains(&p), "{path} has query parameter {p}");
        }
    }
}

#[test]
fn every_documented_path_is_a_real_api_path() {
    let registry = jobsd::handlers::HandlerRegistry::with_builtins(Default::default());
    let doc = jobsd::api::openapi::document(&registry);
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for path in &paths {
        assert!(
            path.starts_with("/api/v1/") && !path.contains("//"),
            "{path}"
        );
    }
    for expected in [
        "/api/v1/jobs",
        "/api/v1/jobs/bulk",
        "/api/v1/runs/{run_id}",
        "/api/v1/instances",
    ] {
        assert!(
            paths.iter().any(|p| p.as_str() == expected),
            "{expected} documented"
        );
    }
}

#[tokio::test]
async fn instances_are_listed_and_stale_ones_pruned() {
    let app = TestApp::start().await;
    let listed = crate::support::wait_for(
        "this instance registered",
        std::time::Duration::from_secs(10),
        || async {
            let (_, body) = app.get("/api/v1/instances").await;
            let instances = body["instances"].as_array()?.clone();
            (!instances.is_empty()).then_some(instances)
        },
    )
    .await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["alive"], true);
    assert_eq!(listed[0]["version"], env!("CARGO_PKG_VERSION"));
    assert!(listed[0]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    // A replica that stopped heartbeating an hour ago: shown dead, then pruned.
    app.store
        .instance_heartbeat("gone", "0.0.1", None, 3_600_000 * 24)
        .await
        .unwrap();
    crate::support::age_heartbeat(&app.store, "gone", Duration::from_secs(3600)).await;
    let (_, body) = app.get("/api/v1/instances").await;
    let gone = body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "gone")
        .cloned()
        .unwrap();
    assert_eq!(gone["alive"], false);
    app.store
        .instance_heartbeat("other", "0.0.1", None, 60_000)
        .await
        .unwrap();
    let (_, body) = app.get("/api/v1/instances").await;
    assert!(
        body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["name"] != "gone"),
        "{body}"
    );
}

/// From SIGTERM until exit a draining replica answers readiness with 503
/// (so a load balancer stops sending it work) while it keeps serving, its
/// running runs finish or are handed back, and liveness stays 200.
#[tokio::test]
async fn readiness_is_503_while_draining() {
    let app = TestApp::start_with(&["--shutdown-grace", "6s"]).await;
    let (status, body) = app
        .post(
            "/api/v1/jobs/sleep?job_id=nap",
            serde_json::json!({"seconds": 60}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let run_state = || async {
        let (_, body) = app.get("/api/v1/jobs/nap/runs").await;
        body["runs"][0]["state"].as_str().map(str::to_string)
    };
    wait_for("the sleep run runs", Duration::from_secs(10), || async {
        (run_state().await.as_deref() == Some("running")).then_some(())
    })
    .await;

    app.begin_shutdown();
    let started = tokio::time::Instant::now();
    // Connection errors are not 503: keep asking until the deadline.
    let body = wait_for("readiness 503", Duration::from_secs(3), || async {
        let resp = app
            .client
            .get(app.url("/api/v1/readiness"))
            .send()
            .await
            .ok()?;
        if resp.status() != 503 {
            return None;
        }
        resp.json::<Value>().await.ok()
    })
    .await;
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("draining"), "{body}");
    // The drain is still under way: the run runs, the API answers.
    assert_eq!(run_state().await.as_deref(), Some("running"));
    assert_eq!(app.get("/api/v1/liveness").await.0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "checked within the grace"
    );
    let (status, _) = app.get("/api/v1/readiness").await;
    assert_eq!(status, 503, "still 503 later in the drain");
    app.stop().await;
}
