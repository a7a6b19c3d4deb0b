//! Jobs firing: intervals keep their phase, one-shot jobs complete, misfire
//! grace after downtime, pause and resume, service-wide pause.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobsd::domain::{JobState, RunState, ScheduleKind};
use serde_json::{json, Value};

use crate::support::{assert_stays, wait_for, TestApp};

pub fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad time {v}: {e}"))
}

/// `ms` from now, to the millisecond (the database keeps microseconds).
pub fn soon(ms: i64) -> DateTime<Utc> {
    use chrono::SubsecRound;
    (Utc::now() + chrono::Duration::milliseconds(ms)).trunc_subsecs(3)
}

pub async fn create(app: &TestApp, spec: Value) -> Value {
    let (status, body) = app.post("/api/v1/jobs", spec).await;
    assert_eq!(status, 201, "{body}");
    body["job"].clone()
}

/// The job's runs, oldest first.
pub async fn runs_of(app: &TestApp, job_id: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/api/v1/jobs/{job_id}/runs?limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut runs = body["runs"].as_array().cloned().unwrap_or_default();
    runs.reverse();
    runs
}

/// Waits until the job has `n` runs in `state`; returns its runs.
pub async fn wait_runs(
    app: &TestApp,
    job_id: &str,
    state: &str,
    n: usize,
    deadline: Duration,
) -> Vec<Value> {
    wait_for(
        &format!("{n} {state} run(s) of {job_id}"),
        deadline,
        || async {
            let runs = runs_of(app, job_id).await;
            (runs.iter().filter(|r| r["state"] == state).count() >= n).then_some(runs)
        },
    )
    .await
}

pub async fn wait_job_state(app: &TestApp, job_id: &str, state: &str) -> Value {
    wait_for(
        &format!("job {job_id} {state}"),
        Duration::from_secs(20),
        || async {
            let (_, body) = app.get(&format!("/api/v1/jobs/{job_id}")).await;
            (body["job"]["state"] == state).then(|| body["job"].clone())
        },
    )
    .await
}

