//! Runs: listing, manual triggers and `max_instances`, cancels, operator
//! overrides, and the runs waiting for a slot.

use jobsd::domain::rules::SKIPPED;
use jobsd::store::StoreError;

use super::*;

/// The ids of a run listing's page, and the count of all matches.
async fn listed(store: &Store, filter: RunFilter) -> (Vec<Uuid>, i64) {
    let (runs, count) = store.run_list(&filter).await.unwrap();
    (runs.into_iter().map(|r| r.run_id).collect(), count)
}

fn all_runs() -> RunFilter {
    RunFilter {
        limit: 100,
        ..RunFilter::default()
    }
}

/// Runs are listed newest first, filtered by job, state, handler and
/// creation time, paged, with the count of every match.
async fn runs_are_listed_newest_first_filtered_and_counted(store: Store) {
    store.job_insert(&hourly("a"), "test").await.unwrap();
    let mut sleeper = hourly("b");
    sleeper.handler = "sleep".into();
    sleeper.kwargs = json!({"seconds": 1});
    store.job_insert(&sleeper, "test").await.unwrap();
    let r1 = trigger_and_claim(&store, "a", "w1").await;
    assert!(store
        .run_finish(&claim_of(&r1), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    let r2 = trigger(&store, "a").await;
    let r3 = trigger(&store, "b").await;
    let (r1, r2, r3) = (r1.run_id, r2, r3.run_id);

    assert_eq!(
        listed(&store, all_runs()).await,
        (vec![r3, r2.run_id, r1], 3)
    );
    let f = |filter: RunFilter| RunFilter {
        limit: 100,
        ..filter
    };
    assert_eq!(
        listed(
            &store,
            f(RunFilter {
                job_id: Some("a".into()),
                ..RunFilter::default()
            })
        )
        .await,
        (vec![r2.run_id, r1], 2)
    );
    assert_eq!(
        listed(
            &store,
            f(RunFilter {
                state: Some(RunState::Queued),
                ..RunFilter::default()
            })
        )
        .await,
        (vec![r3, r2.run_id], 2)
    );
    assert_eq!(
        listed(
            &store,
            f(RunFilter {
                handler: Some("sleep".into()),
                ..RunFilter::default()
            })
        )
        .await,
        (vec![r3], 1)
    );
    assert_eq!(
        listed(
            &store,
            RunFilter {
                limit: 1,
                offset: 1,
                ..RunFilter::default()
            }
        )
        .await,
        (vec![r2.run_id], 3)
    );
    assert_eq!(
        listed(
            &store,
            f(RunFilter {
                since: Some(r2.created_at),
                ..RunFilter::default()
            })
        )
        .await,
        (vec![r3, r2.run_id], 2)
    );
    assert_eq!(
        listed(
            &store,
            f(RunFilter {
                until: Some(r2.created_at),
                ..RunFilter::default()
            })
        )
        .await,
        (vec![r1], 1)
    );
    assert_eq!(store.run_latest("a").await.unwrap().run_id, r2.run_id);
    assert!(matches!(
        store.run_latest("nope").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.run_get(Uuid::now_v7()).await,
        Err(StoreError::NotFound)
    ));
}

/// A manual run is queued at once with the job's settings (or the
/// handler and kwargs given), and takes one of the job's
/// `max_instances` slots: with none free, a trigger is a Conflict.
async fn a_manual_run_takes_one_of_the_jobs_slots(store: Store) {
    let mut job = hourly("j");
    job.max_instances = 2;
    job.max_retries = 3;
    job.retry_backoff_ms = 2_500;
    job.lock_key = Some("k".into());
    job.timeout_ms = Some(5_000);
    job.misfire_grace_ms = Some(1_000);
    store.job_insert(&job, "test").await.unwrap();
    let before = Utc::now() - seconds(1);
    let first = trigger(&store, "j").await;
    assert_eq!(
        (first.state, first.trigger, first.attempt),
        (RunState::Queued, Trigger::Manual, 0)
    );
    assert_eq!(
        (first.handler.as_str(), &first.kwargs),
        ("log", &job.kwargs)
    );
    assert_eq!(
        (
            first.max_retries,
            first.retry_backoff_ms,
            first.timeout_ms,
            first.lock_key.as_deref()
        ),
        (3, 2_500, Some(5_000), Some("k"))
    );
    assert_eq!(first.misfire_grace_ms, None, "a manual run is never late");
    assert!(
        first.scheduled_for >= before && first.run_after <= Utc::now(),
        "{first:#?}"
    );
    assert_steps(&first, &[("", "queued", "triggered by a test")]);
    assert_eq!(
        store.run_get(first.run_id).await.unwrap().state,
        RunState::Queued
    );

    let rerun = ManualRun {
        job_id: "j".into(),
        handler: Some("sleep".into()),
        kwargs: Some(json!({"seconds": 0})),
        reason: "re-run".into(),
    };
    let second = store.run_trigger(&rerun).await.unwrap();
    assert_eq!(
        (second.handler.as_str(), &second.kwargs),
        ("sleep", &json!({"seconds": 0}))
    );
    let err = store.run_trigger(&manual("j")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(_)),
        "two of two slots taken: {err:?}"
    );

    // A running run holds its slot as well (the key lets one run).
    let running = store.run_claim(&slots("w1", 10)).await.unwrap();
    assert_eq!(running.len(), 1);
    assert!(matches!(
        store.run_trigger(&manual("j")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store
        .run_finish(&claim_of(&running[0]), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    trigger(&store, "j").await;
    assert!(matches!(
        store.run_trigger(&manual("nope")).await,
        Err(StoreError::NotFound)
    ));
}

/// A queued run is cancelled at once and never claimed; a running one
/// is flagged for its worker, which records the cancel; a run that has
/// ended cannot be cancelled.
async fn cancelling_a_queued_or_a_running_run(store: Store) {
    store.job_insert(&hourly("j"), "test").await.unwrap();
    let queued = trigger(&store, "j").await;
    let cancelled = store.run_cancel(queued.run_id, "not needed").await.unwrap();
    assert_eq!(cancelled.state, RunState::Cancelled);
    assert!(cancelled.finished_at.is_some());
    assert_eq!(cancelled.error.as_deref(), Some("not needed"));
    assert_last_step(&cancelled, "queued", "cancelled", "not needed", None);
    assert!(store.run_claim(&slots("w1", 10)).await.unwrap().is_empty());

    let running = trigger_and_claim(&store, "j", "w1").await;
    let flagged = store.run_cancel(running.run_id, "stop it").await.unwrap();
    assert_eq!(
        (flagged.state, flagged.cancel_requested),
        (RunState::Running, true)
    );
    assert!(store
        .run_finish(&claim_of(&running), &outcome(RunState::Cancelled))
        .await
        .unwrap());
    assert_eq!(
        store.run_get(running.run_id).await.unwrap().state,
        RunState::Cancelled
    );
    let err = store.run_cancel(running.run_id, "again").await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(matches!(
        store.run_cancel(Uuid::now_v7(), "none").await,
        Err(StoreError::NotFound)
    ));
}

/// An operator may set a run's state: ending a running run fences its
/// worker out; queueing one again needs a free slot; the state it
/// already has is a Conflict. Each is recorded in the run's history.
async fn an_operator_override_sets_the_state_and_fences_the_worker(store: Store) {
    store.job_insert(&hourly("j"), "test").await.unwrap();
    let done = trigger_and_claim(&store, "j", "w1").await;
    assert!(store
        .run_finish(&claim_of(&done), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    let stuck = trigger_and_claim(&store, "j", "w1").await;
    let err = store
        .run_override_state(done.run_id, RunState::Queued, "again")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(_)),
        "the job's one slot is held: {err:?}"
    );

    let ended = store
        .run_override_state(stuck.run_id, RunState::Failed, "stuck")
        .await
        .unwrap();
    assert_eq!(
        (ended.state, ended.lease_expires_at, ended.cancel_requested),
        (RunState::Failed, None, false)
    );
    assert!(ended.finished_at.is_some());
    assert_last_step(
        &ended,
        "running",
        "failed",
        "operator: stuck",
        Some("operator"),
    );
    assert!(
        !store
            .run_finish(&claim_of(&stuck), &outcome(RunState::Succeeded))
            .await
            .unwrap(),
        "its worker can no longer write an outcome"
    );
    assert_eq!(
        store.run_get(stuck.run_id).await.unwrap().state,
        RunState::Failed
    );
    let err = store
        .run_override_state(stuck.run_id, RunState::Failed, "again")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    let requeued = store
        .run_override_state(done.run_id, RunState::Queued, "run it again")
        .await
        .unwrap();
    assert_eq!(
        (requeued.state, requeued.finished_at),
        (RunState::Queued, None)
    );
    assert!(requeued.run_after <= Utc::now());
    let claimed = store.run_claim(&slots("w1", 10)).await.unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|r| (r.run_id, r.attempt))
            .collect::<Vec<_>>(),
        [(done.run_id, 2)]
    );
    assert!(matches!(
        store
            .run_override_state(Uuid::now_v7(), RunState::Failed, "none")
            .await,
        Err(StoreError::NotFound)
    ));
}

/// A time that came due while every slot of its job was held by a
/// running run waits. When that run ends, the waiting run is queued if
/// the handler had returned by its time (only the outcome was late),
/// and skipped (`missed`) if it was still executing.
async fn a_finish_decides_the_runs_waiting_for_its_slot(store: Store) {
    store.job_insert(&due("returned"), "test").await.unwrap();
    store.job_insert(&due("executing"), "test").await.unwrap();
    let returned = trigger_and_claim(&store, "returned", "w1").await;
    let executing = trigger_and_claim(&store, "executing", "w1").await;
    let at = now();
    let next = Some(at + chrono::Duration::hours(1));
    fire(
        &store,
        &[
            fired("returned", at, RunState::Waiting, WAITING),
            fired("executing", at, RunState::Waiting, WAITING),
        ],
        &[advance("returned", next), advance("executing", next)],
    )
    .await;
    let waiting = |runs: Vec<RunRow>| {
        runs.into_iter()
            .find(|r| r.state == RunState::Waiting)
            .expect("a waiting run")
    };
    let waits_returned = waiting(runs_of(&store, "returned").await);
    let waits_executing = waiting(runs_of(&store, "executing").await);
    assert_eq!(waits_returned.scheduled_for, at);
    assert!(
        store.run_claim(&slots("w1", 10)).await.unwrap().is_empty(),
        "a waiting run is not claimed"
    );

    let late_outcome = RunOutcome {
        ended_ago_ms: 3_600_000,
        ..outcome(RunState::Succeeded)
    };
    assert!(store
        .run_finish(&claim_of(&returned), &late_outcome)
        .await
        .unwrap());
    let decided = store.run_get(waits_returned.run_id).await.unwrap();
    assert_eq!(
        (decided.state, decided.error.as_deref()),
        (RunState::Queued, None),
        "{decided:#?}"
    );
    assert_last_step(
        &decided,
        "waiting",
        "queued",
        "the run holding its slot had ended by its time",
        None,
    );
    let claimed = store.run_claim(&slots("w1", 10)).await.unwrap();
    assert_eq!(
        claimed.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        [waits_returned.run_id]
    );

    assert!(store
        .run_finish(&claim_of(&executing), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    let decided = store.run_get(waits_executing.run_id).await.unwrap();
    assert_eq!(decided.state, RunState::Missed, "{decided:#?}");
    assert_eq!(decided.error.as_deref(), Some(SKIPPED));
    assert_eq!(decided.result, Some(json!({"skipped": "max_instances"})));
    assert!(decided.finished_at.is_some());
}

/// Runs left waiting while no run of their job runs (the holder ended
/// without deciding them) are decided by the sweep, by the end of the
/// job's last executed run; `among` limits it to some jobs.
async fn the_sweep_decides_runs_left_waiting(store: Store) {
    store.job_insert(&due("freed"), "test").await.unwrap();
    store.job_insert(&due("never-ran"), "test").await.unwrap();
    let done = trigger_and_claim(&store, "freed", "w1").await;
    assert!(store
        .run_finish(&claim_of(&done), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    let at = now();
    let next = Some(at + chrono::Duration::hours(1));
    fire(
        &store,
        &[
            fired("freed", at, RunState::Waiting, WAITING),
            fired(
                "never-ran",
                at - chrono::Duration::hours(1),
                RunState::Waiting,
                WAITING,
            ),
        ],
        &[advance("freed", next), advance("never-ran", next)],
    )
    .await;
    let waiting = |runs: Vec<RunRow>| {
        runs.into_iter()
            .find(|r| r.state == RunState::Waiting)
            .expect("a waiting run")
    };
    let freed = waiting(runs_of(&store, "freed").await);
    let never_ran = waiting(runs_of(&store, "never-ran").await);

    assert_eq!(
        store
            .run_settle_waiting(Some(&["other".to_string()]), 10)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store.run_get(freed.run_id).await.unwrap().state,
        RunState::Waiting
    );
    assert_eq!(store.run_settle_waiting(None, 10).await.unwrap(), 2);
    let freed = store.run_get(freed.run_id).await.unwrap();
    assert_eq!(
        freed.state,
        RunState::Queued,
        "its slot was free at its time: {freed:#?}"
    );
    let never_ran = store.run_get(never_ran.run_id).await.unwrap();
    assert_eq!(never_ran.state, RunState::Missed, "{never_ran:#?}");
    assert_eq!(never_ran.error.as_deref(), Some(SKIPPED));
    assert_eq!(store.run_settle_waiting(None, 10).await.unwrap(), 0);
}

conformance![
    runs_are_listed_newest_first_filtered_and_counted,
    a_manual_run_takes_one_of_the_jobs_slots,
    cancelling_a_queued_or_a_running_run,
    an_operator_override_sets_the_state_and_fences_the_worker,
    a_finish_decides_the_runs_waiting_for_its_slot,
    the_sweep_decides_runs_left_waiting,
];
