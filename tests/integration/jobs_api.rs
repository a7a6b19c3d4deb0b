//! The jobs API: create in both forms, every field format, list, read,
//! pause/resume, patch, delete, failure-record cleanup.

use chrono::{DateTime, Duration, Utc};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{assert_error, wait_for, TestApp};
use std::time::Duration as StdDuration;

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad time {v}: {e}"))
}

/// The original service's curl form: query params, the body as kwargs, and
/// curl's `-d` form content type.
#[tokio::test]
async fn create_with_handler_path_like_curl() {
    let app = TestApp::start().await;
    let before = Utc::now();
    let resp = app
        .client
        .post(app.url("/api/v1/jobs/log?state=running&periodically=1%20week"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"message":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    let job = &body["job"];
    assert_eq!(job["handler"], "log");
    assert_eq!(job["kwargs"], json!({"message": "hi"}));
    assert_eq!(job["periodically"], "7 days, 0:00:00");
    assert_eq!(job["state"], "running");
    assert_eq!(job["source"], "api");
    // A generated id is a UUIDv7: time-ordered, so index inserts append.
    let generated = uuid::Uuid::parse_str(job["job_id"].as_str().unwrap()).unwrap();
    assert_eq!(generated.get_version_num(), 7, "{generated}");
    // First run one interval after creation (APScheduler's rule).
    let next = time(&job["next_run_at"]);
    assert!(
        next >= before + Duration::weeks(1) - Duration::seconds(5),
        "{next}"
    );
    assert!(
        next <= Utc::now() + Duration::weeks(1) + Duration::seconds(5),
        "{next}"
    );

    let (status, got) = app
        .get(&format!("/api/v1/jobs/{}", job["job_id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["job"]["kwargs"], job["kwargs"]);
}

#[tokio::test]
async fn create_from_json_body_with_every_field() {
    let app = TestApp::start().await;
    let (status, body) = app
        .post(
            "/api/v1/jobs",
            json!({
                "job_id": "report",
                "handler": "http",
                "kwargs": {"url": "http://127.0.0.1:9/report", "method": "POST"},
                "cron": "30 2 * * *",
                "timezone": "Europe/Berlin",
                "when": "2030-01-01",
                "misfire_grace_time": "10m",
                "coalesce": false,
                "max_instances": 2,
                "lock_key": "reports",
                "timeout": "30s",
                "max_retries": 3,
                "retry_backoff": "2s",
                "state": "active",
                "description": "nightly report",
                "tags": ["reports", "nightly"]
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let job = &body["job"];
    assert_eq!(job["job_id"], "report");
    assert_eq!(job["cron"], "30 2 * * *");
    assert_eq!(job["timezone"], "Europe/Berlin");
    // 02:30 in Berlin in winter is 01:30 UTC.
    assert_eq!(
        time(&job["next_run_at"]),
        "2030-01-01T01:30:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    assert_eq!(job["misfire_grace_time"], "0:10:00");
    assert_eq!(job["coalesce"], false);
    assert_eq!(job["max_instances"], 2);
    assert_eq!(job["lock_key"], "reports");
    assert_eq!(job["timeout"], "0:00:30");
    assert_eq!(job["max_retries"], 3);
    assert_eq!(job["retry_backoff"], "0:00:02");
    assert_eq!(job["state"], "running");
    assert_eq!(job["description"], "nightly report");
    assert_eq!(job["tags"], json!(["reports", "nightly"]));
    assert_eq!(job["last_run"], Value::Null);
    assert_eq!(job["run_counts"], json!({}));
}

#[tokio::test]
async fn every_periodically_form_is_accepted() {
    let app = TestApp::start().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!("1 week"), "7 days, 0:00:00"),
        (json!("5:00:00"), "5:00:00"),
        (json!("32m"), "0:32:00"),
        (json!("1 day, 0:00:00"), "1 day, 0:00:00"),
        (json!("365 days"), "365 days, 0:00:00"),
        (json!("PT5M"), "0:05:00"),
        (json!(90), "0:01:30"),
        (json!("90"), "0:01:30"),
    ];
    for (i, (input, expected)) in cases.iter().enumerate() {
        let (status, body) = app
            .post(
                "/api/v1/jobs",
                json!({"job_id": format!("p{i}"), "handler": "log", "kwargs": {"message": "x"},
                       "periodically": input, "when": "2030-01-01T00:00:00Z"}),
            )
            .await;
        assert_eq!(status, 201, "{input}: {body}");
        assert_eq!(body["job"]["periodically"], *expected, "{input}");
        // `when` in the future: the first run is at `when`, phase anchored there.
        assert_eq!(
            body["job"]["next_run_at"], "2030-01-01T00:00:00Z",
            "{input}"
        );
    }
    // The query-string form takes the same grammar.
    let (status, body) = app
        .post(
            "/api/v1/jobs/log?periodically=1%20day%2C%200%3A00%3A00&job_id=q",
            json!({"message": "x"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["job"]["periodically"], "1 day, 0:00:00");
}

#[tokio::test]
async fn interval_in_the_past_keeps_its_phase() {
    let app = TestApp::start().await;
    let (status, body) = app
        .post(
            "/api/v1/jobs",
            json!({"handler": "log", "kwargs": {"message": "x"}, "periodically": "1h",
                   "when": "2020-01-01T00:17:00Z"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let next = time(&body["job"]["next_run_at"]);
    assert!(next >= Utc::now() - Duration::seconds(5));
    assert!(next <= Utc::now() + Duration::hours(1));
    assert_eq!(
        next.format("%M:%S").to_string(),
        "17:00",
        "phase kept: {next}"
    );
}

#[tokio::test]
async fn cron_forms_and_aliases() {
    let app = TestApp::start().await;
    let cases = [
        ("0 3 * * *", "UTC", "2030-01-01T03:00:00Z"),
        ("15 0 3 * * *", "UTC", "2030-01-01T03:00:15Z"),
        ("@hourly", "UTC", "2030-01-01T00:00:00Z"),
        ("@daily", "America/New_York", "2030-01-01T05:00:00Z"),
        ("0 9 * * 1", "UTC", "2030-01-07T09:00:00Z"),
    ];
    for (i, (cron, tz, expected)) in cases.iter().enumerate() {
        let (status, body) = app
            .post(
                "/api/v1/jobs",
                json!({"job_id": format!("c{i}"), "handler": "log", "kwargs": {"message": "x"},
                       "cron": cron, "timezone": tz, "when": "2030-01-01T00:00:00Z"}),
            )
            .await;
        assert_eq!(status, 201, "{cron}: {body}");
        assert_eq!(body["job"]["next_run_at"], *expected, "{cron} in {tz}");
    }
}

#[tokio::test]
async fn when_forms_are_utc_unless_zoned() {
    let app = TestApp::start().await;
    let cases = [
        ("2030-02-20T14:56:00+02:00", "2030-02-20T12:56:00Z"),
        ("2030-02-20T14:56:00Z", "2030-02-20T14:56:00Z"),
        ("2030-02-20T14:56:00", "2030-02-20T14:56:00Z"),
        ("2030-02-20 14:56:00", "2030-02-20T14:56:00Z"),
        ("2030-02-20 14:56", "2030-02-20T14:56:00Z"),
        ("2030-02-20", "2030-02-20T00:00:00Z"),
    ];
    for (i, (when, expected)) in cases.iter().enumerate() {
        let path = format!("/api/v1/jobs/log?job_id=w{i}&when={}", urlencode(when));
        let (status, body) = app.post(&path, json!({"message": "once"})).await;
        assert_eq!(status, 201, "{when}: {body}");
        assert_eq!(body["job"]["when"], *expected, "{when}");
        assert_eq!(body["job"]["next_run_at"], *expected, "{when}");
        assert_eq!(body["job"]["periodically"], Value::Null);
    }
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B")
        .replace(' ', "%20")
        .replace(':', "%3A")
}

#[tokio::test]
async fn misfire_grace_time_forms() {
    let app = TestApp::start().await;
    for (i, (grace, expected)) in [
        (json!("365 days"), json!("365 days, 0:00:00")),
        (json!(30), json!("0:00:30")),
        (json!("PT1H"), json!("1:00:00")),
        (Value::Null, Value::Null),
    ]
    .iter()
    .enumerate()
    {
        let (status, body) = app
            .post(
                "/api/v1/jobs",
                json!({"job_id": format!("g{i}"), "handler": "log", "kwargs": {"message": "x"},
                       "periodically": "1h", "misfire_grace_time": grace}),
            )
            .await;
        assert_eq!(status, 201, "{grace}: {body}");
        assert_eq!(body["job"]["misfire_grace_time"], *expected);
    }
}

async fn create_log_job(app: &TestApp, job_id: &str, extra: Value) -> Value {
    let mut spec = json!({"job_id": job_id, "handler": "log", "kwargs": {"message": job_id}, "periodically": "1h"});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    let (status, body) = app.post("/api/v1/jobs", spec).await;
    assert_eq!(status, 201, "{body}");
    body["job"].clone()
}

#[tokio::test]
async fn list_filters_and_pages() {
    let app = TestApp::start().await;
    for i in 0..5 {
        create_log_job(&app, &format!("job-{i}"), json!({})).await;
    }
    create_log_job(&app, "paused-one", json!({"state": "paused"})).await;
    let (status, body) = app
        .post("/api/v1/jobs", json!({"job_id": "sleeper", "handler": "sleep", "kwargs": {"seconds": 1}, "periodically": "1h"}))
        .await;
    assert_eq!(status, 201, "{body}");

    let (status, body) = app.get("/api/v1/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(body["jobs_count"], 7);
    assert_eq!(body["jobs"].as_array().unwrap().len(), 7);

    let (_, body) = app.get("/api/v1/jobs?handler=sleep").await;
    assert_eq!(body["jobs_count"], 1);
    assert_eq!(body["jobs"][0]["job_id"], "sleeper");

    let (_, body) = app.get("/api/v1/jobs?state=paused").await;
    assert_eq!(body["jobs_count"], 1);
    assert_eq!(body["jobs"][0]["job_id"], "paused-one");

    let (_, page1) = app.get("/api/v1/jobs?limit=3&offset=0").await;
    let (_, page3) = app.get("/api/v1/jobs?limit=3&offset=6").await;
    assert_eq!(page1["jobs"].as_array().unwrap().len(), 3);
    assert_eq!(page1["jobs_count"], 7);
    assert_eq!(page3["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page1["jobs"][0]["job_id"], "job-0");

    let (_, user) = app.get("/api/v1/jobs?job_type=user").await;
    assert_eq!(user["jobs_count"], 7);
    let (_, failed) = app.get("/api/v1/jobs?job_type=failed").await;
    assert_eq!(failed["jobs_count"], 0);
}

#[tokio::test]
async fn get_unknown_job_is_404() {
    let app = TestApp::start().await;
    assert_error(&app.get("/api/v1/jobs/nope").await, 404, "nope");
}

#[tokio::test]
async fn pause_and_resume() {
    let app = TestApp::start().await;
    let job = create_log_job(
        &app,
        "pr",
        json!({"when": "2020-01-01T00:00:00Z", "periodically": "1h"}),
    )
    .await;
    assert!(job["next_run_at"].is_string());

    let (status, body) = app.put("/api/v1/jobs/pr?state=paused").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["job"]["state"], "paused");
    assert_eq!(body["job"]["next_run_at"], Value::Null);

    let (status, body) = app.put("/api/v1/jobs/pr?state=running").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["job"]["state"], "running");
    let next = time(&body["job"]["next_run_at"]);
    assert!(next >= Utc::now() - Duration::seconds(5) && next <= Utc::now() + Duration::hours(1));
    assert_eq!(
        next.format("%M:%S").to_string(),
        "00:00",
        "phase kept: {next}"
    );

    assert_error(
        &app.put("/api/v1/jobs/pr?state=sleeping").await,
        400,
        "state",
    );
    assert_error(&app.put("/api/v1/jobs/pr").await, 400, "state");
    assert_error(
        &app.put("/api/v1/jobs/missing?state=paused").await,
        404,
        "missing",
    );
}

#[tokio::test]
async fn patch_keeps_timing_unless_the_schedule_changes() {
    let app = TestApp::start().await;
    let job = create_log_job(&app, "pt", json!({"when": "2030-01-01T00:00:00Z"})).await;
    let (status, body) = app
        .patch(
            "/api/v1/jobs/pt",
            json!({"kwargs": {"message": "changed"}, "description": "d", "max_retries": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["job"]["kwargs"]["message"], "changed");
    assert_eq!(body["job"]["max_retries"], 2);
    assert_eq!(body["job"]["next_run_at"], job["next_run_at"]);
    assert_eq!(body["job"]["periodically"], "1:00:00");

    let (status, body) = app
        .patch("/api/v1/jobs/pt", json!({"when": "2031-01-01T00:00:00Z"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["job"]["next_run_at"], "2031-01-01T00:00:00Z");

    // Switch from an interval to cron: `periodically: null` clears the interval.
    let (status, body) = app
        .patch(
            "/api/v1/jobs/pt",
            json!({"periodically": null, "cron": "0 5 * * *"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["job"]["cron"], "0 5 * * *");
    assert_eq!(body["job"]["next_run_at"], "2031-01-01T05:00:00Z");

    // Invalid changes answer 400 and change nothing.
    assert_error(
        &app.patch("/api/v1/jobs/pt", json!({"cron": "61 * * * *"}))
            .await,
        400,
        "cron",
    );
    assert_error(
        &app.patch("/api/v1/jobs/pt", json!({"kwargs": {}})).await,
        400,
        "message",
    );
    assert_error(
        &app.patch("/api/v1/jobs/pt", json!({"job_id": "other"}))
            .await,
        400,
        "job_id",
    );
    assert_error(
        &app.patch("/api/v1/jobs/pt", json!({"colour": "red"})).await,
        400,
        "colour",
    );
    let (_, after) = app.get("/api/v1/jobs/pt").await;
    assert_eq!(after["job"]["cron"], "0 5 * * *");
    assert_eq!(after["job"]["kwargs"]["message"], "changed");
    assert_error(
        &app.patch("/api/v1/jobs/missing", json!({})).await,
        404,
        "missing",
    );
}

#[tokio::test]
async fn delete_removes_the_job_and_its_runs() {
    let app = TestApp::start().await;
    create_log_job(&app, "gone", json!({})).await;
    create_log_job(&app, "stays", json!({})).await;
    let (status, run) = app.post("/api/v1/jobs/gone/run", json!({})).await;
    assert_eq!(status, 201, "{run}");
    let run_id = run["run"]["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (status, _) = app.get(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(status, 200, "the run exists before the delete");
    let (status, _) = app.post("/api/v1/jobs/stays/run", json!({})).await;
    assert_eq!(status, 201);
    let (status, body) = app.delete("/api/v1/jobs/gone").await;
    assert_eq!(status, 200, "the original service's answer, not 204");
    assert_eq!(body, json!({"removed": ["gone"]}));
    assert_error(&app.get("/api/v1/jobs/gone").await, 404, "gone");
    // A run still executing when its job is deleted is kept (holding its
    // lock key) until its handler has stopped, then removed: the run may be
    // mid-flight here, but it never outlives its outcome.
    wait_for(
        "the deleted job's run to be removed",
        StdDuration::from_secs(10),
        || async { (app.get(&format!("/api/v1/runs/{run_id}")).await.0 == 404).then_some(()) },
    )
    .await;
    let (_, runs) = app.get("/api/v1/runs?limit=100").await;
    let job_ids: Vec<&Value> = runs["runs"]
        .as_array()
        .map(|r| r.iter().map(|r| &r["job_id"]).collect())
        .unwrap_or_default();
    assert_eq!(job_ids, vec!["stays"], "only the other job's run is left");
    assert_error(&app.delete("/api/v1/jobs/gone").await, 404, "gone");
}

#[tokio::test]
async fn clean_failed_removes_only_failure_records() {
    let app = TestApp::start().await;
    create_log_job(&app, "keep", json!({})).await;
    let record = crate::support::failure_record(
        "failure-1",
        json!({"exc_str": "boom", "failed_job_id": "keep"}),
    );
    app.store.job_insert(&record, "test").await.unwrap();

    let (_, failed) = app.get("/api/v1/jobs?job_type=failed").await;
    assert_eq!(failed["jobs_count"], 1);
    assert_eq!(failed["jobs"][0]["job_id"], "failure-1");
    assert_eq!(failed["jobs"][0]["state"], "paused");
    let (_, user) = app.get("/api/v1/jobs?job_type=user").await;
    assert_eq!(user["jobs_count"], 1);
    assert_error(
        &app.put("/api/v1/jobs/failure-1?state=running").await,
        409,
        "failure record",
    );

    let (status, body) = app
        .call(Method::DELETE, "/api/v1/jobs/clean-failed", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["removed"], json!(["failure-1"]), "{body}");
    assert_eq!(body["deleted"], 1);
    let (_, all) = app.get("/api/v1/jobs").await;
    assert_eq!(all["jobs_count"], 1);
    assert_eq!(all["jobs"][0]["job_id"], "keep");
}

#[tokio::test]
async fn bulk_create_is_all_or_nothing() {
    let app = TestApp::start().await;
    let job = |id: &str| json!({"job_id": id, "handler": "log", "kwargs": {"message": id}, "periodically": "1h"});
    let (status, body) = app
        .post(
            "/api/v1/jobs/bulk",
            json!({"jobs": [job("b1"), job("b2"), job("b3")]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["created"], 3);
    assert_eq!(body["job_ids"], json!(["b1", "b2", "b3"]));
    let (_, b2) = app.get("/api/v1/jobs/b2").await;
    assert_eq!(b2["job"]["kwargs"]["message"], "b2");
    assert!(b2["job"]["next_run_at"].is_string());

    let mut bad = job("b5");
    bad["periodically"] = json!("often");
    let resp = app
        .post("/api/v1/jobs/bulk", json!({"jobs": [job("b4"), bad]}))
        .await;
    assert_error(&resp, 400, "jobs[1].periodically");
    assert_eq!(resp.1["problems"][0]["field"], "jobs[1].periodically");
    assert_error(
        &app.post("/api/v1/jobs/bulk", json!({"jobs": [job("b6"), job("b6")]}))
            .await,
        400,
        "more than once",
    );
    assert_error(
        &app.post("/api/v1/jobs/bulk", json!({"jobs": [job("b7"), job("b1")]}))
            .await,
        409,
        "already exists",
    );
    assert_error(
        &app.post("/api/v1/jobs/bulk", json!({"jobs": []})).await,
        400,
        "jobs",
    );
    assert_error(
        &app.post("/api/v1/jobs/bulk", json!({"job": []})).await,
        400,
        "job",
    );
    assert_error(
        &app.post("/api/v1/jobs", job("bulk")).await,
        400,
        "reserved",
    );
    let (_, all) = app.get("/api/v1/jobs").await;
    assert_eq!(all["jobs_count"], 3, "failed requests created nothing");
}
