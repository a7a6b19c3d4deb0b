//! `GET /metrics` (issue #14 §1): a real service makes runs happen
//! (succeeded, failed after a retry, missed, a lease that expires), and
//! its scrapes, parsed by a real OpenMetrics parser (`openmetrics-parser`),
//! name every metric with its type, move the counters, and label requests
//! by route template. Then the token the endpoint needs.

use std::collections::HashMap;
use std::time::Duration;

use jobsd::auth::Scope;
use serde_json::{json, Value};

use crate::scheduling::{create, soon};
use crate::support::{execute_sql, micros, wait_for, TestApp};

/// One sample: its labels and value (a histogram's: its count).
#[derive(Debug, Clone)]
struct Sample {
    labels: HashMap<String, String>,
    value: f64,
}

/// A scrape as the parser read it: each family's type and samples.
#[derive(Debug)]
pub(crate) struct Scrape {
    families: HashMap<String, (String, Vec<Sample>)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let exposition = openmetrics_parser::openmetrics::parse_openmetrics(text)
            .unwrap_or_else(|e| panic!("not OpenMetrics text: {e:?}\n{text}"));
        let mut families = HashMap::new();
        for (name, family) in exposition.families {
            let kind = family.family_type.to_string();
            let samples = family
                .iter_samples()
                .map(|sample| {
                    let labels = sample
                        .get_labelset()
                        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    let value = match &sample.value {
                        openmetrics_parser::OpenMetricsValue::Counter(c) => c.value.as_f64(),
                        openmetrics_parser::OpenMetricsValue::Gauge(g) => g.as_f64(),
                        openmetrics_parser::OpenMetricsValue::Histogram(h) => {
                            h.count.map_or(0.0, |c| c as f64)
                        }
                        other => panic!("{name}: unexpected value {other:?}"),
                    };
                    Sample { labels, value }
                })
                .collect();
            families.insert(name, (kind, samples));
        }
        Scrape { families }
    }

    fn kind(&self, family: &str) -> Option<&str> {
        self.families.get(family).map(|(k, _)| k.as_str())
    }

    fn samples(&self, family: &str) -> &[Sample] {
        self.families
            .get(family)
            .map_or(&[][..], |(_, samples)| samples.as_slice())
    }

    /// The value of the sample of `family` with exactly these labels
    /// (among others it may have, for `labels` a subset).
    pub(crate) fn value(&self, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(family)
            .iter()
            .find(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

async fn scrape_text(app: &TestApp, token: Option<&str>) -> (u16, String, String) {
    let mut request = app.client.get(app.url("/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("scrape sent");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, content_type, response.text().await.expect("body"))
}

pub(crate) async fn scrape(app: &TestApp) -> Scrape {
    let (status, content_type, text) = scrape_text(app, None).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    Scrape::parse(&text)
}

/// Every metric of issue #14 §1, and the webhooks', alerts' and batches',
/// by family name (a counter's family has no `_total`), with its type.
const FAMILIES: [(&str, &str); 19] = [
    ("jobsd_runs", "counter"),
    ("jobsd_run_duration_seconds", "histogram"),
    ("jobsd_schedule_lag_seconds", "histogram"),
    ("jobsd_runs_queued", "gauge"),
    ("jobsd_runs_running", "gauge"),
    ("jobsd_oldest_queued_run_age_seconds", "gauge"),
    ("jobsd_missed", "counter"),
    ("jobsd_lease_expiries", "counter"),
    ("jobsd_retries", "counter"),
    ("jobsd_jobs", "gauge"),
    ("jobsd_instances_alive", "gauge"),
    ("jobsd_db_pool_connections", "gauge"),
    ("jobsd_build_info", "gauge"),
    ("jobsd_http_requests", "counter"),
    ("jobsd_http_request_duration_seconds", "histogram"),
    ("jobsd_webhook_deliveries", "counter"),
    ("jobsd_alerts", "counter"),
    ("jobsd_batches_created", "counter"),
    ("jobsd_batch_rows", "counter"),
];

/// The run `run_id` as the API shows it.
async fn run_of(app: &TestApp, run_id: &str) -> Value {
    let (status, body) = app.get(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(status, 200, "{body}");
    body["run"].clone()
}

/// The runs of `job_id` once one is in a final state.
async fn ended_run(app: &TestApp, job_id: &str) -> Value {
    wait_for(
        &format!("a run of {job_id} ends"),
        Duration::from_secs(20),
        || async {
            let (_, body) = app.get(&format!("/api/v1/jobs/{job_id}/runs")).await;
            body["runs"].as_array().and_then(|runs| {
                runs.iter()
                    .find(|r| {
                        !matches!(
                            r["state"].as_str(),
                            Some("queued" | "waiting" | "running") | None
                        )
                    })
                    .cloned()
            })
        },
    )
    .await
}

#[tokio::test]
async fn a_scrape_names_every_metric_with_its_type_and_counts_what_happened() {
    let app = TestApp::start().await;
    let before = scrape(&app).await;
    for (family, kind) in FAMILIES {
        if !family.starts_with("jobsd_http_") {
            // (No request has been answered yet.)
            assert_eq!(before.kind(family), Some(kind), "{family}");
        }
    }
    // Every registered handler's series exist before its first run.
    assert_eq!(
        before.value("jobsd_runs", &[("handler", "log"), ("state", "succeeded")]),
        Some(0.0)
    );
    assert_eq!(
        before.value("jobsd_run_duration_seconds", &[("handler", "sleep")]),
        Some(0.0)
    );
    assert_eq!(
        before.value(
            "jobsd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(before.value("jobsd_retries", &[]), Some(0.0));
    assert_eq!(
        before.value("jobsd_missed", &[("reason", "misfire_grace")]),
        Some(0.0)
    );

    // A run that succeeds; one that fails, is retried once, fails again;
    // one whose time is past its grace (missed).
    create(
        &app,
        json!({"job_id": "ok", "handler": "log", "kwargs": {"message": "hi"}}),
    )
    .await;
    create(
        &app,
        json!({"job_id": "flaky", "handler": "http",
               "kwargs": {"url": "http://127.0.0.1:1/", "timeout": 1},
               "max_retries": 1, "retry_backoff": "100ms"}),
    )
    .await;
    create(
        &app,
        json!({"job_id": "late", "handler": "log", "kwargs": {"message": "late"},
               "when": soon(-10_000).to_rfc3339(), "misfire_grace_time": "1s"}),
    )
    .await;
    assert_eq!(ended_run(&app, "ok").await["state"], "succeeded");
    let flaky = ended_run(&app, "flaky").await;
    assert_eq!(
        (flaky["state"].as_str(), flaky["attempt"].as_i64()),
        (Some("failed"), Some(2))
    );
    assert_eq!(ended_run(&app, "late").await["state"], "missed");

    // A running run whose lease expires (its replica "died"): the
    // supervisor rescues it.
    create(
        &app,
        json!({"job_id": "slow", "handler": "sleep", "kwargs": {"seconds": 30}}),
    )
    .await;
    let running = wait_for("the sleep runs", Duration::from_secs(10), || async {
        let (_, body) = app.get("/api/v1/jobs/slow/runs").await;
        body["runs"]
            .as_array()
            .and_then(|r| r.first().cloned())
            .filter(|r| r["state"] == "running")
    })
    .await;
    let run_id = running["run_id"].as_str().unwrap().to_string();
    let gone = chrono::Utc::now() - chrono::Duration::seconds(1);
    let changed = execute_sql(
        &app.store,
        &format!(
            "UPDATE runs SET instance = 'ghost', lease_expires_at = now() - interval '1 second' \
             WHERE run_id = '{run_id}'::uuid AND state = 'running'"
        ),
        &format!(
            "UPDATE runs SET instance = 'ghost', lease_expires_at = {} \
             WHERE run_id = '{run_id}' AND state = 'running'",
            micros(gone)
        ),
    )
    .await;
    assert_eq!(changed, 1);
    let rescued = wait_for(
        "the expired run is rescued",
        Duration::from_secs(20),
        || async {
            let run = run_of(&app, &run_id).await;
            (run["state"] != "running").then_some(run)
        },
    )
    .await;
    let rescued_state = rescued["state"].as_str().unwrap().to_string();

    // Routes by template, never by raw path; an unmatched one by a fixed label.
    assert_eq!(app.get("/api/v1/jobs/ok").await.0, 200);
    assert_eq!(app.get("/api/v1/jobs/no-such-job").await.0, 404);
    assert_eq!(app.get("/no/such/route").await.0, 404);

    // The counters are written once the outcome is, the gauges within 5 s.
    let after = wait_for(
        "the scrape shows what happened",
        Duration::from_secs(20),
        || async {
            let s = scrape(&app).await;
            let done = s.value("jobsd_instances_alive", &[]) == Some(1.0)
                && s.value("jobsd_jobs", &[("state", "completed")]) == Some(4.0)
                && s.value("jobsd_lease_expiries", &[]) == Some(1.0)
                && s.value("jobsd_runs", &[("handler", "http"), ("state", "failed")]) == Some(1.0);
            done.then_some(s)
        },
    )
    .await;
    for (family, kind) in FAMILIES {
        assert_eq!(after.kind(family), Some(kind), "{family}");
    }
    let runs = |handler: &str, state: &str| {
        after
            .value("jobsd_runs", &[("handler", handler), ("state", state)])
            .unwrap_or_else(|| panic!("jobsd_runs_total{{{handler},{state}}}"))
    };
    assert_eq!(runs("log", "succeeded"), 1.0);
    assert_eq!(runs("log", "failed"), 0.0, "every end exists from 0");
    assert_eq!(runs("http", "failed"), 1.0);
    assert_eq!(runs("http", "succeeded"), 0.0);
    assert_eq!(
        after.value("jobsd_retries", &[]),
        Some(1.0),
        "flaky's one retry"
    );
    assert_eq!(
        after.value("jobsd_missed", &[("reason", "misfire_grace")]),
        Some(1.0)
    );
    assert_eq!(
        after.value("jobsd_missed", &[("reason", "max_instances")]),
        Some(0.0)
    );
    // Rescued with no retries left: an end, counted for its handler.
    assert_ne!(rescued_state, "queued", "{rescued}");
    assert_eq!(runs("sleep", &rescued_state), 1.0, "{rescued}");
    assert_eq!(
        after.value("jobsd_run_duration_seconds", &[("handler", "log")]),
        Some(1.0)
    );
    // http ran twice; the attempt that was retried is counted in duration
    // only once it ended the run.
    assert_eq!(
        after.value("jobsd_run_duration_seconds", &[("handler", "http")]),
        Some(1.0)
    );
    // First attempts of ok, flaky and slow: due now, fired by the API's
    // insert or the scheduler (trigger `schedule`).
    let lag: f64 = after
        .samples("jobsd_schedule_lag_seconds")
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(
        lag,
        3.0,
        "{:?}",
        after.samples("jobsd_schedule_lag_seconds")
    );
    assert_eq!(after.value("jobsd_runs_running", &[]), Some(0.0));
    assert_eq!(after.value("jobsd_runs_queued", &[]), Some(0.0));
    assert_eq!(
        after.value("jobsd_oldest_queued_run_age_seconds", &[]),
        Some(0.0)
    );
    let idle = after
        .value("jobsd_db_pool_connections", &[("state", "idle")])
        .unwrap();
    let in_use = after
        .value("jobsd_db_pool_connections", &[("state", "in_use")])
        .unwrap();
    assert!(idle + in_use >= 1.0, "idle {idle}, in use {in_use}");

    let requests = after.samples("jobsd_http_requests");
    let job_route = |status: &str| {
        after.value(
            "jobsd_http_requests",
            &[
                ("method", "GET"),
                ("route", "/api/v1/jobs/{id}"),
                ("status", status),
            ],
        )
    };
    assert_eq!(job_route("200"), Some(1.0), "{requests:?}");
    assert_eq!(job_route("404"), Some(1.0), "{requests:?}");
    assert!(
        after
            .value(
                "jobsd_http_requests",
                &[("route", "unmatched"), ("status", "404")]
            )
            .is_some_and(|n| n >= 1.0),
        "{requests:?}"
    );
    for sample in requests
        .iter()
        .chain(after.samples("jobsd_http_request_duration_seconds"))
    {
        let route = &sample.labels["route"];
        assert!(
            !route.contains("no-such") && !route.contains("/ok") && !route.contains("/no/"),
            "a raw path as a label: {route}"
        );
    }
    assert!(
        after
            .value(
                "jobsd_http_request_duration_seconds",
                &[("method", "POST"), ("route", "/api/v1/jobs")]
            )
            .is_some_and(|n| n >= 4.0),
        "{:?}",
        after.samples("jobsd_http_request_duration_seconds")
    );
}

/// With auth on, a scrape needs a token of read scope (any scope allows
/// it); `--metrics-public` serves it without one, and nothing else.
#[tokio::test]
async fn metrics_need_a_read_token_when_auth_is_on_unless_public() {
    let app = TestApp::start_with(&["--auth", "on"]).await;
    let (status, _, body) = scrape_text(&app, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("read scope"), "{body}");
    let read = jobsd::auth::issue(
        &app.store,
        "prometheus",
        Scope::Read,
        chrono::Utc::now(),
        None,
    )
    .await
    .unwrap()
    .secret;
    let (status, _, text) = scrape_text(&app, Some(&read)).await;
    assert_eq!(status, 200, "{text}");
    Scrape::parse(&text);
    drop(app);

    let public = TestApp::start_with(&["--auth", "on", "--metrics-public"]).await;
    let (status, _, text) = scrape_text(&public, None).await;
    assert_eq!(status, 200, "{text}");
    assert!(Scrape::parse(&text).kind("jobsd_runs").is_some());
    assert_eq!(
        public.get("/api/v1/jobs").await.0,
        401,
        "only /metrics is opened"
    );
}
