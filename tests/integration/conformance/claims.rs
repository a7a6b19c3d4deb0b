//! Execution: claims, lock keys, lateness, fencing, heartbeats, retries,
//! hand-backs, rescues, outcomes and failure records.

use jobsd::domain::rules::{LATE_ERROR, LATE_REASON};
use jobsd::store::{HeartbeatAck, JobFilter, JobType, StoreError};

use super::*;

/// The failure records stored.
async fn failure_records(store: &Store) -> Vec<JobRow> {
    let filter = JobFilter {
        job_type: JobType::Failed,
        limit: 100,
        ..JobFilter::default()
    };
    store.job_list(&filter).await.unwrap().0
}

/// A claim takes the queued runs whose time has come, oldest first, up
/// to its limit, and leases them to the claimer: the next attempt runs.
async fn a_claim_leases_due_runs_up_to_its_limit(store: Store) {
    let mut queued = Vec::new();
    for id in ["a", "b", "c"] {
        store.job_insert(&hourly(id), "test").await.unwrap();
        queued.push(trigger(&store, id).await);
    }
    assert!(
        store.run_claim(&slots("w1", 0)).await.unwrap().is_empty(),
        "no slot, no claim"
    );
    let lease = ClaimSlots {
        instance: "w1".into(),
        lease_ms: 30_000,
        limit: 2,
    };
    let before = Utc::now() - seconds(1);
    let first = store.run_claim(&lease).await.unwrap();
    let mut ids: Vec<Uuid> = first.iter().map(|r| r.run_id).collect();
    ids.sort();
    assert_eq!(ids, [queued[0].run_id, queued[1].run_id], "the oldest two");
    for run in &first {
        assert_eq!(
            (run.state, run.attempt, run.instance.as_deref()),
            (RunState::Running, 1, Some("w1"))
        );
        let started = run.started_at.expect("started");
        assert!(started >= before && started <= Utc::now(), "{run:#?}");
        assert_near(
            run.lease_expires_at.expect("leased"),
            started + seconds(30),
            seconds(1),
        );
        assert_last_step(run, "queued", "running", "claimed (attempt 1)", Some("w1"));
        assert_eq!(
            store.run_get(run.run_id).await.unwrap().state,
            RunState::Running
        );
    }
    let rest = store.run_claim(&lease).await.unwrap();
    assert_eq!(
        rest.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        [queued[2].run_id]
    );
    assert!(store.run_claim(&lease).await.unwrap().is_empty());
    assert_eq!(
        store.run_next_queued_in().await.unwrap(),
        None,
        "nothing queued"
    );
}

