//! API tokens over HTTP (issue #12 §1), on the backend `JOBSD_TEST_BACKEND`
//! names: every 401, the 403 of each scope, what each scope may do, the
//! original `auth-token` header, `--auth auto` turning on, the bootstrap
//! token, the last admin token kept, the tokens API, CORS, the refusal to
//! serve a non-loopback address without auth, and `jobsd token` beside a
//! serving jobsd. A refused request must change nothing.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use jobsd::auth::Scope;
use jobsd::store::Store;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{
    assert_error, listening_address, wait_for, ChildLog, Replica, TestApp, TestDb,
};

/// How a request presents a token.
#[derive(Clone, Copy)]
enum Cred<'a> {
    None,
    Bearer(&'a str),
    /// The original service's `auth-token` header.
    AuthToken(&'a str),
    /// A whole `Authorization` value.
    Authorization(&'a str),
}

/// Sends a request to `base` and returns the status, the JSON body (Null
/// if none) and the `www-authenticate` header.
async fn send(
    base: &str,
    method: Method,
    path: &str,
    cred: Cred<'_>,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let mut req = reqwest::Client::new().request(method, format!("{base}{path}"));
    req = match cred {
        Cred::None => req,
        Cred::Bearer(token) => req.bearer_auth(token),
        Cred::AuthToken(token) => req.header("auth-token", token),
        Cred::Authorization(value) => req.header("authorization", value),
    };
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.expect("body read");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json, challenge)
}

async fn get(base: &str, path: &str, cred: Cred<'_>) -> (u16, Value) {
    let (status, body, _) = send(base, Method::GET, path, cred, None).await;
    (status, body)
}

/// Waits up to 5 s for `base` to refuse `GET /api/v1/jobs` with `cred`
/// (401): a change of tokens seen through the cache.
async fn wait_refused(what: &str, base: &str, cred: Cred<'_>) {
    wait_for(what, Duration::from_secs(5), || async {
        (get(base, "/api/v1/jobs", cred).await.0 == 401).then_some(())
    })
    .await;
}

/// Creates a token in `store` (as `jobsd token create` does) and returns it.
async fn token(store: &Store, name: &str, scope: Scope) -> String {
    jobsd::auth::issue(store, name, scope, Utc::now(), None)
        .await
        .unwrap()
        .secret
}

fn job(job_id: &str) -> Value {
    json!({"job_id": job_id, "handler": "log", "kwargs": {"message": "hi"},
           "periodically": "1 day", "state": "paused"})
}

/// The number of jobs, read with `admin`.
async fn job_count(app: &TestApp, admin: &str) -> i64 {
    let (status, body) = get(&app.base, "/api/v1/jobs", Cred::Bearer(admin)).await;
    assert_eq!(status, 200, "{body}");
    body["jobs_count"].as_i64().unwrap()
}

#[tokio::test]
async fn every_refused_token_answers_401_in_the_error_shape_and_changes_nothing() {
    let app = TestApp::start_with(&["--auth", "on"]).await;
    let admin = token(&app.store, "admin", Scope::Admin).await;
    let revoked = token(&app.store, "old", Scope::Write).await;
    jobsd::auth::revoke(&app.store, &revoked[..14], Utc::now())
        .await
        .unwrap();
    let past = Utc::now() - chrono::Duration::seconds(1);
    let expired = jobsd::auth::issue(&app.store, "brief", Scope::Write, past, Some(past))
        .await
        .unwrap()
        .secret;
    let unknown = jobsd::auth::token::mint().secret;

    let cases = [
        (Cred::None, "needs an API token with write scope"),
        (
            Cred::Authorization("Basic dXNlcjpwYXNz"),
            "must be `Bearer <token>`",
        ),
        (Cred::Authorization("Bearer"), "must be `Bearer <token>`"),
        (Cred::Bearer("not-a-token"), "not a jobsd token"),
        (Cred::AuthToken(""), "auth-token header is empty"),
        (Cred::Bearer(&unknown), "unknown token"),
        (Cred::Bearer(&revoked), "was revoked"),
        (Cred::AuthToken(&revoked), "was revoked"),
        (Cred::Bearer(&expired), "expired at"),
    ];
    for (i, (cred, needle)) in cases.into_iter().enumerate() {
        let (status, body, challenge) = send(
            &app.base,
            Method::POST,
            "/api/v1/jobs",
            cred,
            Some(job(&format!("j{i}"))),
        )
        .await;
        assert_error(&(status, body.clone()), 401, needle);
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer realm=\"jobsd\""),
            "{body}"
        );
        assert!(
            !body.to_string().contains(&revoked[15..]),
            "no secret echoed: {body}"
        );
    }
    assert_eq!(
        job_count(&app, &admin).await,
        0,
        "no refused request created a job"
    );
    // Reads too.
    assert_eq!(get(&app.base, "/api/v1/jobs", Cred::None).await.0, 401);
    assert_eq!(
        get(&app.base, "/api/v1/runs", Cred::Bearer(&unknown))
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn each_scope_is_allowed_its_routes_and_refused_403_above_them_changing_nothing() {
    let app = TestApp::start_with(&["--auth", "on"]).await;
    let read = token(&app.store, "reader", Scope::Read).await;
    let write = token(&app.store, "writer", Scope::Write).await;
    let admin = token(&app.store, "admin", Scope::Admin).await;
    let base = app.base.as_str();

    // Read: every GET, with any scope.
    for t in [&read, &write, &admin] {
        for path in [
            "/api/v1/jobs",
            "/api/v1/runs",
            "/api/v1/handlers",
            "/api/v1/service/state",
        ] {
            assert_eq!(get(base, path, Cred::Bearer(t)).await.0, 200, "{path}");
        }
    }

    // Write: jobs, runs.
    let (status, body, _) = send(
        base,
        Method::POST,
        "/api/v1/jobs",
        Cred::Bearer(&read),
        Some(job("r")),
    )
    .await;
    assert_error(
        &(status, body),
        403,
        "has read scope; POST /api/v1/jobs needs write",
    );
    assert_eq!(job_count(&app, &admin).await, 0);
    let (status, body, _) = send(
        base,
        Method::POST,
        "/api/v1/jobs",
        Cred::Bearer(&write),
        Some(job("w")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body, _) = send(
        base,
        Method::POST,
        "/api/v1/jobs/w/run",
        Cred::Bearer(&read),
        None,
    )
    .await;
    assert_error(&(status, body), 403, "needs write");
    let (status, run, _) = send(
        base,
        Method::POST,
        "/api/v1/jobs/w/run",
        Cred::Bearer(&write),
        None,
    )
    .await;
    assert_eq!(status, 201, "{run}");
    let run_id = run["run"]["run_id"].as_str().unwrap().to_string();
    let (status, body, _) = send(
        base,
        Method::DELETE,
        "/api/v1/jobs/w",
        Cred::Bearer(&read),
        None,
    )
    .await;
    assert_error(&(status, body), 403, "needs write");
    assert_eq!(
        job_count(&app, &admin).await,
        1,
        "the refused delete deleted nothing"
    );

    // Admin: service state, run state overrides, tokens.
    for t in [&read, &write] {
        let (status, body, _) = send(
            base,
            Method::PUT,
            "/api/v1/service/state?state=paused",
            Cred::Bearer(t),
            None,
        )
        .await;
        assert_error(&(status, body), 403, "needs admin");
        let (status, body, _) = send(
            base,
            Method::PUT,
            &format!("/api/v1/runs/{run_id}/state"),
            Cred::Bearer(t),
            Some(json!({"state": "cancelled", "reason": "test"})),
        )
        .await;
        assert_error(&(status, body), 403, "needs admin");
        let (status, body, _) = send(
            base,
            Method::POST,
            "/api/v1/tokens",
            Cred::Bearer(t),
            Some(json!({"name": "more", "scope": "admin"})),
        )
        .await;
        assert_error(&(status, body), 403, "needs admin");
        let (status, body) = get(base, "/api/v1/tokens", Cred::Bearer(t)).await;
        assert_error(&(status, body), 403, "needs admin");
    }
    let (_, state) = get(base, "/api/v1/service/state", Cred::Bearer(&read)).await;
    assert_eq!(state["state"], "running", "refused pauses paused nothing");
    let (_, listed) = get(base, "/api/v1/tokens", Cred::Bearer(&admin)).await;
    assert_eq!(
        listed["tokens"].as_array().unwrap().len(),
        3,
        "no token was added"
    );
    let (_, refused_run) = get(base, &format!("/api/v1/runs/{run_id}"), Cred::Bearer(&read)).await;
    assert_ne!(refused_run["state"], "cancelled");

    let (status, body, _) = send(
        base,
        Method::PUT,
        "/api/v1/service/state?state=paused",
        Cred::Bearer(&admin),
        None,
    )
    .await;
    assert_eq!((status, &body["state"]), (200, &json!("paused")), "{body}");
    let (status, body, _) = send(
        base,
        Method::PUT,
        &format!("/api/v1/runs/{run_id}/state"),
        Cred::Bearer(&admin),
        Some(json!({"state": "cancelled", "reason": "test"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_original_auth_token_header_is_accepted_like_a_bearer_token() {
    let app = TestApp::start_with(&["--auth", "on"]).await;
    let write = token(&app.store, "legacy", Scope::Write).await;
    let (status, body, _) = send(
        &app.base,
        Method::POST,
        "/api/v1/jobs",
        Cred::AuthToken(&write),
        Some(job("legacy")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        get(&app.base, "/api/v1/jobs/legacy", Cred::AuthToken(&write))
            .await
            .0,
        200
    );
    let (status, body, _) = send(
        &app.base,
        Method::PUT,
        "/api/v1/service/state?state=paused",
        Cred::AuthToken(&write),
        None,
    )
    .await;
    assert_error(&(status, body), 403, "needs admin");
}

#[tokio::test]
async fn probes_the_document_and_swagger_ui_stay_open_with_auth_on() {
    let app = TestApp::start_with(&["--auth", "on"]).await;
    for path in [
        "/api/v1/liveness",
        "/api/v1/readiness",
        "/api/v1/openapi.json",
        "/api/v1/ui/",
    ] {
        assert_eq!(get(&app.base, path, Cred::None).await.0, 200, "{path}");
    }
    let (status, doc) = get(&app.base, "/api/v1/openapi.json", Cred::None).await;
    assert_eq!(status, 200);
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
    assert_eq!(schemes["auth_token"]["name"], "auth-token", "{schemes}");
    // Everything else needs a token.
    assert_eq!(get(&app.base, "/api/v1/instances", Cred::None).await.0, 401);
}

#[tokio::test]
async fn auto_mode_turns_on_within_5_s_of_a_first_token_created_elsewhere() {
    let app = TestApp::start().await;
    let (status, body, _) = send(
        &app.base,
        Method::POST,
        "/api/v1/jobs",
        Cred::None,
        Some(job("open")),
    )
    .await;
    assert_eq!(status, 201, "no token yet: auth is off: {body}");

    // Another process's store (the CLI, another replica).
    let other = Store::connect(&app.db.url, 2, Duration::from_secs(10))
        .await
        .unwrap();
    let created = Instant::now();
    let read = token(&other, "ci", Scope::Read).await;
    wait_refused("auth to turn on", &app.base, Cred::None).await;
    assert!(
        created.elapsed() < Duration::from_secs(5),
        "{:?}",
        created.elapsed()
    );
    assert_eq!(
        get(&app.base, "/api/v1/jobs/open", Cred::Bearer(&read))
            .await
            .0,
        200
    );
    let (status, body, _) = send(
        &app.base,
        Method::POST,
        "/api/v1/jobs",
        Cred::None,
        Some(job("late")),
    )
    .await;
    assert_error(&(status, body), 401, "needs an API token");
}

#[tokio::test]
async fn a_first_token_created_through_the_api_turns_auth_on_at_once() {
    let app = TestApp::start().await;
    let (status, created, _) = send(
        &app.base,
        Method::POST,
        "/api/v1/tokens",
        Cred::None,
        Some(json!({"name": "first", "scope": "admin"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(get(&app.base, "/api/v1/jobs", Cred::None).await.0, 401);
    let secret = created["secret"].as_str().unwrap();
    assert_eq!(
        get(&app.base, "/api/v1/jobs", Cred::Bearer(secret)).await.0,
        200
    );
}

#[tokio::test]
async fn the_tokens_api_creates_lists_and_revokes_and_never_shows_a_secret_again() {
    let app = TestApp::start_with(&["--auth", "on"]).await;
    let admin = token(&app.store, "admin", Scope::Admin).await;
    let base = app.base.as_str();
    let (status, created, _) = send(
        base,
        Method::POST,
        "/api/v1/tokens",
        Cred::Bearer(&admin),
        Some(json!({"name": "ci", "scope": "write", "expires": "90d"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    let view = &created["token"];
    assert!(
        secret.starts_with(view["prefix"].as_str().unwrap()),
        "{created}"
    );
    assert_eq!(
        (&view["name"], &view["scope"], &view["state"]),
        (&json!("ci"), &json!("write"), &json!("active"))
    );
    let expires: chrono::DateTime<Utc> = view["expires_at"].as_str().unwrap().parse().unwrap();
    let in_90_days = Utc::now() + chrono::Duration::days(90);
    assert!((expires - in_90_days).num_seconds().abs() < 60, "{expires}");

    // The new token works, and its use is recorded within seconds.
    let (status, body, _) = send(
        base,
        Method::POST,
        "/api/v1/jobs",
        Cred::Bearer(&secret),
        Some(job("ci")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let listed = wait_for("last_used_at", Duration::from_secs(5), || async {
        let (_, listed) = get(base, "/api/v1/tokens", Cred::Bearer(&admin)).await;
        let ci = listed["tokens"]
            .as_array()?
            .iter()
            .find(|t| t["name"] == "ci")?
            .clone();
        (!ci["last_used_at"].is_null()).then_some(listed)
    })
    .await;
    let text = listed.to_string();
    assert!(!text.contains(&secret[15..]), "no secret in lists: {text}");
    let hash = jobsd::auth::token::hex(&jobsd::auth::token::digest(&secret));
    assert!(
        !text.contains(&hash) && !text.contains("hash"),
        "no hash: {text}"
    );

    for (body, needle) in [
        (json!({"name": "x", "scope": "root"}), "scope"),
        (json!({"name": "", "scope": "read"}), "name"),
        (
            json!({"name": "x", "scope": "read", "expires": "soon"}),
            "expires",
        ),
        (
            json!({"name": "x", "scope": "read", "expires": "0"}),
            "expires",
        ),
        (
            json!({"name": "x", "scope": "read", "owner": "me"}),
            "owner",
        ),
    ] {
        let (status, answer, _) = send(
            base,
            Method::POST,
            "/api/v1/tokens",
            Cred::Bearer(&admin),
            Some(body),
        )
        .await;
        assert_error(&(status, answer), 400, needle);
    }

    let id = view["id"].as_str().unwrap();
    let (status, revoked, _) = send(
        base,
        Method::DELETE,
        &format!("/api/v1/tokens/{id}"),
        Cred::Bearer(&admin),
        None,
    )
    .await;
    assert_eq!(
        (status, &revoked["token"]["state"]),
        (200, &json!("revoked")),
        "{revoked}"
    );
    // This replica forgets it at once.
    assert_eq!(
        get(base, "/api/v1/jobs", Cred::Bearer(&secret)).await.0,
        401
    );
    for (reference, status) in [("jobsd_nothere0", 404), ("what", 400)] {
        let (got, body, _) = send(
            base,
            Method::DELETE,
            &format!("/api/v1/tokens/{reference}"),
            Cred::Bearer(&admin),
            None,
        )
        .await;
        assert_eq!(got, status, "{reference}: {body}");
    }
    let (_, listed) = get(base, "/api/v1/tokens", Cred::Bearer(&admin)).await;
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 2, "{listed}");
}

#[tokio::test]
async fn revoking_the_last_live_admin_token_answers_409_and_keeps_it() {
    let app = TestApp::start_with(&["--auth", "on"]).await;
    let first = token(&app.store, "first", Scope::Admin).await;
    let base = app.base.as_str();
    let prefix = &first[..14];
    let (status, body, _) = send(
        base,
        Method::DELETE,
        &format!("/api/v1/tokens/{prefix}"),
        Cred::Bearer(&first),
        None,
    )
    .await;
    assert_error(&(status, body), 409, "last live admin token");
    assert_eq!(
        get(base, "/api/v1/tokens", Cred::Bearer(&first)).await.0,
        200,
        "kept"
    );

    let (status, second, _) = send(
        base,
        Method::POST,
        "/api/v1/tokens",
        Cred::Bearer(&first),
        Some(json!({"name": "second", "scope": "admin"})),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    let second_secret = second["secret"].as_str().unwrap();
    let (status, body, _) = send(
        base,
        Method::DELETE,
        &format!("/api/v1/tokens/{prefix}"),
        Cred::Bearer(&first),
        None,
    )
    .await;
    assert_eq!(status, 200, "another admin token lives now: {body}");
    assert_eq!(
        get(base, "/api/v1/tokens", Cred::Bearer(&first)).await.0,
        401
    );
    let second_id = second["token"]["id"].as_str().unwrap();
    let (status, body, _) = send(
        base,
        Method::DELETE,
        &format!("/api/v1/tokens/{second_id}"),
        Cred::Bearer(second_secret),
        None,
    )
    .await;
    assert_error(&(status, body), 409, "last live admin token");
}

#[tokio::test]
async fn cors_answers_only_the_listed_origins() {
    let preflight = |base: String, origin: &'static str| async move {
        let resp = reqwest::Client::new()
            .request(Method::OPTIONS, format!("{base}/api/v1/jobs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
            .await
            .unwrap();
        let allowed = resp
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string());
        let headers = resp
            .headers()
            .get("access-control-allow-headers")
            .map(|v| v.to_str().unwrap().to_string());
        (allowed, headers)
    };
    let closed = TestApp::start().await;
    assert_eq!(
        preflight(closed.base.clone(), "https://ops.example.com")
            .await
            .0,
        None
    );

    let open =
        TestApp::start_with(&["--auth", "on", "--cors-origin", "https://ops.example.com"]).await;
    let (allowed, headers) = preflight(open.base.clone(), "https://ops.example.com").await;
    assert_eq!(allowed.as_deref(), Some("https://ops.example.com"));
    assert!(headers.unwrap_or_default().contains("authorization"));
    assert_eq!(
        preflight(open.base.clone(), "https://evil.example").await.0,
        None
    );
    // A real request from the origin still needs its token.
    let read = token(&open.store, "ui", Scope::Read).await;
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/jobs", open.base))
        .header("origin", "https://ops.example.com")
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://ops.example.com"
    );
}

/// `jobsd serve` on `db` with `args` and extra environment, its log piped.
fn serve(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobsd"));
    cmd.args(["serve", "--database-url", &db.url])
        .args(["--default-jobs-dir", "/nonexistent-jobsd-test-dir"])
        .args(["--poll-interval", "1s", "--shutdown-grace", "2s"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.spawn().expect("jobsd starts")
}

/// Waits for `child` to listen; its base URL on the loopback address,
/// and its log's first lines and the rest.
async fn listening(child: &mut Child) -> (String, ChildLog) {
    let mut lines: ChildLog = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = listening_address(&mut lines, "jobsd").await;
    let port = address.rsplit(':').next().unwrap().to_string();
    (format!("http://127.0.0.1:{port}"), lines)
}

#[tokio::test]
async fn jobsd_admin_token_bootstraps_auth_and_lets_a_non_loopback_bind_start() {
    let db = TestDb::new();
    let bootstrap = "example-bootstrap-token-0123456789";
    // As docker-compose.yml runs it: on every address, with the token.
    let mut child = serve(
        &db,
        &["--bind", "0.0.0.0:0"],
        &[("JOBSD_ADMIN_TOKEN", bootstrap)],
    );
    let (base, mut log) = listening(&mut child).await;
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    assert_eq!(get(&base, "/api/v1/jobs", Cred::None).await.0, 401);
    assert_eq!(
        get(
            &base,
            "/api/v1/jobs",
            Cred::Bearer("example-bootstrap-token-012345678")
        )
        .await
        .0,
        401
    );
    assert_eq!(
        get(&base, "/api/v1/jobs", Cred::Bearer(bootstrap)).await.0,
        200
    );
    assert_eq!(
        get(&base, "/api/v1/jobs", Cred::AuthToken(bootstrap))
            .await
            .0,
        200
    );
    let (status, created, _) = send(
        &base,
        Method::POST,
        "/api/v1/tokens",
        Cred::Bearer(bootstrap),
        Some(json!({"name": "ops", "scope": "admin"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (_, listed) = get(
        &base,
        "/api/v1/tokens",
        Cred::Bearer(created["secret"].as_str().unwrap()),
    )
    .await;
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ops"], "the bootstrap token is not stored");

    let other = TestDb::new();
    let short = serve(&other, &[], &[("JOBSD_ADMIN_TOKEN", "short")]);
    let out = exited(short).await;
    assert_refused(&out, "shorter than 16 characters");
}

/// The end of a child expected to exit by itself, within 30 s.
async fn exited(child: Child) -> Output {
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("jobsd exits in time")
        .unwrap()
}

/// A start refused: exit 1, a last line `jobsd: ...` saying `needle`, no panic.
#[track_caller]
fn assert_refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("jobsd: ") && last.contains(needle),
        "{needle:?} in: {stderr}"
    );
}

#[tokio::test]
async fn a_non_loopback_bind_without_auth_refuses_to_start_unless_insecure_no_auth() {
    for args in [
        &["--bind", "0.0.0.0:0"][..],
        &["--bind", "0.0.0.0:0", "--auth", "off"][..],
    ] {
        let db = TestDb::new();
        let out = exited(serve(&db, args, &[])).await;
        assert_refused(&out, "refusing to serve 0.0.0.0:0 without authentication");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for fix in [
            "jobsd token create",
            "JOBSD_ADMIN_TOKEN",
            "--insecure-no-auth",
            "--bind 127.0.0.1",
        ] {
            assert!(stderr.contains(fix), "{fix:?} in {stderr}");
        }
        assert!(!stderr.contains("listening"), "{stderr}");
    }

    let db = TestDb::new();
    let mut child = serve(&db, &["--bind", "0.0.0.0:0", "--insecure-no-auth"], &[]);
    let mut lines: ChildLog = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut warned = false;
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            warned |= line.contains("WARN") && line.contains("WITHOUT AUTHENTICATION");
            if line.contains("address=") {
                return true;
            }
        }
        false
    })
    .await
    .expect("jobsd starts in time");
    assert!(started && warned, "starts, and warns before listening");

    // With a token, auto mode is on and the same bind starts.
    child.kill().await.unwrap();
    let store = Store::connect(&db.url, 2, Duration::from_secs(10))
        .await
        .unwrap();
    token(&store, "ops", Scope::Admin).await;
    let mut child = serve(&db, &["--bind", "0.0.0.0:0"], &[]);
    let (base, _log) = listening(&mut child).await;
    assert_eq!(get(&base, "/api/v1/jobs", Cred::None).await.0, 401);
}

/// Runs `jobsd token ...` on `db` to its end.
async fn token_cli(db: &TestDb, args: &[&str]) -> (Output, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_jobsd"))
            .arg("token")
            .args(args)
            .args(["--database-url", &db.url])
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("jobsd token ends in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[tokio::test]
async fn the_token_cli_creates_lists_and_revokes_beside_a_serving_jobsd() {
    // Served in this process (on SQLite it holds the file's serve lock).
    let app = TestApp::start().await;
    let db = &app.db;
    let (out, stdout, stderr) =
        token_cli(db, &["create", "--name", "ops", "--scope", "admin"]).await;
    assert!(out.status.success(), "{stderr}");
    let admin = stdout.trim().to_string();
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the token on stdout: {stdout}"
    );
    assert!(jobsd::auth::token::is_well_formed(&admin), "{admin}");
    assert!(
        stderr.contains("shown only this once") && stderr.contains(&admin[..14]),
        "{stderr}"
    );
    wait_refused("the served jobsd to turn auth on", &app.base, Cred::None).await;
    assert_eq!(
        get(&app.base, "/api/v1/jobs", Cred::Bearer(&admin)).await.0,
        200
    );

    let (out, writer, stderr) = token_cli(
        db,
        &[
            "create",
            "--name",
            "ci",
            "--scope",
            "write",
            "--expires",
            "1h",
        ],
    )
    .await;
    assert!(out.status.success(), "{stderr}");
    let writer = writer.trim().to_string();
    assert_eq!(
        get(&app.base, "/api/v1/jobs", Cred::Bearer(&writer))
            .await
            .0,
        200
    );

    let (out, list, stderr) = token_cli(db, &["list"]).await;
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("PREFIX"),
        "{list}"
    );
    for (line, token, name, scope) in [
        (lines[1], &admin, "ops", "admin"),
        (lines[2], &writer, "ci", "write"),
    ] {
        assert!(
            line.contains(&token[..14]) && line.contains(name) && line.contains(scope),
            "{line}"
        );
        assert!(line.contains("active"), "{line}");
        assert!(!list.contains(&token[15..]), "no secret: {list}");
    }

    let (out, _, stderr) = token_cli(db, &["revoke", &writer[..14]]).await;
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("revoked token"), "{stderr}");
    wait_refused(
        "the served jobsd to refuse the revoked token",
        &app.base,
        Cred::Bearer(&writer),
    )
    .await;

    let (out, _, stderr) = token_cli(db, &["revoke", &admin[..14]]).await;
    assert_refused(&out, "last live admin token");
    assert!(stderr.contains("jobsd token create"), "{stderr}");
    assert_eq!(
        get(&app.base, "/api/v1/jobs", Cred::Bearer(&admin)).await.0,
        200
    );

    let (out, _, stderr) = token_cli(
        db,
        &[
            "create",
            "--name",
            "x",
            "--scope",
            "write",
            "--expires",
            "soon",
        ],
    )
    .await;
    assert_refused(&out, "expires:");
    let (out, _, stderr_scope) = token_cli(db, &["create", "--name", "x", "--scope", "root"]).await;
    assert_eq!(out.status.code(), Some(2), "{stderr_scope}");
    let (out, _, _) = token_cli(db, &["revoke", "jobsd_nothere0"]).await;
    assert_refused(&out, "no token jobsd_nothere0");
    let (_, list, _) = token_cli(db, &["list"]).await;
    assert_eq!(
        list.lines().count(),
        3,
        "nothing refused was created: {list}\n{stderr}"
    );
}

/// PostgreSQL only: the embedded store serves one process, so there is no
/// second replica to see a revocation.
#[tokio::test]
async fn a_revocation_is_seen_by_another_replica_within_5_s() {
    let db = TestDb::postgres();
    let store = Store::connect(&db.url, 2, Duration::from_secs(10))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let admin = token(&store, "ops", Scope::Admin).await;
    let reader = token(&store, "dashboard", Scope::Read).await;
    let one = Replica::spawn(&db, "one", &[]).await;
    let two = Replica::spawn(&db, "two", &[]).await;
    // Both know the token (and cache it).
    for replica in [&one, &two] {
        assert_eq!(
            get(&replica.base, "/api/v1/jobs", Cred::Bearer(&reader))
                .await
                .0,
            200
        );
    }
    let (status, body, _) = send(
        &one.base,
        Method::DELETE,
        &format!("/api/v1/tokens/{}", &reader[..14]),
        Cred::Bearer(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let revoked = Instant::now();
    assert_eq!(
        get(&one.base, "/api/v1/jobs", Cred::Bearer(&reader))
            .await
            .0,
        401
    );
    wait_refused(
        "the other replica to refuse the token",
        &two.base,
        Cred::Bearer(&reader),
    )
    .await;
    let seen_after = revoked.elapsed();
    assert!(seen_after < Duration::from_secs(5), "{seen_after:?}");
    assert_eq!(
        get(&two.base, "/api/v1/jobs", Cred::Bearer(&admin)).await.0,
        200
    );
}