fn history_states(run: &Value) -> Vec<String> {
    run["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| e["to"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn interval_job_runs_at_its_phase() {
    let app = TestApp::start().await;
    let when = soon(1500);
    create(
        &app,
        json!({"job_id": "tick", "handler": "log", "kwargs": {"message": "tick"},
               "periodically": 1, "when": when.to_rfc3339()}),
    )
    .await;
    let runs = wait_runs(&app, "tick", "succeeded", 3, Duration::from_secs(15)).await;
    for (k, run) in runs.iter().take(3).enumerate() {
        let expected = when + chrono::Duration::seconds(k as i64);
        assert_eq!(time(&run["scheduled_for"]), expected, "phase kept: {run}");
        let lag = time(&run["started_at"]) - expected;
        assert!(lag >= chrono::Duration::zero(), "never early: {run}");
        assert!(
            lag < chrono::Duration::milliseconds(900),
            "started {lag} after due: {run}"
        );
        assert_eq!(run["trigger"], "schedule");
        assert_eq!(run["attempt"], 1);
        assert_eq!(run["result"], json!({"message": "tick"}));
        assert_eq!(history_states(run), vec!["queued", "running", "succeeded"]);
        assert!(run["instance"].is_string());
    }
    // The scheduler hands due runs to its own idle workers as it fires
    // them: queued and claimed in one statement, at one instant (the claim
    // loop may hold the slots at that moment now and then, not every time).
    assert!(
        runs.iter()
            .take(3)
            .any(|r| r["history"][0]["at"] == r["history"][1]["at"]),
        "{runs:?}"
    );
}

#[tokio::test]
async fn one_shot_job_runs_once_and_completes() {
    let app = TestApp::start().await;
    let (status, body) = app
        .post(
            "/api/v1/jobs/log?job_id=once",
            json!({"message": "just once"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let job = wait_job_state(&app, "once", "completed").await;
    assert_eq!(job["next_run_at"], Value::Null);
    assert_eq!(job["last_run"]["state"], "succeeded");
    assert_eq!(job["run_counts"], json!({"succeeded": 1}));
    assert_stays("a single run", Duration::from_millis(1500), || async {
        runs_of(&app, "once").await.len() == 1
    })
    .await;
}

#[tokio::test]
async fn a_one_shot_job_due_when_created_is_queued_by_the_creation_itself() {
    let app = TestApp::start().await;
    let when = soon(-200);
    create(
        &app,
        json!({"job_id": "now", "handler": "log", "kwargs": {"message": "now"},
               "when": when.to_rfc3339()}),
    )
    .await;
    // No waiting: the run exists as soon as the creation has answered.
    let runs = runs_of(&app, "now").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(time(&runs[0]["scheduled_for"]), when);
    assert_eq!(runs[0]["trigger"], "schedule");
    assert_eq!(runs[0]["history"][0]["to"], "queued");
    assert_eq!(runs[0]["history"][0]["reason"], "due when created");
    // Then claimed at once: by this replica while inserting it when its
    // workers had free slots (see the next test), else from the queue.
    let job = wait_job_state(&app, "now", "completed").await;
    assert_eq!(job["next_run_at"], Value::Null);
    let runs = wait_runs(&app, "now", "succeeded", 1, Duration::from_secs(10)).await;
    assert_eq!(
        history_states(&runs[0]),
        vec!["queued", "running", "succeeded"]
    );
}

/// A one-shot job due now, as the API would store it.
fn due_now(job_id: &str, lock_key: Option<&str>) -> jobsd::store::NewJob {
    let mut job = crate::support::failure_record(job_id, json!({"message": job_id}));
    job.handler = "log".into();
    job.schedule_kind = ScheduleKind::Once;
    job.state = JobState::Running;
    job.next_run_at = Some(job.start_at);
    job.lock_key = lock_key.map(str::to_string);
    job
}

#[tokio::test]
async fn creation_claims_due_runs_into_the_slots_offered_and_queues_the_rest() {
    let app = TestApp::start().await;
    let jobs = [
        due_now("a", None),
        due_now("keyed", Some("k")),
        due_now("b", None),
        due_now("c", None),
    ];
    let slots = jobsd::store::ClaimSlots {
        instance: "elsewhere".into(),
        lease_ms: 60_000,
        limit: 2,
    };
    let claimed = app.store.job_insert_many(&jobs, &slots).await.unwrap();
    let mut ids: Vec<&str> = claimed.iter().map(|r| r.job_id.as_str()).collect();
    ids.sort();
    // The first two without a lock key (a lock key needs the claim lock).
    assert_eq!(ids, vec!["a", "b"]);
    for run in &claimed {
        assert_eq!(run.state, RunState::Running);
        assert_eq!(run.attempt, 1);
        assert_eq!(run.instance.as_deref(), Some("elsewhere"));
        assert!(run.lease_expires_at.is_some() && run.started_at.is_some());
        let history = run.history.as_array().cloned().unwrap_or_default();
        let steps: Vec<(&Value, &Value, &Value)> = history
            .iter()
            .map(|h| (&h["from"], &h["to"], &h["reason"]))
            .collect();
        assert_eq!(
            steps,
            vec![
                (&Value::Null, &json!("queued"), &json!("due when created")),
                (
                    &json!("queued"),
                    &json!("running"),
                    &json!("claimed (attempt 1)")
                ),
            ]
        );
    }
    // The others were queued for any replica: this one's workers run them.
    wait_runs(&app, "keyed", "succeeded", 1, Duration::from_secs(10)).await;
    wait_runs(&app, "c", "succeeded", 1, Duration::from_secs(10)).await;
    // Nothing claimed elsewhere ran here.
    assert_eq!(runs_of(&app, "a").await[0]["state"], "running");
}

#[tokio::test]
async fn a_one_shot_job_created_past_its_grace_is_recorded_missed_not_run() {
    let app = TestApp::start().await;
    create(
        &app,
        json!({"job_id": "late", "handler": "log", "kwargs": {"message": "late"},
               "when": soon(-10_000).to_rfc3339(), "misfire_grace_time": "1s"}),
    )
    .await;
    let runs = wait_runs(&app, "late", "missed", 1, Duration::from_secs(10)).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["started_at"], Value::Null);
    wait_job_state(&app, "late", "completed").await;
}

#[tokio::test]
async fn pause_stops_firing_and_resume_restarts_from_now() {
    let app = TestApp::start().await;
    create(
        &app,
        json!({"job_id": "p", "handler": "log", "kwargs": {"message": "p"}, "periodically": "1s",
                        "when": Utc::now().to_rfc3339()}),
    )
    .await;
    wait_runs(&app, "p", "succeeded", 1, Duration::from_secs(10)).await;
    let (status, _) = app.put("/api/v1/jobs/p?state=paused").await;
    assert_eq!(status, 200);
    // A run already queued may still finish; after that nothing new starts.
    let settled = runs_of(&app, "p").await.len();
    assert_stays(
        "no new runs while paused",
        Duration::from_millis(2500),
        || async { runs_of(&app, "p").await.len() <= settled + 1 },
    )
    .await;
    let paused_count = runs_of(&app, "p").await.len();
    let resumed_at = Utc::now();
    app.put("/api/v1/jobs/p?state=running").await;
    let runs = wait_runs(
        &app,
        "p",
        "succeeded",
        paused_count + 1,
        Duration::from_secs(10),
    )
    .await;
    let newest = runs.last().unwrap();
    // Times missed while paused are not back-filled: the next run is after the resume.
    assert!(
        time(&newest["scheduled_for"]) >= resumed_at - chrono::Duration::seconds(1),
        "{newest}"
    );
}

#[tokio::test]
async fn service_pause_stops_all_firing() {
    let app = TestApp::start().await;
    app.put("/api/v1/service/state?state=paused").await;
    create(
        &app,
        json!({"job_id": "sp", "handler": "log", "kwargs": {"message": "x"}}),
    )
    .await;
    assert_stays(
        "no run while the service is paused",
        Duration::from_millis(2000),
        || async { runs_of(&app, "sp").await.is_empty() },
    )
    .await;
    app.put("/api/v1/service/state?state=running").await;
    wait_runs(&app, "sp", "succeeded", 1, Duration::from_secs(10)).await;
}

/// Stops the service, and waits (by database time) until `at` has passed.
async fn outage_until(app: TestApp, at: DateTime<Utc>) -> crate::support::TestDb {
    let store = app.store.clone();
    let db = app.stop().await;
    wait_for("the outage to last", Duration::from_secs(30), || async {
        (store.now().await.ok()? > at).then_some(())
    })
    .await;
    db
}

#[tokio::test]
async fn downtime_beyond_grace_records_missed_and_does_not_run() {
    let app = TestApp::start().await;
    let first = soon(2000);
    create(
        &app,
        json!({"job_id": "m", "handler": "log", "kwargs": {"message": "m"}, "periodically": "1h",
                        "when": first.to_rfc3339(), "misfire_grace_time": "1s"}),
    )
    .await;
    // Down over the due time and past its grace.
    let db = outage_until(app, first + chrono::Duration::seconds(2)).await;
    let app = TestApp::start_on(db, &[]).await;
    let runs = wait_runs(&app, "m", "missed", 1, Duration::from_secs(10)).await;
    assert_eq!(runs.len(), 1, "missed, not run: {runs:?}");
    let missed = &runs[0];
    assert_eq!(time(&missed["scheduled_for"]), first);
    assert_eq!(missed["started_at"], Value::Null);
    assert!(
        missed["error"]
            .as_str()
            .unwrap()
            .contains("misfire_grace_time"),
        "{missed}"
    );
    let (_, job) = app.get("/api/v1/jobs/m").await;
    assert_eq!(job["job"]["run_counts"], json!({"missed": 1}));
    assert_eq!(
        time(&job["job"]["next_run_at"]),
        first + chrono::Duration::hours(1)
    );
}

#[tokio::test]
async fn downtime_within_grace_runs_once_coalesced() {
    let app = TestApp::start().await;
    let first = soon(2000);
    create(
        &app,
        json!({"job_id": "c", "handler": "log", "kwargs": {"message": "c"}, "periodically": "1s",
                        "when": first.to_rfc3339(), "misfire_grace_time": "1h"}),
    )
    .await;
    // Pause before the first time so the outage covers several due times.
    let db = outage_until(app, first + chrono::Duration::milliseconds(3500)).await;
    let app = TestApp::start_on(db, &[]).await;
    let runs = wait_runs(&app, "c", "succeeded", 1, Duration::from_secs(10)).await;
    let catch_up = &runs[0];
    assert_eq!(catch_up["trigger"], "catch-up", "{runs:#?}");
    assert!(
        catch_up["history"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("coalesced"),
        "{catch_up}"
    );
    // The missed times became ONE run, for the newest of them.
    assert!(
        time(&catch_up["scheduled_for"]) >= first + chrono::Duration::seconds(3),
        "{runs:#?}"
    );
    let catch_ups = runs_of(&app, "c")
        .await
        .iter()
        .filter(|r| r["trigger"] == "catch-up")
        .count();
    assert_eq!(catch_ups, 1);
    assert!(runs.iter().all(|r| r["state"] != "missed"));
}

#[tokio::test]
async fn downtime_without_coalesce_runs_each_time() {
    let app = TestApp::start().await;
    let first = soon(2000);
    create(
        &app,
        json!({"job_id": "e", "handler": "log", "kwargs": {"message": "e"}, "periodically": "1s",
                        "when": first.to_rfc3339(), "coalesce": false}),
    )
    .await;
    let db = outage_until(app, first + chrono::Duration::milliseconds(2500)).await;
    let app = TestApp::start_on(db, &[]).await;
    let runs = wait_runs(&app, "e", "succeeded", 3, Duration::from_secs(10)).await;
    let scheduled: Vec<DateTime<Utc>> = runs
        .iter()
        .take(3)
        .map(|r| time(&r["scheduled_for"]))
        .collect();
    assert_eq!(
        scheduled,
        vec![
            first,
            first + chrono::Duration::seconds(1),
            first + chrono::Duration::seconds(2)
        ]
    );
}

#[tokio::test]
async fn a_job_slower_than_its_interval_skips_instead_of_piling_up() {
    let app = TestApp::start().await;
    create(
        &app,
        json!({"job_id": "slow", "handler": "sleep", "kwargs": {"seconds": 1.5},
                        "periodically": "500ms", "when": soon(0).to_rfc3339()}),
    )
    .await;
    let runs = wait_runs(&app, "slow", "missed", 2, Duration::from_secs(15)).await;
    let active = runs
        .iter()
        .filter(|r| r["state"] == "queued" || r["state"] == "running")
        .count();
    assert!(active <= 1, "max_instances 1 holds: {runs:#?}");
    let skipped = runs.iter().find(|r| r["state"] == "missed").unwrap();
    assert!(
        skipped["error"].as_str().unwrap().contains("max_instances"),
        "{skipped}"
    );
}

#[tokio::test]
async fn with_nothing_due_the_loops_have_nothing_to_wait_for() {
    let app = TestApp::start().await;
    // No jobs, no runs: None, not "due now" (which would spin the loops).
    assert_eq!(app.store.due_jobs_next().await.unwrap(), None);
    assert_eq!(app.store.run_next_queued_in().await.unwrap(), None);
    create(
        &app,
        json!({"job_id": "later", "handler": "log", "kwargs": {"message": "x"},
                        "when": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339()}),
    )
    .await;
    let (_, job) = app.get("/api/v1/jobs/later").await;
    let next = app
        .store
        .due_jobs_next()
        .await
        .unwrap()
        .expect("a job is scheduled");
    assert_eq!(next.at, time(&job["job"]["next_run_at"]));
    assert!(
        next.wait > Duration::from_secs(3500) && next.wait <= Duration::from_secs(3600),
        "{next:?}"
    );
    app.put("/api/v1/service/state?state=paused").await;
    assert_eq!(
        app.store.due_jobs_next().await.unwrap(),
        None,
        "paused: nothing to wake for"
    );
}
