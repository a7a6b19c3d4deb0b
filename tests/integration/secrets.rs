//! Secrets in kwargs (issue #12 §3): stored and used as given, shown as
//! `"***"` in every answer (jobs, runs, failure records, errors) and log
//! line of a real `jobsd serve`, and kept by a PATCH that sends `"***"`
//! back. A real HTTP server records what the `http` handler sends; a real
//! `sh` echoes its environment.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Router;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{self, assert_error, wait_for, ChildLog, TestDb};

/// The secrets of these tests: none may appear in an answer or a log line.
const AUTHORIZATION: &str = "Bearer sk-live-authorization-1234";
const TOKEN: &str = "tok-secret-header-5678";
const ENV_SECRET: &str = "env-secret-value-9012";
const YAML_SECRET: &str = "yaml-secret-api-key-3456";
const ALL: [&str; 4] = [AUTHORIZATION, TOKEN, ENV_SECRET, YAML_SECRET];

/// One request the server received: its path and headers (lower-case names).
type Received = (String, BTreeMap<String, String>);

/// A local HTTP server that records every request. `/fail` answers 500
/// with a body echoing the request's `authorization` and `x-token`.
struct Recorder {
    base: String,
    received: Arc<Mutex<Vec<Received>>>,
}

async fn record(
    State(received): State<Arc<Mutex<Vec<Received>>>>,
    uri: Uri,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), value)
        })
        .collect();
    let echo = format!(
        "denied: authorization={} x-token={}",
        headers.get("authorization").cloned().unwrap_or_default(),
        headers.get("x-token").cloned().unwrap_or_default()
    );
    let path = uri.path().to_string();
    received.lock().unwrap().push((path.clone(), headers));
    if path == "/fail" {
        (StatusCode::INTERNAL_SERVER_ERROR, echo)
    } else {
        (StatusCode::OK, format!("ok; {echo}"))
    }
}

