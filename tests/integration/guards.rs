//! The guards of issue #12 §2, at the HTTP level, on the backend the run
//! selects: what the `http` handler may reach (`http`), the `command` allow
//! list (`command`), size limits (`limits`), and hostile input: NUL
//! characters, deeply nested files, and arbitrary bodies (`hostile`).

mod command;
mod hostile;
mod http;
mod limits;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::scheduling::{create, wait_runs};
use crate::support::TestApp;

/// A real HTTP server on a loopback address that counts every request it
/// gets; `/redirect` answers 302 to the location it was given.
pub struct Recorder {
    pub address: SocketAddr,
    hits: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct RecorderState {
    hits: Arc<AtomicUsize>,
    redirect_to: Arc<String>,
}

async fn count(State(state): State<RecorderState>) -> impl IntoResponse {
    state.hits.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({"reached": true}))
}

async fn redirect(State(state): State<RecorderState>) -> impl IntoResponse {
    state.hits.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::FOUND,
        [(header::LOCATION, state.redirect_to.as_str().to_string())],
    )
}

impl Recorder {
    /// Listens on `ip` (any port); `/redirect` sends clients to `redirect_to`.
    pub async fn start(ip: &str, redirect_to: &str) -> Recorder {
        let hits = Arc::new(AtomicUsize::new(0));
        let state = RecorderState {
            hits: hits.clone(),
            redirect_to: Arc::new(redirect_to.to_string()),
        };
        let app = Router::new()
            .route("/redirect", get(redirect))
            .fallback(count)
            .with_state(state);
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {ip}: {e}"));
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { address, hits }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Creates an `http` job that fires at once with 3 retries 100 ms apart,
/// and returns its first run once it has ended in `state`.
pub async fn http_run(app: &TestApp, job_id: &str, url: &str, state: &str) -> Value {
    create(
        app,
        json!({
            "job_id": job_id,
            "handler": "http",
            "kwargs": {"url": url, "timeout": 5},
            "max_retries": 3,
            "retry_backoff": "100ms",
        }),
    )
    .await;
    let runs = wait_runs(app, job_id, state, 1, Duration::from_secs(20)).await;
    runs.into_iter()
        .find(|r| r["state"] == state)
        .expect("the run waited for")
}

/// Asserts a run was refused by the guard: failed at its first attempt
/// (fatal, not retried), its error naming `needle`.
#[track_caller]
pub fn assert_refused(run: &Value, needle: &str) {
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(run["attempt"], 1, "a refusal is not retried: {run}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains("refused: "), "{error}");
    assert!(error.contains(needle), "{error:?} should name {needle:?}");
    assert!(error.contains("see --http-allow/--http-deny"), "{error}");
}
