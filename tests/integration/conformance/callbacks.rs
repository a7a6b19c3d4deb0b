//! Remote completion's store operations (`crate::callbacks`): callback
//! tokens, the waiting mark of an accepted attempt (no lease: neither
//! rescued nor renewed), progress and heartbeats fenced by attempt, the
//! deadline sweep's choice, and the progress time the workers' heartbeat
//! writes.

use jobsd::callbacks::rules::TokenOwner;
use jobsd::domain::RunState;
use jobsd::store::Store;
use serde_json::json;
use uuid::Uuid;

use super::{claim_of, hourly, now, outcome, retry, seconds, slots, trigger, trigger_and_claim};

conformance![
    callback_tokens_name_their_run_and_attempt_until_the_run_is_gone,
    an_accepted_attempt_waits_without_a_lease_neither_rescued_nor_renewed,
    callback_progress_and_heartbeats_are_fenced_by_attempt,
    the_sweep_finds_deadlines_passed_and_cancels_of_the_current_attempt_only,
    worker_heartbeats_write_the_progress_time_only_with_a_progress,
];

async fn callback_tokens_name_their_run_and_attempt_until_the_run_is_gone(store: Store) {
    store.job_insert(&hourly("cb"), "test").await.unwrap();
    let run = trigger_and_claim(&store, "cb", "me").await;
    store
        .callback_token_insert("hash-1", run.run_id, 1)
        .await
        .unwrap();
    assert_eq!(
        store.callback_token_owner("hash-1").await.unwrap(),
        Some(TokenOwner {
            run_id: run.run_id,
            attempt: 1
        })
    );
    assert_eq!(store.callback_token_owner("hash-2").await.unwrap(), None);
    // A hash is stored once.
    assert!(store
        .callback_token_insert("hash-1", Uuid::new_v4(), 1)
        .await
        .is_err());
    // Kept while its run exists (an ended run's token is still known).
    assert!(store
        .run_finish(&claim_of(&run), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    assert_eq!(store.callback_tokens_prune(100).await.unwrap(), 0);
    let pruned = store
        .runs_prune_finished_before(now() + seconds(3600), &[RunState::Succeeded], 100)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    assert_eq!(store.callback_tokens_prune(100).await.unwrap(), 1);
    assert_eq!(store.callback_token_owner("hash-1").await.unwrap(), None);
}

async fn an_accepted_attempt_waits_without_a_lease_neither_rescued_nor_renewed(store: Store) {
    store.job_insert(&hourly("cb"), "test").await.unwrap();
    let run = trigger_and_claim(&store, "cb", "me").await;
    let claim = claim_of(&run);
    let deadline = now() + seconds(60);
    // Another instance's claim, or another attempt's, is stale.
    let mut stale = claim.clone();
    stale.instance = "other".into();
    assert!(!store
        .run_await_callback(&stale, deadline, "accepted")
        .await
        .unwrap());
    stale = claim.clone();
    stale.attempt = 2;
    assert!(!store
        .run_await_callback(&stale, deadline, "accepted")
        .await
        .unwrap());
    let before = store.callback_run_get(run.run_id).await.unwrap();
    assert_eq!(before.waiting_until(), None);

    assert!(store
        .run_await_callback(&claim, deadline, "request accepted; waiting")
        .await
        .unwrap());
    let waiting = store.callback_run_get(run.run_id).await.unwrap();
    assert_eq!(waiting.waiting_until(), Some(deadline));
    assert_eq!(waiting.run.state, RunState::Running);
    assert_eq!(waiting.run.lease_expires_at, None);
    assert_eq!(waiting.claim(), claim);
    let last = waiting
        .run
        .history
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["reason"], "request accepted; waiting");
    assert_eq!(
        (last["from"].as_str(), last["to"].as_str()),
        (Some("running"), Some("running"))
    );

    // No lease: the rescue passes it by; the worker's renewal no longer
    // holds it (nor gives it a lease back).
    assert!(store
        .run_rescue_expired(100, "rescuer")
        .await
        .unwrap()
        .is_empty());
    let acks = store
        .run_heartbeat("me", 60_000, &[(claim.clone(), None)])
        .await
        .unwrap();
    assert!(acks.is_empty(), "{acks:?}");
    assert_eq!(
        store.run_get(run.run_id).await.unwrap().lease_expires_at,
        None
    );

    // Its end is written by the usual call, with the sender's claim.
    assert!(store
        .run_finish(&waiting.claim(), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    let ended = store.callback_run_get(run.run_id).await.unwrap();
    assert_eq!(ended.run.state, RunState::Succeeded);
    assert_eq!(ended.waiting_until(), None);
}

async fn callback_progress_and_heartbeats_are_fenced_by_attempt(store: Store) {
    store.job_insert(&hourly("cb"), "test").await.unwrap();
    let run = trigger_and_claim(&store, "cb", "me").await;
    let claim = claim_of(&run);
    let progress = json!({"done": 1});
    // Progress is taken from the start of the attempt, waiting or not.
    let at = store
        .run_callback_progress(run.run_id, 1, &progress)
        .await
        .unwrap()
        .expect("written");
    let shown = store.run_get(run.run_id).await.unwrap();
    assert_eq!(shown.progress, Some(progress.clone()));
    assert_eq!(shown.progress_updated_at, Some(at));
    assert_eq!(
        store
            .run_callback_progress(run.run_id, 2, &json!(2))
            .await
            .unwrap(),
        None,
        "another attempt's"
    );
    // A heartbeat moves only a waiting attempt's deadline.
    let later = now() + seconds(120);
    assert!(!store
        .run_callback_heartbeat(run.run_id, 1, later)
        .await
        .unwrap());
    assert!(store
        .run_await_callback(&claim, now() + seconds(60), "accepted")
        .await
        .unwrap());
    assert!(store
        .run_callback_heartbeat(run.run_id, 1, later)
        .await
        .unwrap());
    assert!(!store
        .run_callback_heartbeat(run.run_id, 2, later)
        .await
        .unwrap());
    assert_eq!(
        store
            .callback_run_get(run.run_id)
            .await
            .unwrap()
            .waiting_until(),
        Some(later)
    );
    // Once ended, neither writes.
    assert!(store
        .run_finish(&claim, &outcome(RunState::Failed))
        .await
        .unwrap());
    assert_eq!(
        store
            .run_callback_progress(run.run_id, 1, &json!(3))
            .await
            .unwrap(),
        None
    );
    assert!(!store
        .run_callback_heartbeat(run.run_id, 1, later)
        .await
        .unwrap());
    assert_eq!(
        store.run_get(run.run_id).await.unwrap().progress,
        Some(progress)
    );
}

async fn the_sweep_finds_deadlines_passed_and_cancels_of_the_current_attempt_only(store: Store) {
    for job in ["late", "early", "cancelled", "retried"] {
        store.job_insert(&hourly(job), "test").await.unwrap();
    }
    let mut runs = Vec::new();
    for (job, deadline) in [
        ("late", now() - seconds(1)),
        ("early", now() + seconds(600)),
        ("cancelled", now() + seconds(600)),
        ("retried", now() - seconds(1)),
    ] {
        let run = trigger_and_claim(&store, job, "me").await;
        assert!(store
            .run_await_callback(&claim_of(&run), deadline, "accepted")
            .await
            .unwrap());
        runs.push(run);
    }
    store
        .run_cancel(runs[2].run_id, "cancelled by a test")
        .await
        .unwrap();
    // The retried run is queued again and claimed as attempt 2: its old
    // waiting mark names attempt 1, so the new attempt is not waiting.
    assert!(store
        .run_retry(&claim_of(&runs[3]), &retry(0, "failed"))
        .await
        .unwrap());
    let again = store.run_claim(&slots("me", 10)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    let renewed = store
        .run_heartbeat("me", 60_000, &[(claim_of(&again[0]), None)])
        .await
        .unwrap();
    assert_eq!(renewed.len(), 1, "attempt 2 holds its lease");

    let due = store.run_callbacks_due(100).await.unwrap();
    let mut ids: Vec<Uuid> = due.iter().map(|d| d.run.run_id).collect();
    ids.sort();
    let mut expected = vec![runs[0].run_id, runs[2].run_id];
    expected.sort();
    assert_eq!(ids, expected, "{due:#?}");
    let cancelled = due.iter().find(|d| d.run.run_id == runs[2].run_id).unwrap();
    assert!(cancelled.run.cancel_requested);
    assert_eq!(store.run_callbacks_due(1).await.unwrap().len(), 1, "limit");
    // Queued runs are never among them.
    store.job_insert(&hourly("queued"), "test").await.unwrap();
    let queued = trigger(&store, "queued").await;
    assert!(store
        .run_callbacks_due(100)
        .await
        .unwrap()
        .iter()
        .all(|d| d.run.run_id != queued.run_id));
}

async fn worker_heartbeats_write_the_progress_time_only_with_a_progress(store: Store) {
    store.job_insert(&hourly("cb"), "test").await.unwrap();
    let run = trigger_and_claim(&store, "cb", "me").await;
    let claim = claim_of(&run);
    store
        .run_heartbeat("me", 60_000, &[(claim.clone(), None)])
        .await
        .unwrap();
    let quiet = store.run_get(run.run_id).await.unwrap();
    assert_eq!((quiet.progress, quiet.progress_updated_at), (None, None));
    store
        .run_heartbeat("me", 60_000, &[(claim.clone(), Some(json!({"step": 1})))])
        .await
        .unwrap();
    let first = store.run_get(run.run_id).await.unwrap();
    assert_eq!(first.progress, Some(json!({"step": 1})));
    let at = first
        .progress_updated_at
        .expect("written with the progress");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    store
        .run_heartbeat("me", 60_000, &[(claim.clone(), None)])
        .await
        .unwrap();
    let kept = store.run_get(run.run_id).await.unwrap();
    assert_eq!(kept.progress, Some(json!({"step": 1})));
    assert_eq!(
        kept.progress_updated_at,
        Some(at),
        "unchanged without a progress"
    );
}