/// Runs sharing a lock key run one at a time, the oldest first: while
/// one runs, the others stay queued, cost no wake-up, and the key is
/// listed as held.
async fn runs_sharing_a_lock_key_run_one_at_a_time(store: Store) {
    for id in ["k1", "k2"] {
        let mut job = hourly(id);
        job.lock_key = Some("k".into());
        store.job_insert(&job, "test").await.unwrap();
    }
    store.job_insert(&hourly("free"), "test").await.unwrap();
    let k1 = trigger(&store, "k1").await;
    let k2 = trigger(&store, "k2").await;
    let free = trigger(&store, "free").await;
    let claimed = store.run_claim(&slots("w1", 10)).await.unwrap();
    let mut ids: Vec<Uuid> = claimed.iter().map(|r| r.run_id).collect();
    ids.sort();
    assert_eq!(ids, [k1.run_id, free.run_id], "{claimed:#?}");
    assert!(
        store.run_claim(&slots("w2", 10)).await.unwrap().is_empty(),
        "k2 waits for the key"
    );
    assert_eq!(
        store.run_next_queued_in().await.unwrap(),
        None,
        "a blocked run wakes nobody"
    );
    let holder = claimed.iter().find(|r| r.run_id == k1.run_id).unwrap();
    let locks = store.lock_list().await.unwrap();
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(
        (
            locks[0].lock_key.as_str(),
            locks[0].run_id,
            locks[0].job_id.as_str(),
            locks[0].instance.as_deref()
        ),
        ("k", k1.run_id, "k1", Some("w1"))
    );
    assert_eq!(locks[0].started_at, holder.started_at);

    assert!(store
        .run_finish(&claim_of(holder), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    let next = store.run_claim(&slots("w2", 10)).await.unwrap();
    assert_eq!(
        next.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        [k2.run_id]
    );
    let locks = store.lock_list().await.unwrap();
    assert_eq!(
        locks.iter().map(|l| l.run_id).collect::<Vec<_>>(),
        [k2.run_id]
    );
    assert!(store
        .run_finish(&claim_of(&next[0]), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    assert!(store.lock_list().await.unwrap().is_empty());
}

/// A queued run whose first start comes later than its misfire grace
/// allows is claimed as `missed`, never run, and its one-shot job is
/// completed. Manual runs have no grace.
async fn a_run_claimed_past_its_misfire_grace_is_missed(store: Store) {
    let mut job = once_due("late");
    job.next_run_at = Some(now() - seconds(10));
    job.misfire_grace_ms = Some(1_000);
    store.job_insert(&job, "test").await.unwrap();
    let at = job.next_run_at.unwrap();
    let done = JobAdvance {
        job_id: "late".into(),
        next_run_at: None,
        complete: false,
    };
    fire(
        &store,
        &[fired("late", at, RunState::Queued, "due")],
        &[done],
    )
    .await;
    let queued = runs_of(&store, "late").await.remove(0);
    assert_eq!(
        (queued.state, queued.misfire_grace_ms),
        (RunState::Queued, Some(1_000))
    );

    let claimed = store.run_claim(&slots("w1", 10)).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:#?}");
    let run = &claimed[0];
    assert_eq!(
        (run.run_id, run.state, run.attempt),
        (queued.run_id, RunState::Missed, 0)
    );
    assert_eq!(run.error.as_deref(), Some(LATE_ERROR));
    assert_eq!((run.started_at, run.lease_expires_at), (None, None));
    assert!(run.finished_at.is_some(), "{run:#?}");
    assert_last_step(run, "queued", "missed", LATE_REASON, Some("w1"));
    assert_eq!(
        store.run_get(run.run_id).await.unwrap().state,
        RunState::Missed
    );
    assert_eq!(
        store.job_get("late").await.unwrap().state,
        JobState::Completed
    );

    let mut graced = hourly("graced");
    graced.misfire_grace_ms = Some(1);
    store.job_insert(&graced, "test").await.unwrap();
    trigger(&store, "graced").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let claimed = store.run_claim(&slots("w1", 10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].state,
        RunState::Running,
        "a manual run is never late"
    );
}

/// Every write about a running run is fenced by its claim: a heartbeat,
/// outcome, retry or hand-back of an older attempt, or from another
/// instance, changes nothing and says so. An ended run takes no second
/// outcome.
async fn writes_with_a_stale_claim_change_nothing(store: Store) {
    let mut job = hourly("j");
    job.max_retries = 3;
    store.job_insert(&job, "test").await.unwrap();
    store.job_insert(&hourly("k"), "test").await.unwrap();
    let first = trigger_and_claim(&store, "j", "w1").await;
    assert!(store
        .run_retry(&claim_of(&first), &retry(0, "boom"))
        .await
        .unwrap());
    let current = store.run_claim(&slots("w1", 10)).await.unwrap().remove(0);
    assert_eq!((current.run_id, current.attempt), (first.run_id, 2));
    let other = trigger_and_claim(&store, "k", "w1").await;
    let before = store.run_get(first.run_id).await.unwrap();

    let old_attempt = claim_of(&first);
    let other_instance = RunClaim {
        instance: "w2".into(),
        ..claim_of(&current)
    };
    for stale in [&old_attempt, &other_instance] {
        let acks = store
            .run_heartbeat(
                &stale.instance,
                600_000,
                &[(stale.clone(), Some(json!({"stale": true})))],
            )
            .await
            .unwrap();
        assert!(acks.is_empty(), "{stale:?}: {acks:?}");
        assert!(
            !store
                .run_finish(stale, &outcome(RunState::Succeeded))
                .await
                .unwrap(),
            "{stale:?}"
        );
        assert!(
            !store.run_retry(stale, &retry(0, "stale")).await.unwrap(),
            "{stale:?}"
        );
        assert_eq!(
            store
                .run_hand_back(std::slice::from_ref(stale), "stale")
                .await
                .unwrap(),
            0,
            "{stale:?}"
        );
    }
    let written = store
        .run_finish_many(&[
            (old_attempt.clone(), outcome(RunState::Failed)),
            (other_instance.clone(), outcome(RunState::Failed)),
        ])
        .await
        .unwrap();
    assert!(written.is_empty(), "{written:?}");
    let after = store.run_get(first.run_id).await.unwrap();
    assert_eq!(
        (
            after.state,
            after.attempt,
            after.instance.as_deref(),
            after.lease_expires_at
        ),
        (RunState::Running, 2, Some("w1"), before.lease_expires_at)
    );
    assert_eq!(
        (after.progress, after.result, after.error),
        (before.progress, before.result, before.error)
    );
    assert_eq!(after.history, before.history);

    let written = store
        .run_finish_many(&[
            (claim_of(&current), outcome(RunState::Succeeded)),
            (
                RunClaim {
                    attempt: 2,
                    ..claim_of(&other)
                },
                outcome(RunState::Succeeded),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        written,
        [current.run_id],
        "only the current claim is written"
    );
    assert_eq!(
        store.run_get(other.run_id).await.unwrap().state,
        RunState::Running
    );
    assert!(!store
        .run_finish(&claim_of(&current), &outcome(RunState::Failed))
        .await
        .unwrap());
    assert_eq!(
        store.run_get(current.run_id).await.unwrap().state,
        RunState::Succeeded
    );
    assert!(failure_records(&store).await.is_empty());
}

/// A heartbeat renews the lease of the attempts still held, stores
/// their progress (keeping the last when none is sent), and tells of a
/// requested cancel.
async fn a_heartbeat_renews_the_lease_and_stores_progress(store: Store) {
    store.job_insert(&hourly("j"), "test").await.unwrap();
    let queued = trigger(&store, "j").await;
    let short = ClaimSlots {
        instance: "w1".into(),
        lease_ms: 1_000,
        limit: 1,
    };
    let run = store.run_claim(&short).await.unwrap().remove(0);
    assert_eq!(run.run_id, queued.run_id);
    let claim = claim_of(&run);
    let before = Utc::now();
    let progress = json!({"done": 1, "of": 3});
    let acks = store
        .run_heartbeat("w1", 600_000, &[(claim.clone(), Some(progress.clone()))])
        .await
        .unwrap();
    assert_eq!(
        acks,
        [HeartbeatAck {
            run_id: run.run_id,
            attempt: 1,
            cancel_requested: false
        }]
    );
    let renewed = store.run_get(run.run_id).await.unwrap();
    let lease = renewed.lease_expires_at.expect("leased");
    assert!(lease > run.lease_expires_at.unwrap(), "{lease}");
    assert_near(lease, before + seconds(600), seconds(5));
    assert_eq!(renewed.progress, Some(progress.clone()));

    store
        .run_heartbeat("w1", 600_000, &[(claim.clone(), None)])
        .await
        .unwrap();
    assert_eq!(
        store.run_get(run.run_id).await.unwrap().progress,
        Some(progress)
    );

    store.run_cancel(run.run_id, "stop it").await.unwrap();
    let acks = store
        .run_heartbeat("w1", 600_000, &[(claim, None)])
        .await
        .unwrap();
    assert_eq!(acks.len(), 1);
    assert!(acks[0].cancel_requested, "{acks:?}");
    assert!(store
        .run_heartbeat("w1", 600_000, &[])
        .await
        .unwrap()
        .is_empty());
}

/// A retry queues the run again after its backoff, with the attempt's
/// error; it is not claimed before, and the workers wait until then.
/// The next claim is the next attempt.
async fn a_retry_queues_the_run_again_after_its_backoff(store: Store) {
    let mut job = hourly("j");
    job.max_retries = 2;
    store.job_insert(&job, "test").await.unwrap();
    let first = trigger_and_claim(&store, "j", "w1").await;
    assert!(store
        .run_retry(&claim_of(&first), &retry(0, "boom 1"))
        .await
        .unwrap());
    let row = store.run_get(first.run_id).await.unwrap();
    assert_eq!(
        (row.state, row.attempt, row.lease_expires_at),
        (RunState::Queued, 1, None)
    );
    assert_eq!(row.error.as_deref(), Some("boom 1"));
    assert_eq!(row.traceback.as_deref(), Some("traceback of boom 1"));
    assert!(row.run_after <= Utc::now());
    assert_last_step(
        &row,
        "running",
        "queued",
        "retrying after boom 1",
        Some("w1"),
    );

    let second = store.run_claim(&slots("w1", 10)).await.unwrap().remove(0);
    assert_eq!((second.run_id, second.attempt), (first.run_id, 2));
    let before = Utc::now();
    assert!(store
        .run_retry(&claim_of(&second), &retry(60_000, "boom 2"))
        .await
        .unwrap());
    let row = store.run_get(first.run_id).await.unwrap();
    assert_near(row.run_after, before + seconds(60), seconds(2));
    assert!(
        store.run_claim(&slots("w1", 10)).await.unwrap().is_empty(),
        "not before its backoff"
    );
    let wait = store
        .run_next_queued_in()
        .await
        .unwrap()
        .expect("a queued run");
    assert!(
        wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    assert!(!store
        .run_retry(&claim_of(&first), &retry(0, "stale"))
        .await
        .unwrap());
}

/// A run handed back (graceful shutdown) is queued at once, and the
/// interrupted attempt is not counted.
async fn a_run_handed_back_is_queued_without_counting_its_attempt(store: Store) {
    store.job_insert(&hourly("j"), "test").await.unwrap();
    store.job_insert(&hourly("k"), "test").await.unwrap();
    let runs = [
        trigger_and_claim(&store, "j", "w1").await,
        trigger_and_claim(&store, "k", "w1").await,
    ];
    let claims: Vec<RunClaim> = runs.iter().map(claim_of).collect();
    assert_eq!(
        store.run_hand_back(&claims, "shutting down").await.unwrap(),
        2
    );
    for run in &runs {
        let row = store.run_get(run.run_id).await.unwrap();
        assert_eq!(
            (row.state, row.attempt, row.lease_expires_at),
            (RunState::Queued, 0, None)
        );
        assert!(row.run_after <= Utc::now());
        assert_last_step(&row, "running", "queued", "shutting down", Some("w1"));
    }
    let again = store.run_claim(&slots("w2", 10)).await.unwrap();
    assert_eq!(again.len(), 2);
    for run in &again {
        assert_eq!(
            (run.attempt, run.instance.as_deref()),
            (1, Some("w2")),
            "{run:#?}"
        );
    }
    assert_eq!(store.run_hand_back(&claims, "stale").await.unwrap(), 0);
    assert_eq!(store.run_hand_back(&[], "nothing").await.unwrap(), 0);
}

/// A run whose lease expired is queued again while retries remain (the
/// lost attempt counted), else it fails and leaves a failure record.
/// Runs still leased are left alone.
async fn an_expired_lease_is_rescued_by_the_retry_rule(store: Store) {
    let mut job = hourly("j");
    job.max_retries = 1;
    job.kwargs = json!({"message": "rescue me"});
    store.job_insert(&job, "test").await.unwrap();
    store.job_insert(&hourly("alive"), "test").await.unwrap();
    let run = trigger_and_claim(&store, "j", "w1").await;
    let alive = trigger_and_claim(&store, "alive", "w2").await;
    assert!(
        store
            .run_rescue_expired(10, "rescuer")
            .await
            .unwrap()
            .is_empty(),
        "leases held"
    );

    expire_lease(&store, run.run_id).await;
    let rescued = store.run_rescue_expired(10, "rescuer").await.unwrap();
    assert_eq!(rescued.len(), 1, "{rescued:#?}");
    let lost = "lease expired: instance w1 stopped heartbeating";
    let r = &rescued[0];
    assert_eq!(
        (r.run_id, r.state, r.lease_expires_at, r.finished_at),
        (run.run_id, RunState::Queued, None, None)
    );
    assert_eq!(r.error.as_deref(), Some(lost));
    let tail = steps(r).split_off(2);
    assert_eq!(
        tail,
        [
            (
                "running".to_string(),
                "dead".to_string(),
                "lease expired on w1".to_string()
            ),
            (
                "dead".into(),
                "queued".into(),
                "re-queued after a lost lease".into()
            ),
        ]
    );
    assert_eq!(
        store.run_get(alive.run_id).await.unwrap().state,
        RunState::Running
    );

    let second = store.run_claim(&slots("w1", 10)).await.unwrap();
    assert_eq!(second.len(), 1, "{second:#?}");
    assert_eq!((second[0].run_id, second[0].attempt), (run.run_id, 2));
    assert!(
        !store
            .run_finish(&claim_of(&run), &outcome(RunState::Succeeded))
            .await
            .unwrap(),
        "the lost attempt is fenced out"
    );

    expire_lease(&store, run.run_id).await;
    let rescued = store.run_rescue_expired(10, "rescuer").await.unwrap();
    assert_eq!(rescued.len(), 1, "{rescued:#?}");
    let r = &rescued[0];
    assert_eq!((r.state, r.lease_expires_at), (RunState::Failed, None));
    assert!(r.finished_at.is_some());
    assert_eq!(r.error.as_deref(), Some(lost));
    assert_last_step(
        r,
        "dead",
        "failed",
        "no retries left after a lost lease",
        Some("rescuer"),
    );
    let record = store
        .job_get(&format!("failed-{}", run.run_id))
        .await
        .unwrap();
    assert_eq!(
        (record.handler.as_str(), record.failed_run_id),
        ("ErrorHandler", Some(run.run_id))
    );
    assert_eq!(
        (record.state, record.schedule_kind, record.next_run_at),
        (JobState::Paused, ScheduleKind::Never, None)
    );
    assert_eq!(record.kwargs["exc_str"], lost);
    assert_eq!(record.kwargs["failed_job_id"], "j");
    assert_eq!(record.kwargs["failed_job_handler"], "log");
    assert_eq!(record.kwargs["failed_handler_kwargs"], job.kwargs);
    assert_eq!(record.kwargs["failed_run_id"], run.run_id.to_string());
    assert!(store
        .run_rescue_expired(10, "rescuer")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(failure_records(&store).await.len(), 1);
}

/// A cancel requested before the lease was lost is kept: the rescue
/// cancels the run (it is not run again) and leaves no failure record.
async fn a_rescue_keeps_a_requested_cancel(store: Store) {
    let mut job = hourly("j");
    job.max_retries = 3;
    store.job_insert(&job, "test").await.unwrap();
    let run = trigger_and_claim(&store, "j", "w1").await;
    assert!(
        store
            .run_cancel(run.run_id, "stop it")
            .await
            .unwrap()
            .cancel_requested
    );
    expire_lease(&store, run.run_id).await;
    let rescued = store.run_rescue_expired(10, "rescuer").await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].state, RunState::Cancelled, "{:#?}", rescued[0]);
    assert!(rescued[0].finished_at.is_some());
    assert!(
        rescued[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("cancel"),
        "{:#?}",
        rescued[0]
    );
    assert_last_step(
        &rescued[0],
        "dead",
        "cancelled",
        "cancel requested before the lease was lost",
        Some("rescuer"),
    );
    assert!(store.run_claim(&slots("w2", 10)).await.unwrap().is_empty());
    assert!(failure_records(&store).await.is_empty());
}

/// An attempt that failed or timed out leaves a failure record, an inert
/// `ErrorHandler` job `failed-<run_id>` describing it; a success or a
/// cancel leaves none. The outcome is stored on the run.
async fn failed_runs_leave_a_failure_record(store: Store) {
    let mut job = hourly("j");
    job.kwargs = json!({"message": "x", "n": 2});
    store.job_insert(&job, "test").await.unwrap();
    let run = trigger_and_claim(&store, "j", "w1").await;
    let failed = RunOutcome {
        state: RunState::Failed,
        result: None,
        error: Some("kaput".into()),
        traceback: Some("Traceback: line 1".into()),
        reason: "the handler failed".into(),
        ended_ago_ms: 0,
    };
    assert!(store.run_finish(&claim_of(&run), &failed).await.unwrap());
    let row = store.run_get(run.run_id).await.unwrap();
    assert_eq!((row.state, row.lease_expires_at), (RunState::Failed, None));
    assert_eq!(
        (row.error.as_deref(), row.traceback.as_deref()),
        (Some("kaput"), Some("Traceback: line 1"))
    );
    assert!(
        row.finished_at >= row.started_at && row.finished_at.is_some(),
        "{row:#?}"
    );
    assert_last_step(&row, "running", "failed", "the handler failed", Some("w1"));
    let record = store
        .job_get(&format!("failed-{}", run.run_id))
        .await
        .unwrap();
    assert_eq!(
        record.kwargs,
        json!({
            "exc_str": "kaput",
            "exc_traceback": "Traceback: line 1",
            "failed_job_id": "j",
            "failed_job_handler": "log",
            "failed_handler_kwargs": {"message": "x", "n": 2},
            "failed_run_id": run.run_id.to_string(),
        })
    );
    assert_eq!(
        record.description,
        Some(format!("run {} of job j ended failed", run.run_id))
    );
    assert_eq!(
        (record.handler.as_str(), record.failed_run_id),
        ("ErrorHandler", Some(run.run_id))
    );
    assert_eq!(
        (record.state, record.schedule_kind, record.next_run_at),
        (JobState::Paused, ScheduleKind::Never, None)
    );

    let timed_out = trigger_and_claim(&store, "j", "w1").await;
    assert!(store
        .run_finish(&claim_of(&timed_out), &outcome(RunState::TimedOut))
        .await
        .unwrap());
    let record = store
        .job_get(&format!("failed-{}", timed_out.run_id))
        .await
        .unwrap();
    assert_eq!(
        record.description,
        Some(format!("run {} of job j ended timed_out", timed_out.run_id))
    );

    let ok = trigger_and_claim(&store, "j", "w1").await;
    let success = RunOutcome {
        result: Some(json!({"answer": 42})),
        // Its handler returned an hour ago: it cannot have ended before it started.
        ended_ago_ms: 3_600_000,
        ..outcome(RunState::Succeeded)
    };
    assert!(store.run_finish(&claim_of(&ok), &success).await.unwrap());
    let row = store.run_get(ok.run_id).await.unwrap();
    assert_eq!(
        (row.state, &row.result),
        (RunState::Succeeded, &Some(json!({"answer": 42})))
    );
    assert!(
        row.finished_at.is_some() && row.finished_at >= row.started_at,
        "{row:#?}"
    );
    let cancelled = trigger_and_claim(&store, "j", "w1").await;
    assert!(store
        .run_finish(&claim_of(&cancelled), &outcome(RunState::Cancelled))
        .await
        .unwrap());
    assert_eq!(failure_records(&store).await.len(), 2);
}

/// A one-shot job is completed once its run has ended, whatever the
/// end; a completed job is not paused or resumed. A manual run of one
/// whose time has not come does not complete it.
async fn a_one_shot_job_completes_when_its_run_ends(store: Store) {
    let claimed = store
        .job_insert_many(&[once_due("once")], &slots("w1", 1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        store.job_get("once").await.unwrap().state,
        JobState::Running,
        "its run runs"
    );
    assert!(store
        .run_finish(&claim_of(&claimed[0]), &outcome(RunState::Failed))
        .await
        .unwrap());
    let row = store.job_get("once").await.unwrap();
    assert_eq!((row.state, row.next_run_at), (JobState::Completed, None));
    // Refused (PostgreSQL answers Stale, which the API re-reads into a
    // 409): the job stays completed.
    for (state, next) in [(JobState::Paused, None), (JobState::Running, Some(now()))] {
        let err = store
            .job_set_state("once", state, next, row.row_version)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict(_) | StoreError::Stale),
            "{state}: {err:?}"
        );
        assert_eq!(
            store.job_get("once").await.unwrap().state,
            JobState::Completed
        );
    }

    store
        .job_insert(&once_due("dropped"), "test")
        .await
        .unwrap();
    let queued = runs_of(&store, "dropped").await.remove(0);
    store.run_cancel(queued.run_id, "not wanted").await.unwrap();
    assert_eq!(
        store.job_get("dropped").await.unwrap().state,
        JobState::Completed
    );

    let mut later = once_due("later");
    later.next_run_at = Some(now() + chrono::Duration::hours(1));
    store.job_insert(&later, "test").await.unwrap();
    let run = trigger_and_claim(&store, "later", "w1").await;
    assert!(store
        .run_finish(&claim_of(&run), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    let row = store.job_get("later").await.unwrap();
    assert_eq!(
        (row.state, row.next_run_at),
        (JobState::Running, later.next_run_at)
    );
}

conformance![
    a_claim_leases_due_runs_up_to_its_limit,
    runs_sharing_a_lock_key_run_one_at_a_time,
    a_run_claimed_past_its_misfire_grace_is_missed,
    writes_with_a_stale_claim_change_nothing,
    a_heartbeat_renews_the_lease_and_stores_progress,
    a_retry_queues_the_run_again_after_its_backoff,
    a_run_handed_back_is_queued_without_counting_its_attempt,
    an_expired_lease_is_rescued_by_the_retry_rule,
    a_rescue_keeps_a_requested_cancel,
    failed_runs_leave_a_failure_record,
    a_one_shot_job_completes_when_its_run_ends,
];