impl Recorder {
    async fn start() -> Recorder {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let app = Router::new().fallback(record).with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Recorder {
            base: format!("http://{address}"),
            received,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The headers of the `n`-th request to `path` (1-based), once it came.
    async fn nth_request(&self, path: &str, n: usize) -> BTreeMap<String, String> {
        wait_for(
            &format!("request {n} to {path}"),
            Duration::from_secs(15),
            || async {
                let received = self.received.lock().unwrap();
                received
                    .iter()
                    .filter(|(p, _)| p == path)
                    .nth(n - 1)
                    .map(|(_, h)| h.clone())
            },
        )
        .await
    }
}

/// A `jobsd serve` child whose whole log is kept.
struct Service {
    base: String,
    log: Arc<Mutex<Vec<String>>>,
    client: reqwest::Client,
    _child: Child,
}

impl Service {
    async fn start(db: &TestDb, default_jobs: &str) -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_jobsd"))
            .args(["serve", "--database-url", &db.url, "--bind", "127.0.0.1:0"])
            .args([
                "--default-jobs-dir",
                default_jobs,
                "--enable-command-handler",
            ])
            .args(["--poll-interval", "1s", "--shutdown-grace", "2s"])
            .env("RUST_LOG", "info,jobsd=debug")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("jobsd starts");
        let mut lines: ChildLog = BufReader::new(child.stderr.take().unwrap()).lines();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        // Every line, those before it listens included.
        let address = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let address = support::address_in(&line);
                log.lock().unwrap().push(line);
                if address.is_some() {
                    return address;
                }
            }
            None
        })
        .await
        .expect("jobsd listens in time")
        .expect("jobsd logs its address");
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        Service {
            base: format!("http://{address}"),
            log,
            client: reqwest::Client::new(),
            _child: child,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert_no_secret(&format!("{path} answered"), &body.to_string());
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    /// Triggers a run of `job_id` and waits until it ends in `state`.
    async fn run(&self, job_id: &str, state: &str) -> Value {
        let (status, body) = self
            .post(&format!("/api/v1/jobs/{job_id}/run"), json!({}))
            .await;
        assert_eq!(status, 201, "{body}");
        let run_id = body["run"]["run_id"].as_str().unwrap().to_string();
        wait_for(
            &format!("run {run_id} {state}"),
            Duration::from_secs(20),
            || async {
                let (_, body) = self.get(&format!("/api/v1/runs/{run_id}")).await;
                (body["run"]["state"] == state).then(|| body["run"].clone())
            },
        )
        .await
    }

    /// Waits until the log has a line containing every one of `needles`.
    async fn logged(&self, needles: &[&str]) -> String {
        wait_for(
            &format!("a log line with {needles:?}"),
            Duration::from_secs(15),
            || async {
                let log = self.log.lock().unwrap();
                log.iter()
                    .find(|line| needles.iter().all(|n| line.contains(n)))
                    .cloned()
            },
        )
        .await
    }

    fn assert_log_has_no_secret(&self) {
        let log = self.log.lock().unwrap();
        assert!(!log.is_empty());
        assert_no_secret("the log", &log.join("\n"));
    }
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for secret in ALL {
        assert!(!text.contains(secret), "{what} shows {secret:?}: {text}");
    }
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("jobsd-secrets-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn http_secrets_are_sent_shown_as_masks_and_kept_by_a_patch() {
    let server = Recorder::start().await;
    let db = TestDb::new();
    let service = Service::start(&db, "/nonexistent-jobsd-test-dir").await;

    // POST answers with masks; the store keeps the values.
    let (status, created) = service
        .post(
            "/api/v1/jobs",
            json!({
                "job_id": "with-secrets",
                "handler": "http",
                "state": "paused",
                "kwargs": {
                    "url": server.url("/ok"),
                    "headers": {"authorization": AUTHORIZATION, "Accept": "text/plain"},
                    "secret_headers": {"X-Token": TOKEN},
                },
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let masked = json!({
        "url": server.url("/ok"),
        "headers": {"authorization": "***", "Accept": "text/plain"},
        "secret_headers": {"X-Token": "***"},
    });
    assert_eq!(created["job"]["kwargs"], masked);
    let (_, one) = service.get("/api/v1/jobs/with-secrets").await;
    assert_eq!(one["job"]["kwargs"], masked);
    let (_, list) = service.get("/api/v1/jobs").await;
    assert_eq!(list["jobs"][0]["kwargs"], masked);

    // The run sends the real secrets; its answers show masks.
    let run = service.run("with-secrets", "succeeded").await;
    assert_eq!(run["kwargs"], masked);
    let sent = server.nth_request("/ok", 1).await;
    assert_eq!(sent["authorization"], AUTHORIZATION);
    assert_eq!(sent["x-token"], TOKEN);
    assert_eq!(sent["accept"], "text/plain");
    // The server echoed the secrets into the body: the result is scrubbed.
    assert_eq!(
        run["result"]["body"],
        "ok; denied: authorization=*** x-token=***"
    );
    let (_, runs) = service.get("/api/v1/jobs/with-secrets/runs").await;
    assert_eq!(runs["runs"][0]["kwargs"], masked);
    let (_, runs) = service.get("/api/v1/runs?job_id=with-secrets").await;
    assert_eq!(runs["runs"][0]["kwargs"], masked);

    // A PATCH sending the masks back keeps the secrets, changing the rest.
    let (status, patched) = service
        .patch(
            "/api/v1/jobs/with-secrets",
            json!({"kwargs": {
                "url": server.url("/patched"),
                "headers": {"Authorization": "***", "Accept": "application/json"},
                "secret_headers": {"X-Token": "***"},
            }}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["job"]["kwargs"],
        json!({
            "url": server.url("/patched"),
            "headers": {"Authorization": "***", "Accept": "application/json"},
            "secret_headers": {"X-Token": "***"},
        })
    );
    service.run("with-secrets", "succeeded").await;
    let sent = server.nth_request("/patched", 1).await;
    assert_eq!(sent["authorization"], AUTHORIZATION);
    assert_eq!(sent["x-token"], TOKEN);
    assert_eq!(sent["accept"], "application/json");

    // A mask for a secret the job never had is refused, and changes nothing.
    let refused = service
        .patch(
            "/api/v1/jobs/with-secrets",
            json!({"kwargs": {
                "url": server.url("/other"),
                "secret_headers": {"X-Token": "***", "X-New": "***"},
            }}),
        )
        .await;
    assert_error(&refused, 400, "kwargs/secret_headers/X-New");
    let (_, unchanged) = service.get("/api/v1/jobs/with-secrets").await;
    assert_eq!(unchanged["job"]["kwargs"]["url"], server.url("/patched"));
    // A new value replaces the secret.
    let (status, _) = service
        .patch(
            "/api/v1/jobs/with-secrets",
            json!({"kwargs": {"url": server.url("/new-token"), "secret_headers": {"X-Token": "fresh-token-0000"}}}),
        )
        .await;
    assert_eq!(status, 200);
    service.run("with-secrets", "succeeded").await;
    let sent = server.nth_request("/new-token", 1).await;
    assert_eq!(sent["x-token"], "fresh-token-0000");
    assert!(!sent.contains_key("authorization"), "{sent:?}");

    // A new job cannot be given a mask, by either form of POST.
    let refused = service
        .post(
            "/api/v1/jobs",
            json!({"handler": "http", "kwargs": {"url": server.url("/x"), "headers": {"Cookie": "***"}}}),
        )
        .await;
    assert_error(&refused, 400, "kwargs/headers/Cookie");
    let refused = service
        .post(
            "/api/v1/jobs/http?state=paused",
            json!({"url": server.url("/x"), "secret_headers": {"X-Token": "***"}}),
        )
        .await;
    assert_error(&refused, 400, "kwargs/secret_headers/X-Token");
    // Nor is a secret quoted back in an error.
    let refused = service
        .post(
            "/api/v1/jobs",
            json!({"handler": "http", "kwargs": {"url": server.url("/x"), "headers": {"Authorization": AUTHORIZATION, "X": 1}}}),
        )
        .await;
    assert_eq!(refused.0, 400, "{}", refused.1);

    service.assert_log_has_no_secret();
}

#[tokio::test]
async fn failures_of_runs_with_secrets_show_masks_in_runs_records_and_logs() {
    let server = Recorder::start().await;
    let db = TestDb::new();
    let service = Service::start(&db, "/nonexistent-jobsd-test-dir").await;

    // A server echoing the secret headers in its error body.
    let (status, _) = service
        .post(
            "/api/v1/jobs/http?job_id=echoing-server&state=paused",
            json!({
                "url": server.url("/fail"),
                "headers": {"AUTHORIZATION": AUTHORIZATION},
                "secret_headers": {"X-Token": TOKEN},
            }),
        )
        .await;
    assert_eq!(status, 201);
    let run = service.run("echoing-server", "failed").await;
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("unexpected status 500") && error.contains("authorization=*** x-token=***"),
        "{error}"
    );
    assert_eq!(server.nth_request("/fail", 1).await["x-token"], TOKEN);

    // A program echoing its secret environment to stderr.
    let (status, _) = service
        .post(
            "/api/v1/jobs",
            json!({
                "job_id": "echoing-program",
                "handler": "command",
                "state": "paused",
                "kwargs": {
                    "program": "sh",
                    "args": ["-c", "echo \"leaking $SECRET\" >&2; exit 1"],
                    "env": {"SECRET": ENV_SECRET, "SHORT": "ab"},
                },
            }),
        )
        .await;
    assert_eq!(status, 201);
    let run = service.run("echoing-program", "failed").await;
    assert_eq!(
        run["kwargs"]["env"],
        json!({"SECRET": "***", "SHORT": "***"})
    );
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("stderr: leaking ***"), "{error}");

    // The failure records: the failed kwargs and the error masked.
    let (_, records) = service.get("/api/v1/jobs?job_type=failed").await;
    assert_eq!(records["jobs_count"], 2, "{records}");
    for record in records["jobs"].as_array().unwrap() {
        let (_, one) = service
            .get(&format!(
                "/api/v1/jobs/{}",
                record["job_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(one["job"]["kwargs"], record["kwargs"]);
        let kwargs = &record["kwargs"];
        assert!(
            kwargs["exc_str"].as_str().unwrap().contains("***"),
            "{kwargs}"
        );
        match kwargs["failed_job_id"].as_str().unwrap() {
            "echoing-program" => {
                assert_eq!(kwargs["failed_handler_kwargs"]["env"]["SECRET"], "***")
            }
            _ => {
                assert_eq!(
                    kwargs["failed_handler_kwargs"]["headers"]["AUTHORIZATION"],
                    "***"
                );
                assert_eq!(
                    kwargs["failed_handler_kwargs"]["secret_headers"]["X-Token"],
                    "***"
                );
            }
        }
    }

    // Re-running a record runs with the stored secrets, not the masks.
    let record = records["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kwargs"]["failed_job_id"] == "echoing-server")
        .unwrap();
    let rerun = service
        .run(record["job_id"].as_str().unwrap(), "failed")
        .await;
    assert_eq!(rerun["kwargs"]["secret_headers"]["X-Token"], "***");
    let sent = server.nth_request("/fail", 2).await;
    assert_eq!(sent["authorization"], AUTHORIZATION);
    assert_eq!(sent["x-token"], TOKEN);

    // A program's output with a secret is scrubbed in the stored result.
    let (status, _) = service
        .post(
            "/api/v1/jobs/command?job_id=printing-program&state=paused",
            json!({"program": "sh", "args": ["-c", "echo \"$SECRET\""], "env": {"SECRET": ENV_SECRET}}),
        )
        .await;
    assert_eq!(status, 201);
    let run = service.run("printing-program", "succeeded").await;
    assert_eq!(run["result"]["stdout"], "***\n");

    // The log said the attempts failed, with the masks.
    service
        .logged(&["run attempt failed", "stderr: leaking ***"])
        .await;
    service
        .logged(&["run attempt failed", "authorization=***"])
        .await;
    service.assert_log_has_no_secret();
}

#[tokio::test]
async fn default_jobs_from_yaml_keep_their_secrets_out_of_answers_and_logs() {
    let server = Recorder::start().await;
    let dir = temp_dir();
    std::fs::write(
        dir.join("with-secret.yaml"),
        format!(
            "job_id: yaml-secret\nhandler: http\nstate: paused\nkwargs:\n  url: {}\n  headers:\n    X-Api-Key: {YAML_SECRET}\n",
            server.url("/yaml")
        ),
    )
    .unwrap();
    // A file refused for a secret of the wrong type: its problem is logged.
    std::fs::write(
        dir.join("bad-secret.yaml"),
        format!(
            "job_id: yaml-bad\nhandler: command\nkwargs:\n  program: sh\n  env:\n    KEY: [{YAML_SECRET}]\n"
        ),
    )
    .unwrap();
    let db = TestDb::new();
    let service = Service::start(&db, dir.to_str().unwrap()).await;

    let job = wait_for("the default job", Duration::from_secs(15), || async {
        let (status, body) = service.get("/api/v1/jobs/yaml-secret").await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(job["job"]["kwargs"]["headers"]["X-Api-Key"], "***");
    service.run("yaml-secret", "succeeded").await;
    assert_eq!(
        server.nth_request("/yaml", 1).await["x-api-key"],
        YAML_SECRET
    );

    service
        .logged(&["default job file skipped", "bad-secret.yaml"])
        .await;
    let (status, _) = service.get("/api/v1/jobs/yaml-bad").await;
    assert_eq!(status, 404);
    service.assert_log_has_no_secret();
    std::fs::remove_dir_all(&dir).unwrap();
}
