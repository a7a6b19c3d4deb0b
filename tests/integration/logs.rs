//! Structured logs (issue #14 §2): with `--log-format json`, every line
//! about a run carries the run's ids, attempt, instance and handler, and
//! every line about a request its request id, which comes back as
//! `x-request-id`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{wait_for, Replica, TestDb};

/// The JSON log lines of `replica` whose message is `message`.
fn lines_saying(replica: &Replica, message: &str) -> Vec<Value> {
    replica
        .log_lines()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == message)
        .collect()
}

/// The fields of the span named `name` that `line` was logged in.
fn span<'a>(line: &'a Value, name: &str) -> &'a Value {
    line["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("a {name} span in {line}"))
}

#[tokio::test]
async fn json_lines_carry_the_run_and_the_request_they_are_about() {
    let db = TestDb::new();
    let replica = Replica::spawn(&db, "logger-1", &["--log-format", "json"]).await;
    let client = reqwest::Client::new();

    // A request id the caller sends names the request and comes back.
    let response = client
        .post(format!("{}/api/v1/jobs", replica.base))
        .header("x-request-id", "req-from-caller-42")
        .json(&json!({"job_id": "said", "handler": "log",
                      "kwargs": {"message": "the run speaks"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], "req-from-caller-42");

    let created = wait_for(
        "the creation is logged",
        Duration::from_secs(10),
        || async { lines_saying(&replica, "job created").into_iter().next() },
    )
    .await;
    assert_eq!(
        span(&created, "request")["request_id"],
        "req-from-caller-42",
        "{created}"
    );

    // A line the handler logs, inside its run.
    let said = wait_for("the run logs", Duration::from_secs(10), || async {
        lines_saying(&replica, "the run speaks").into_iter().next()
    })
    .await;
    let run = span(&said, "run");
    let (status, runs) = replica.get("/api/v1/jobs/said/runs").await;
    assert_eq!(status, 200, "{runs}");
    assert_eq!(run["run_id"], runs["runs"][0]["run_id"], "{said}");
    assert_eq!(run["job_id"], "said");
    assert_eq!(run["handler"], "log");
    assert_eq!(run["attempt"], 1);
    assert_eq!(run["instance"], "logger-1");

    // Without one, a new id is made for each request.
    let response = client
        .get(format!("{}/api/v1/jobs/said", replica.base))
        .send()
        .await
        .unwrap();
    let made = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
    let again = client
        .get(format!("{}/api/v1/jobs/said", replica.base))
        .send()
        .await
        .unwrap();
    assert_ne!(again.headers()["x-request-id"].to_str().unwrap(), made);
}
