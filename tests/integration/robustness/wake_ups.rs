//! Wake-ups: a change to a job whose id looks like an old payload still
//! wakes the schedulers (bug 11).

use std::time::Duration;

use serde_json::json;

use crate::scheduling::{create, soon, time, wait_runs};
use crate::support::TestApp;

// --- Bug 11: changing a job named `none`, or with a numeric id, did not
// wake the schedulers (the job id was read as the wake-up's hint).

/// Ids the old payload read as a hint: "nothing fires", and a fire time
/// later than anything planned.
const PAYLOAD_LIKE_IDS: [&str; 2] = ["none", "99999999999999"];

/// A service whose scheduler sleeps long, with a job planned an hour
/// ahead, so only a wake-up can make a change fire early.
async fn sleepy_service() -> TestApp {
    let app = TestApp::start_with(&["--poll-interval", "60s"]).await;
    create(
        &app,
        json!({"job_id": "anchor", "handler": "log", "kwargs": {"message": "a"},
               "periodically": "1 hour"}),
    )
    .await;
    app
}

#[tokio::test]
async fn bug11_resuming_a_job_whose_id_looks_like_a_wake_up_hint_wakes_the_scheduler() {
    let app = sleepy_service().await;
    for id in PAYLOAD_LIKE_IDS {
        create(
            &app,
            json!({"job_id": id, "handler": "log", "kwargs": {"message": id},
                   "state": "paused"}),
        )
        .await;
        let (status, body) = app.put(&format!("/api/v1/jobs/{id}?state=running")).await;
        assert_eq!(status, 200, "{body}");
        wait_runs(&app, id, "succeeded", 1, Duration::from_secs(3)).await;
    }
}

#[tokio::test]
async fn bug11_patching_the_time_of_a_job_whose_id_looks_like_a_wake_up_hint_wakes_the_scheduler() {
    let app = sleepy_service().await;
    for id in PAYLOAD_LIKE_IDS {
        create(
            &app,
            json!({"job_id": id, "handler": "log", "kwargs": {"message": id},
                   "when": soon(86_400_000).to_rfc3339()}),
        )
        .await;
        let when = soon(1000);
        let (status, body) = app
            .patch(
                &format!("/api/v1/jobs/{id}"),
                json!({"when": when.to_rfc3339()}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let runs = wait_runs(&app, id, "succeeded", 1, Duration::from_secs(4)).await;
        let lag = time(&runs[0]["started_at"]) - when;
        assert!(
            lag < chrono::Duration::seconds(3),
            "{id} started {lag} after its time"
        );
    }
}
