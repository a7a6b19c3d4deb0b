//! Alerts (issue #13 §3) through a real jobsd: one test per alert type with
//! exact counts (once per episode) and recovery, closing on a change, the
//! job's `alerts` field in the API and YAML, bad settings, and two real
//! replicas raising each alert once.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use crate::support::{assert_error, assert_stays, wait_for, Replica, TestApp, TestDb};

/// A real HTTP server answering `/` with the status it is set to.
struct Target {
    address: String,
    status: Arc<AtomicU16>,
}

impl Target {
    async fn start(status: u16) -> Target {
        let status = Arc::new(AtomicU16::new(status));
        let shared = status.clone();
        let server = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let code = shared.load(Ordering::SeqCst);
                async move { (axum::http::StatusCode::from_u16(code).unwrap(), "answer") }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, server).await });
        Target { address, status }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

async fn events_of(app: &TestApp, job_id: &str, types: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!(
            "/api/v1/events?job_id={job_id}&type={types}&limit=500"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

fn count(events: &[Value], event_type: &str) -> usize {
    events.iter().filter(|e| e["type"] == event_type).count()
}

/// Waits until `job_id` has `n` events of `event_type`; returns its alerts.
async fn wait_alerts(app: &TestApp, job_id: &str, event_type: &str, n: usize) -> Vec<Value> {
    wait_for(
        &format!("{n} {event_type} of {job_id}"),
        Duration::from_secs(20),
        || async {
            let got = events_of(app, job_id, "alert.").await;
            (count(&got, event_type) >= n).then_some(got)
        },
    )
    .await
}

async fn create(app: &TestApp, spec: Value) {
    let (status, body) = app.post("/api/v1/jobs", spec).await;
    assert_eq!(status, 201, "{body}");
}

async fn alerts_open(app: &TestApp, job_id: &str) -> Value {
    let (status, body) = app.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(status, 200, "{body}");
    body["job"]["alerts_open"].clone()
}

/// Runs `job_id` once by hand and waits for the run to end in `state`;
/// returns its id.
async fn run_once(app: &TestApp, job_id: &str, state: &str) -> String {
    let run = app.run_by_hand(job_id, state).await;
    run["run_id"].as_str().unwrap().to_string()
}

/// A paused `http` job (it runs only by hand) calling `target`.
fn http_job(job_id: &str, target: &Target, alerts: Value) -> Value {
    json!({"job_id": job_id, "handler": "http", "kwargs": {"url": target.url(), "timeout": 5},
           "periodically": "1 day", "state": "paused", "alerts": alerts})
}

#[tokio::test]
async fn failing_fires_once_per_episode_and_the_next_success_recovers() {
    let app = TestApp::start().await;
    let target = Target::start(500).await;
    create(
        &app,
        http_job(
            "flaky",
            &target,
            json!({"failures_before_alert": 2, "alert_interval": 0}),
        ),
    )
    .await;
    run_once(&app, "flaky", "failed").await;
    let first = run_once(&app, "flaky", "failed").await;
    let got = wait_alerts(&app, "flaky", "alert.failing", 1).await;
    let failing = got.iter().find(|e| e["type"] == "alert.failing").unwrap();
    assert_eq!(failing["run_id"], first.as_str(), "{failing}");
    assert_eq!(failing["data"]["alert"], "failing");
    assert!(
        failing["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("2 failed runs in a row"),
        "{failing}"
    );
    for _ in 0..3 {
        run_once(&app, "flaky", "failed").await;
    }
    assert_eq!(alerts_open(&app, "flaky").await, json!(["failing"]));

    target.answer(200);
    run_once(&app, "flaky", "succeeded").await;
    // The feed is in order: once the recovery is there, every failure
    // before it has been looked at.
    let got = wait_alerts(&app, "flaky", "alert.recovered", 1).await;
    assert_eq!(count(&got, "alert.failing"), 1, "once per episode: {got:?}");
    assert_eq!(alerts_open(&app, "flaky").await, json!([]));

    // A second episode raises a second alert (no throttle here), and a
    // success with nothing open raises nothing.
    run_once(&app, "flaky", "succeeded").await;
    target.answer(503);
    run_once(&app, "flaky", "failed").await;
    run_once(&app, "flaky", "failed").await;
    let got = wait_alerts(&app, "flaky", "alert.failing", 2).await;
    assert_eq!(count(&got, "alert.recovered"), 1, "{got:?}");
    assert_eq!(count(&got, "alert.failing"), 2, "{got:?}");
    let metrics = app.metrics_text().await;
    for line in [
        "jobsd_alerts_total{kind=\"failing\"} 2",
        "jobsd_alerts_total{kind=\"recovered\"} 1",
        "jobsd_alerts_total{kind=\"dead_man\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn a_second_episode_within_the_alert_interval_is_throttled() {
    let app = TestApp::start().await;
    let target = Target::start(500).await;
    create(
        &app,
        http_job("noisy", &target, json!({"failures_before_alert": 1})),
    )
    .await;
    run_once(&app, "noisy", "failed").await;
    wait_alerts(&app, "noisy", "alert.failing", 1).await;
    target.answer(200);
    run_once(&app, "noisy", "succeeded").await;
    wait_alerts(&app, "noisy", "alert.recovered", 1).await;
    target.answer(500);
    run_once(&app, "noisy", "failed").await;
    target.answer(200);
    // The throttled episode opened nothing, so this success recovers
    // nothing: nothing marks the feed's passing, so the counts must hold.
    run_once(&app, "noisy", "succeeded").await;
    assert_stays(
        "one failing alert an hour",
        Duration::from_secs(2),
        || async {
            let got = events_of(&app, "noisy", "alert.").await;
            count(&got, "alert.failing") == 1 && count(&got, "alert.recovered") == 1
        },
    )
    .await;
    assert_eq!(alerts_open(&app, "noisy").await, json!([]));
}

#[tokio::test]
async fn a_change_closes_an_open_alert_without_a_recovery() {
    let app = TestApp::start().await;
    let target = Target::start(500).await;
    create(
        &app,
        http_job("changed", &target, json!({"failures_before_alert": 1})),
    )
    .await;
    run_once(&app, "changed", "failed").await;
    wait_alerts(&app, "changed", "alert.failing", 1).await;
    assert_eq!(alerts_open(&app, "changed").await, json!(["failing"]));
    let (status, body) = app
        .patch(
            "/api/v1/jobs/changed",
            json!({"description": "fixed the URL"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for("the alert closed", Duration::from_secs(20), || async {
        (alerts_open(&app, "changed").await == json!([])).then_some(())
    })
    .await;
    let got = events_of(&app, "changed", "alert.").await;
    assert_eq!(count(&got, "alert.recovered"), 0, "{got:?}");
}

#[tokio::test]
async fn a_time_missed_past_its_grace_raises_missed_not_overrun() {
    let app = TestApp::start().await;
    let late = (Utc::now() - chrono::Duration::seconds(30)).to_rfc3339();
    create(
        &app,
        json!({"job_id": "late", "handler": "log", "kwargs": {"message": "late"},
               "when": late, "misfire_grace_time": "1s"}),
    )
    .await;
    let got = wait_alerts(&app, "late", "alert.missed", 1).await;
    assert_eq!(count(&got, "alert.missed"), 1, "{got:?}");
    assert_eq!(count(&got, "alert.overrun"), 0, "{got:?}");
    let missed = got.iter().find(|e| e["type"] == "alert.missed").unwrap();
    assert!(missed["run_id"].is_string(), "the missed run: {missed}");
    assert_eq!(alerts_open(&app, "late").await, json!(["missed"]));
}

#[tokio::test]
async fn a_run_still_running_at_the_next_time_raises_overrun_once_never_missed() {
    let app = TestApp::start().await;
    create(
        &app,
        json!({"job_id": "slow", "handler": "sleep", "kwargs": {"seconds": 8},
               "periodically": "1s", "max_instances": 1}),
    )
    .await;
    let got = wait_alerts(&app, "slow", "alert.overrun", 1).await;
    let overrun = got.iter().find(|e| e["type"] == "alert.overrun").unwrap();
    assert!(
        overrun["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("still running"),
        "{overrun}"
    );
    assert_eq!(alerts_open(&app, "slow").await, json!(["overrun"]));
    // More times come and go while the run sleeps: one alert an hour, and
    // a time skipped for max_instances is never also a missed alert.
    wait_for("two skipped times", Duration::from_secs(20), || async {
        let skips = events_of(&app, "slow", "run.missed,run.waiting").await;
        (skips.len() >= 2).then_some(())
    })
    .await;
    assert_stays("one overrun, no missed", Duration::from_secs(2), || async {
        let got = events_of(&app, "slow", "alert.").await;
        count(&got, "alert.overrun") == 1 && count(&got, "alert.missed") == 0
    })
    .await;
}

#[tokio::test]
async fn a_run_longer_than_max_duration_raises_overrun_once() {
    let app = TestApp::start_with(&["--alert-check-interval", "200ms"]).await;
    create(
        &app,
        json!({"job_id": "long", "handler": "sleep", "kwargs": {"seconds": 4},
               "periodically": "1 day", "state": "paused",
               "alerts": {"max_duration": "1s"}}),
    )
    .await;
    let (status, body) = app.post("/api/v1/jobs/long/run", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let run_id = body["run"]["run_id"].as_str().unwrap().to_string();
    let got = wait_alerts(&app, "long", "alert.overrun", 1).await;
    let overrun = got.iter().find(|e| e["type"] == "alert.overrun").unwrap();
    assert_eq!(overrun["run_id"], run_id.as_str(), "{overrun}");
    assert!(
        overrun["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("max_duration"),
        "{overrun}"
    );
    // Checked five times a second while it runs: still one alert.
    assert_stays("one overrun", Duration::from_secs(1), || async {
        count(&events_of(&app, "long", "alert.").await, "alert.overrun") == 1
    })
    .await;
    // Its success closes it.
    let got = wait_alerts(&app, "long", "alert.recovered", 1).await;
    assert_eq!(count(&got, "alert.overrun"), 1, "{got:?}");
}

#[tokio::test]
async fn no_success_within_the_window_raises_dead_man_once_and_a_success_recovers() {
    let app = TestApp::start_with(&["--alert-check-interval", "200ms"]).await;
    // Running, but its next time is a day away: nothing succeeds.
    create(
        &app,
        json!({"job_id": "daily", "handler": "log", "kwargs": {"message": "alive"},
               "periodically": "1 day", "alerts": {"expect_success_within": "1s"}}),
    )
    .await;
    let got = wait_alerts(&app, "daily", "alert.dead_man", 1).await;
    let dead = got.iter().find(|e| e["type"] == "alert.dead_man").unwrap();
    assert_eq!(
        dead["data"]["job"]["alerts_open"],
        json!(["dead_man"]),
        "{dead}"
    );
    assert_stays("one dead man's alert", Duration::from_secs(1), || async {
        count(&events_of(&app, "daily", "alert.").await, "alert.dead_man") == 1
    })
    .await;
    run_once(&app, "daily", "succeeded").await;
    let got = wait_alerts(&app, "daily", "alert.recovered", 1).await;
    assert_eq!(count(&got, "alert.dead_man"), 1, "{got:?}");
    assert_eq!(alerts_open(&app, "daily").await, json!([]));
}

#[tokio::test]
async fn the_service_defaults_apply_to_jobs_without_their_own() {
    let app = TestApp::start_with(&["--failures-before-alert", "1"]).await;
    let target = Target::start(500).await;
    create(&app, http_job("plain", &target, json!(null))).await;
    let (_, body) = app.get("/api/v1/jobs/plain").await;
    assert!(body["job"].get("alerts").is_none(), "{body}");
    run_once(&app, "plain", "failed").await;
    wait_alerts(&app, "plain", "alert.failing", 1).await;
    // `0` turns the default off for one job.
    create(
        &app,
        http_job("quiet", &target, json!({"failures_before_alert": 0})),
    )
    .await;
    let (_, body) = app.get("/api/v1/jobs/quiet").await;
    assert_eq!(body["job"]["alerts"], json!({"failures_before_alert": 0}));
    run_once(&app, "quiet", "failed").await;
    run_once(&app, "quiet", "failed").await;
    // `plain` fails once more after `quiet`: its events come later in the
    // feed, so once they are looked at, `quiet`'s have been too.
    target.answer(200);
    run_once(&app, "plain", "succeeded").await;
    wait_alerts(&app, "plain", "alert.recovered", 1).await;
    assert!(events_of(&app, "quiet", "alert.").await.is_empty());
}

#[tokio::test]
async fn alert_settings_round_trip_through_the_api_and_a_yaml_file() {
    let dir = std::env::temp_dir().join(format!("jobsd-alerts-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("nightly.yaml"),
        "job_id: nightly\nhandler: log\nkwargs: {message: night}\ncron: '0 3 * * *'\n\
         alerts:\n  failures_before_alert: 2\n  expect_success_within: 26h\n",
    )
    .unwrap();
    let path = dir.to_string_lossy().to_string();
    let app = TestApp::start_with(&["--default-jobs-dir", &path]).await;
    let job = wait_for("the file's job", Duration::from_secs(20), || async {
        let (status, body) = app.get("/api/v1/jobs/nightly").await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(
        job["job"]["alerts"],
        json!({"failures_before_alert": 2, "expect_success_within": "1 day, 2:00:00"})
    );
    assert_eq!(job["job"]["alerts_open"], json!([]));

    create(
        &app,
        json!({"job_id": "api", "handler": "log", "kwargs": {"message": "x"},
               "periodically": "1h", "alerts": {"max_duration": "10m", "alert_interval": "30m"}}),
    )
    .await;
    let (status, body) = app
        .patch(
            "/api/v1/jobs/api",
            json!({"alerts": {"max_duration": "5m"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["job"]["alerts"], json!({"max_duration": "0:05:00"}));
    let (status, body) = app.patch("/api/v1/jobs/api", json!({"alerts": null})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["job"].get("alerts").is_none(), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_alert_settings_are_refused_naming_the_setting_and_store_nothing() {
    let app = TestApp::start().await;
    for (alerts, needle) in [
        (
            json!({"failures_before_alert": -1}),
            "alerts/failures_before_alert",
        ),
        (
            json!({"failures_before_alert": "many"}),
            "alerts/failures_before_alert",
        ),
        (
            json!({"expect_success_within": "soon"}),
            "alerts/expect_success_within",
        ),
        (
            json!({"max_duration": {"minutes": 5}}),
            "alerts/max_duration",
        ),
        (json!({"failures": 3}), "failures"),
        (json!([1, 2]), "alerts"),
    ] {
        let response = app
            .post(
                "/api/v1/jobs",
                json!({"job_id": "bad", "handler": "log", "kwargs": {"message": "x"},
                       "periodically": "1h", "alerts": alerts}),
            )
            .await;
        assert_error(&response, 400, needle);
    }
    let (status, _) = app.get("/api/v1/jobs/bad").await;
    assert_eq!(status, 404, "nothing was stored");
    // And the `alert.` filter group is known to the events API.
    let (status, body) = app.get("/api/v1/events?type=alert.").await;
    assert_eq!(status, 200, "{body}");
}

/// Two real replicas follow the same events: each alert is raised once.
/// PostgreSQL only (the embedded store is one process), whatever
/// JOBSD_TEST_BACKEND says.
#[tokio::test]
async fn two_replicas_raise_each_alert_once() {
    let db = TestDb::postgres();
    let target = Target::start(500).await;
    let flags = ["--failures-before-alert", "1"];
    let a = Replica::spawn(&db, "alerts-a", &flags).await;
    let b = Replica::spawn(&db, "alerts-b", &flags).await;
    for i in 0..5 {
        let (status, body) = a
            .post(
                "/api/v1/jobs",
                json!({"job_id": format!("j{i}"), "handler": "http",
                       "kwargs": {"url": target.url(), "timeout": 5},
                       "periodically": "1s"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // Each job fails every second: one failing alert each (an episode
    // lasts until a success), and no replica raises one the other did.
    // (A time that comes while the last run is still queued is an overrun:
    // at most one an hour per job too.)
    let alerts = wait_for("an alert per job", Duration::from_secs(30), || async {
        let (_, body) = b.get("/api/v1/events?type=alert.failing&limit=500").await;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        (events.len() >= 5).then_some(events)
    })
    .await;
    let (_, body) = a.get("/api/v1/events?type=run.failed&limit=500").await;
    assert!(body["events"].as_array().map_or(0, Vec::len) >= 5, "{body}");
    let mut jobs: Vec<String> = alerts
        .iter()
        .map(|e| e["job_id"].as_str().unwrap().to_string())
        .collect();
    jobs.sort();
    assert_eq!(jobs, ["j0", "j1", "j2", "j3", "j4"], "{alerts:?}");
    let window = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < window {
        let (_, body) = a.get("/api/v1/events?type=alert.&limit=500").await;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        let mut raised: Vec<String> = events
            .iter()
            .map(|e| format!("{} {}", e["job_id"], e["type"]))
            .collect();
        raised.sort();
        let mut once = raised.clone();
        once.dedup();
        assert_eq!(raised, once, "each alert once per job and kind");
        assert_eq!(
            raised
                .iter()
                .filter(|r| r.ends_with("\"alert.failing\""))
                .count(),
            5,
            "{raised:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
