//! Store-level regression tests: attempt fencing (bug 5), a rescue keeps a
//! requested cancel (bug 7), runs waiting for a slot (bug 12). They drive
//! `jobsd::store::Store` (and the scheduler's `run_once`) against a freshly
//! migrated database (of the backend `JOBSD_TEST_BACKEND` selects) with no
//! service running, so each step of a race is taken by hand.

use std::time::Duration;

use chrono::Utc;
use jobsd::domain::{JobState, RunState, ScheduleKind};
use jobsd::scheduler::{Scheduler, SchedulerConfig};
use jobsd::store::{ClaimSlots, ManualRun, NewJob, RunClaim, RunOutcome, RunRow, Store};
use serde_json::json;
use uuid::Uuid;

use crate::support::{execute_sql, failure_record, micros, TestDb};

async fn migrated_store() -> (Store, TestDb) {
    let db = TestDb::new();
    let store = Store::connect(&db.url, 4, Duration::from_secs(10))
        .await
        .expect("connects");
    store.migrate().await.expect("migrates");
    (store, db)
}

/// A `log` job that fires only when triggered.
fn triggered_job(job_id: &str, max_retries: i32) -> NewJob {
    let mut job = failure_record(job_id, json!({"message": job_id}));
    job.handler = "log".into();
    job.max_retries = max_retries;
    job
}

fn slots(instance: &str) -> ClaimSlots {
    ClaimSlots {
        instance: instance.into(),
        lease_ms: 60_000,
        limit: 10,
    }
}

fn claim_of(run: &RunRow) -> RunClaim {
    RunClaim {
        run_id: run.run_id,
        attempt: run.attempt,
        instance: run.instance.clone().expect("claimed"),
    }
}

fn succeeded(ended_ago_ms: i64) -> RunOutcome {
    RunOutcome {
        state: RunState::Succeeded,
        result: Some(json!({})),
        error: None,
        traceback: None,
        reason: "test".into(),
        ended_ago_ms,
    }
}

/// Queues a manual run of `job_id` and claims it for `instance`.
async fn trigger_and_claim(store: &Store, job_id: &str, instance: &str) -> RunRow {
    let run = store
        .run_trigger(&ManualRun {
            job_id: job_id.into(),
            handler: None,
            kwargs: None,
            reason: "test".into(),
        })
        .await
        .unwrap();
    let claimed = store.run_claim(&slots(instance)).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:#?}");
    assert_eq!(claimed[0].run_id, run.run_id);
    claimed.into_iter().next().unwrap()
}

/// Lets the lease of `run_id` run out, as if its replica had died.
async fn expire_lease(store: &Store, run_id: Uuid) {
    let past = micros(Utc::now() - chrono::Duration::seconds(1));
    let changed = execute_sql(
        store,
        &format!(
            "UPDATE runs SET lease_expires_at = now() - interval '1 second' \
             WHERE run_id = '{run_id}'"
        ),
        &format!("UPDATE runs SET lease_expires_at = {past} WHERE run_id = '{run_id}'"),
    )
    .await;
    assert_eq!(changed, 1);
}

// --- Bug 5: running attempts are fenced by (run, attempt): a heartbeat of
// attempt 1 must not renew attempt 2 of the same run.

#[tokio::test]
async fn bug5_a_heartbeat_of_a_stale_attempt_does_not_renew_the_newer_one() {
    let (store, _db) = migrated_store().await;
    store
        .job_insert(&triggered_job("j", 1), "test")
        .await
        .unwrap();
    let first = trigger_and_claim(&store, "j", "w1").await;
    assert_eq!(first.attempt, 1);
    // Attempt 1's lease runs out; the run is rescued and claimed again by
    // the same replica: attempt 2, while attempt 1 may still be winding down.
    expire_lease(&store, first.run_id).await;
    let rescued = store.run_rescue_expired(10, "rescuer").await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].state, RunState::Queued);
    let second = store.run_claim(&slots("w1")).await.unwrap().remove(0);
    assert_eq!((second.run_id, second.attempt), (first.run_id, 2));
    let (stale, current) = (claim_of(&first), claim_of(&second));
    let lease = second.lease_expires_at.expect("leased");

    let acks = store
        .run_heartbeat("w1", 600_000, &[(stale.clone(), None)])
        .await
        .unwrap();
    assert!(acks.is_empty(), "attempt 1's heartbeat was acked: {acks:?}");
    let run = store.run_get(first.run_id).await.unwrap();
    assert_eq!(
        run.lease_expires_at,
        Some(lease),
        "attempt 1's heartbeat must not renew attempt 2's lease"
    );
    assert!(
        !store.run_finish(&stale, &succeeded(0)).await.unwrap(),
        "attempt 1 cannot record an outcome"
    );
    let run = store.run_get(first.run_id).await.unwrap();
    assert_eq!((run.state, run.attempt), (RunState::Running, 2));

    // The current attempt is renewed and finishes.
    let acks = store
        .run_heartbeat("w1", 600_000, &[(current.clone(), None)])
        .await
        .unwrap();
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!((acks[0].run_id, acks[0].attempt), (first.run_id, 2));
    let renewed = store.run_get(first.run_id).await.unwrap().lease_expires_at;
    assert!(renewed > Some(lease), "{renewed:?} after {lease}");
    assert!(store.run_finish(&current, &succeeded(0)).await.unwrap());
    assert_eq!(
        store.run_get(first.run_id).await.unwrap().state,
        RunState::Succeeded
    );
}

// --- Bug 7: a cancel requested before a rescue was lost (the rescue
// queued the run again and it ran again).

#[tokio::test]
async fn bug7_a_rescue_keeps_a_cancel_requested_before_the_lease_expired() {
    let (store, _db) = migrated_store().await;
    store
        .job_insert(&triggered_job("j", 3), "test")
        .await
        .unwrap();
    let run = trigger_and_claim(&store, "j", "w1").await;
    let cancelling = store.run_cancel(run.run_id, "stop it").await.unwrap();
    assert_eq!(
        cancelling.state,
        RunState::Running,
        "cancel requested, not yet done"
    );
    assert!(cancelling.cancel_requested);
    // Its replica dies before it has stopped the run.
    expire_lease(&store, run.run_id).await;
    let rescued = store.run_rescue_expired(10, "rescuer").await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].state, RunState::Cancelled, "{:#?}", rescued[0]);

    let run = store.run_get(run.run_id).await.unwrap();
    assert_eq!(run.state, RunState::Cancelled, "{run:#?}");
    assert!(run.finished_at.is_some());
    assert!(
        run.error.as_deref().unwrap_or("").contains("cancel"),
        "{run:#?}"
    );
    assert!(
        store.run_claim(&slots("w2")).await.unwrap().is_empty(),
        "nothing to run again"
    );
}

// --- Bug 12: a run whose handler has returned but whose outcome is not
// written yet must not make the next fire time skipped.

/// A periodic job whose run is `running` (claimed by `w1`) when its next
/// time comes: that time is stored `waiting`. Returns the running run's
/// claim and the waiting run.
async fn next_time_while_running(store: &Store) -> (RunClaim, RunRow) {
    let mut job = triggered_job("fast", 0);
    job.schedule_kind = ScheduleKind::Interval;
    job.interval_ms = Some(3_600_000);
    job.start_at = Utc::now() - chrono::Duration::minutes(1);
    job.next_run_at = Some(job.start_at);
    job.state = JobState::Running;
    store.job_insert(&job, "test").await.unwrap();
    let scheduler = Scheduler::new(
        store.clone(),
        SchedulerConfig {
            instance: "scheduler".into(),
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
        },
    );
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let claimed = store.run_claim(&slots("w1")).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:#?}");
    let running = claimed.into_iter().next().unwrap();
    // Its next time is now, while the run still runs.
    let row = store.job_get("fast").await.unwrap();
    job.next_run_at = Some(store.now().await.unwrap());
    store.job_replace(&job, row.row_version).await.unwrap();
    assert_eq!(scheduler.run_once().await.unwrap(), 1);
    let runs = store
        .run_list(&jobsd::store::RunFilter {
            job_id: Some("fast".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .0;
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let waiting = runs
        .into_iter()
        .find(|r| r.run_id != running.run_id)
        .unwrap();
    assert_eq!(
        waiting.state,
        RunState::Waiting,
        "a time that finds its slot held by a running run waits: {waiting:#?}"
    );
    assert!(waiting.scheduled_for >= running.started_at.unwrap());
    (claim_of(&running), waiting)
}

#[tokio::test]
async fn bug12_a_waiting_run_is_queued_when_the_handler_had_returned_by_its_time() {
    let (store, _db) = migrated_store().await;
    let (claim, waiting) = next_time_while_running(&store).await;
    // The handler returned long ago (only its outcome was late): the slot
    // was free at the waiting run's time.
    assert!(store
        .run_finish(&claim, &succeeded(3_600_000))
        .await
        .unwrap());
    let decided = store.run_get(waiting.run_id).await.unwrap();
    assert_eq!(decided.state, RunState::Queued, "{decided:#?}");
    let claimed = store.run_claim(&slots("w1")).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].run_id, waiting.run_id);
}

#[tokio::test]
async fn bug12_a_waiting_run_is_skipped_when_the_handler_was_still_executing_at_its_time() {
    let (store, _db) = migrated_store().await;
    let (claim, waiting) = next_time_while_running(&store).await;
    // The handler returns only now, after the waiting run's time.
    assert!(store.run_finish(&claim, &succeeded(0)).await.unwrap());
    let decided = store.run_get(waiting.run_id).await.unwrap();
    assert_eq!(decided.state, RunState::Missed, "{decided:#?}");
    assert!(
        decided.error.as_deref().unwrap_or("").contains("skipped"),
        "{decided:#?}"
    );
    assert!(store.run_claim(&slots("w1")).await.unwrap().is_empty());
}
