//! Firing: runs made at a job's creation, due-job claims, exactly once per
//! scheduled time, missed times, service pause.

use jobsd::store::StoreError;

use super::*;

/// A one-shot job due when it is created gets its run in the same
/// write: queued for any worker. Not one due later, nor one past its
/// misfire grace (the scheduler records that one missed), nor while the
/// service is paused: those keep their time.
async fn a_one_shot_job_due_at_creation_gets_its_run(store: Store) {
    let job = once_due("now");
    let at = job.next_run_at.unwrap();
    let row = store.job_insert(&job, "creator").await.unwrap();
    assert_eq!(row.next_run_at, None, "its one time is taken");
    assert!(row.has_fired && row.has_queued_run(), "{row:?}");
    let runs = runs_of(&store, "now").await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert_eq!(
        (run.state, run.trigger, run.scheduled_for, run.attempt),
        (RunState::Queued, Trigger::Schedule, at, 0)
    );
    assert!(run.run_after <= Utc::now());
    assert_steps(run, &[("", "queued", "due when created")]);
    // The firing instance, not the lease (PostgreSQL wrote "0" here).
    assert_eq!(run.history[0]["instance"], "creator", "{}", run.history);
    let claimed = store.run_claim(&slots("w1", 10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].run_id, run.run_id);

    let mut later = once_due("later");
    later.next_run_at = Some(now() + chrono::Duration::hours(1));
    let mut late = once_due("late");
    late.next_run_at = Some(now() - seconds(10));
    late.misfire_grace_ms = Some(1_000);
    for job in [&later, &late] {
        let row = store.job_insert(job, "creator").await.unwrap();
        assert_eq!(
            row.next_run_at, job.next_run_at,
            "{} keeps its time",
            job.job_id
        );
        assert!(
            runs_of(&store, &job.job_id).await.is_empty(),
            "{}",
            job.job_id
        );
    }
    store.service_set_paused(true).await.unwrap();
    let held = once_due("held");
    let row = store.job_insert(&held, "creator").await.unwrap();
    assert_eq!(
        row.next_run_at, held.next_run_at,
        "paused: it waits for the resume"
    );
    assert!(runs_of(&store, "held").await.is_empty());
}

/// Creating jobs together is all or none. Their due runs are claimed
/// into the slots offered, as a claim would (runs with a lock key are
/// left to the claim, which checks the key); the others are queued.
async fn creation_claims_due_runs_into_the_slots_offered(store: Store) {
    let mut keyed = once_due("keyed");
    keyed.lock_key = Some("k".into());
    let jobs = [
        once_due("a"),
        keyed,
        once_due("b"),
        once_due("c"),
        hourly("later"),
    ];
    let before = Utc::now();
    let claimed = store.job_insert_many(&jobs, &slots("w1", 2)).await.unwrap();
    let mut ids: Vec<&str> = claimed.iter().map(|r| r.job_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"], "{claimed:#?}");
    for run in &claimed {
        assert_eq!((run.state, run.attempt), (RunState::Running, 1));
        assert_eq!(run.instance.as_deref(), Some("w1"));
        let started = run.started_at.expect("started");
        assert_near(started, before, seconds(5));
        assert_near(
            run.lease_expires_at.expect("leased"),
            started + chrono::Duration::milliseconds(LEASE_MS),
            seconds(1),
        );
        assert_steps(
            run,
            &[
                ("", "queued", "due when created"),
                ("queued", "running", "claimed (attempt 1)"),
            ],
        );
    }
    for id in ["keyed", "c"] {
        let runs = runs_of(&store, id).await;
        assert_eq!(runs.len(), 1, "{id}: {runs:#?}");
        assert_eq!(runs[0].state, RunState::Queued, "{id}");
    }
    assert!(runs_of(&store, "later").await.is_empty());

    let clash = [once_due("new"), hourly("a")];
    let err = store
        .job_insert_many(&clash, &ClaimSlots::none("w1"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(
        matches!(store.job_get("new").await, Err(StoreError::NotFound)),
        "all or none"
    );
    assert!(runs_of(&store, "new").await.is_empty());
}

/// A run the firing claims for itself starts when the batch commits, not
/// when its jobs were read: a previous run that ended in between (its end
/// seen by those reads) must not seem to overlap it (bug 6's flake).
async fn a_run_claimed_by_the_firing_starts_when_the_batch_commits(store: Store) {
    store.job_insert(&due("tick"), "test").await.unwrap();
    let batch = store.due_jobs_claim(10).await.unwrap();
    let at = batch.jobs[0].next_run_at;
    // The database keeps microseconds.
    let read = Utc::now() - chrono::Duration::microseconds(1);
    let claimed = batch
        .commit(
            &[fired("tick", at, RunState::Queued, "due")],
            &[advance("tick", Some(at + seconds(3600)))],
            &slots("w1", 10),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:#?}");
    let started = claimed[0].started_at.expect("started");
    assert!(started >= read, "started {started}, jobs read by {read}");
    assert!(started <= Utc::now());
}

/// A claim takes the jobs whose time has come, earliest first, up to
/// its limit, with what the planner needs of them.
async fn a_claim_takes_the_earliest_due_jobs_up_to_its_limit(store: Store) {
    let mut jobs = Vec::new();
    for (id, ago) in [("c", 3), ("a", 2), ("b", 1)] {
        let mut job = due(id);
        job.next_run_at = Some(now() - seconds(ago));
        job.misfire_grace_ms = Some(60_000);
        job.coalesce = false;
        job.max_instances = 2;
        job.timezone = "Europe/Paris".into();
        store.job_insert(&job, "test").await.unwrap();
        jobs.push(job);
    }
    store.job_insert(&hourly("later"), "test").await.unwrap();
    let batch = store.due_jobs_claim(2).await.unwrap();
    let mut got: Vec<(&str, DateTime<Utc>)> = batch
        .jobs
        .iter()
        .map(|j| (j.job_id.as_str(), j.next_run_at))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("a", jobs[1].next_run_at.unwrap()),
            ("c", jobs[0].next_run_at.unwrap())
        ]
    );
    for due in &batch.jobs {
        let job = jobs.iter().find(|j| j.job_id == due.job_id).unwrap();
        assert_eq!(
            (
                due.schedule_kind,
                due.interval_ms,
                due.cron.as_deref(),
                due.timezone.as_str()
            ),
            (job.schedule_kind, job.interval_ms, None, "Europe/Paris")
        );
        assert_eq!(
            (
                due.start_at,
                due.misfire_grace_ms,
                due.coalesce,
                due.max_instances
            ),
            (job.start_at, Some(60_000), false, 2)
        );
        assert!(due.db_now >= due.next_run_at);
        assert_near(due.db_now, Utc::now(), seconds(5));
    }
}

/// A due job comes with the counts of its runs that hold or wait for
/// one of its slots.
async fn a_due_job_carries_the_counts_of_its_active_runs(store: Store) {
    let mut job = due("j");
    job.max_instances = 4;
    store.job_insert(&job, "test").await.unwrap();
    trigger_and_claim(&store, "j", "w1").await;
    trigger(&store, "j").await;
    let batch = store.due_jobs_claim(10).await.unwrap();
    assert_eq!(batch.jobs.len(), 1);
    let counted = &batch.jobs[0].runs;
    assert_eq!(
        (counted.active, counted.running, counted.waiting),
        (2, 1, 0),
        "{counted:?}"
    );
    let at = batch.jobs[0].next_run_at;
    // Stays due, a millisecond later, for the next claim.
    let next = at + chrono::Duration::milliseconds(1);
    batch
        .commit(
            &[fired("j", at, RunState::Waiting, WAITING)],
            &[advance("j", Some(next))],
            &ClaimSlots::none("scheduler"),
        )
        .await
        .unwrap();
    let batch = store.due_jobs_claim(10).await.unwrap();
    assert_eq!(batch.jobs.len(), 1);
    assert_eq!(batch.jobs[0].next_run_at, next);
    let counted = &batch.jobs[0].runs;
    assert_eq!(
        (counted.active, counted.running, counted.waiting),
        (2, 1, 1),
        "{counted:?}"
    );
    assert_eq!(counted.taken(), 3);
}

/// Exactly once per scheduled time: while one claimer fires a job no
/// other gets it, and a time fired once is never fired again, even when
/// the job comes due at that time again.
async fn each_scheduled_time_fires_exactly_once(store: Store) {
    let job = due("j");
    let at = job.next_run_at.unwrap();
    store.job_insert(&job, "test").await.unwrap();
    let batch = store.due_jobs_claim(10).await.unwrap();
    let got: Vec<(&str, DateTime<Utc>)> = batch
        .jobs
        .iter()
        .map(|j| (j.job_id.as_str(), j.next_run_at))
        .collect();
    assert_eq!(got, [("j", at)]);
    // A second scheduler meanwhile: PostgreSQL skips the locked job, the
    // embedded store's one writer waits for the first batch.
    let other = store.clone();
    let second = tokio::spawn(async move { other.due_jobs_claim(10).await });
    let next = at + chrono::Duration::hours(1);
    let claimed = batch
        .commit(
            &[fired("j", at, RunState::Queued, "due")],
            &[advance("j", Some(next))],
            &ClaimSlots::none("scheduler"),
        )
        .await
        .unwrap();
    assert!(
        claimed.is_empty(),
        "nothing claimed for a claimer without slots"
    );
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second claim answers")
        .unwrap()
        .unwrap();
    assert!(second.jobs.is_empty(), "fired already: {:?}", second.jobs);
    drop(second);

    let row = store.job_get("j").await.unwrap();
    assert_eq!(row.next_run_at, Some(next));
    assert!(row.has_fired);
    // A stale write sets the time back: firing it again adds no run.
    let mut back = job.clone();
    back.next_run_at = Some(at);
    store.job_replace(&back, row.row_version).await.unwrap();
    fire(
        &store,
        &[fired("j", at, RunState::Queued, "due again")],
        &[advance("j", Some(next))],
    )
    .await;
    let runs = runs_of(&store, "j").await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(
        (runs[0].scheduled_for, runs[0].trigger),
        (at, Trigger::Schedule)
    );
    assert_steps(&runs[0], &[("", "queued", "due")]);
    assert_eq!(store.job_get("j").await.unwrap().next_run_at, Some(next));
}

/// The times a firing missed are recorded: a `missed` run with the
/// planner's error and result, which is never run. A one-shot job whose
/// only time was missed is completed.
async fn missed_times_are_recorded_with_their_error_and_result(store: Store) {
    let mut job = once_due("late");
    job.next_run_at = Some(now() - seconds(10));
    job.misfire_grace_ms = Some(1_000);
    store.job_insert(&job, "test").await.unwrap();
    let at = job.next_run_at.unwrap();
    let reason = format!("missed: {at} was more than misfire_grace_time (1s) ago");
    let result = json!({"missed_count": 1, "more_not_counted": false, "first_missed": at, "last_missed": at});
    let mut run = fired("late", at, RunState::Missed, &reason);
    run.result = Some(result.clone());
    let completes = JobAdvance {
        job_id: "late".into(),
        next_run_at: None,
        complete: true,
    };
    assert!(fire(&store, &[run], &[completes]).await.is_empty());

    let runs = runs_of(&store, "late").await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let missed = &runs[0];
    assert_eq!(
        (missed.state, missed.scheduled_for, missed.attempt),
        (RunState::Missed, at, 0)
    );
    assert_eq!(missed.error.as_deref(), Some(reason.as_str()));
    assert_eq!(missed.result, Some(result));
    assert_eq!(missed.started_at, None);
    assert!(missed.finished_at.is_some(), "{missed:#?}");
    assert_steps(missed, &[("", "missed", &reason)]);
    let row = store.job_get("late").await.unwrap();
    assert_eq!((row.state, row.next_run_at), (JobState::Completed, None));
    assert!(
        store.run_claim(&slots("w1", 10)).await.unwrap().is_empty(),
        "never run"
    );
}

/// While the service is paused nothing is due: claims get no job and
/// there is no next due time to wait for. Resumed, the job is due again.
async fn a_paused_service_fires_nothing_until_resumed(store: Store) {
    assert!(!store.service_paused().await.unwrap());
    assert_eq!(
        store.due_jobs_next().await.unwrap(),
        None,
        "nothing scheduled"
    );
    let job = due("j");
    store.job_insert(&job, "test").await.unwrap();
    store.service_set_paused(true).await.unwrap();
    assert!(store.service_paused().await.unwrap());
    assert!(store.due_jobs_claim(10).await.unwrap().jobs.is_empty());
    assert_eq!(store.due_jobs_next().await.unwrap(), None);

    store.service_set_paused(false).await.unwrap();
    assert!(!store.service_paused().await.unwrap());
    let next = store.due_jobs_next().await.unwrap().expect("a due job");
    assert_eq!(
        (next.at, next.wait),
        (job.next_run_at.unwrap(), Duration::ZERO)
    );
    let batch = store.due_jobs_claim(10).await.unwrap();
    assert_eq!(batch.jobs.len(), 1);
    drop(batch);

    store.job_delete("j").await.unwrap();
    let later = hourly("later");
    store.job_insert(&later, "test").await.unwrap();
    let next = store
        .due_jobs_next()
        .await
        .unwrap()
        .expect("a scheduled job");
    assert_eq!(next.at, later.next_run_at.unwrap());
    assert!(
        next.wait > Duration::from_secs(3590) && next.wait <= Duration::from_secs(3600),
        "{next:?}"
    );
    assert!(
        store.due_jobs_claim(10).await.unwrap().jobs.is_empty(),
        "not due yet"
    );
}

conformance![
    a_one_shot_job_due_at_creation_gets_its_run,
    creation_claims_due_runs_into_the_slots_offered,
    a_run_claimed_by_the_firing_starts_when_the_batch_commits,
    a_claim_takes_the_earliest_due_jobs_up_to_its_limit,
    a_due_job_carries_the_counts_of_its_active_runs,
    each_scheduled_time_fires_exactly_once,
    missed_times_are_recorded_with_their_error_and_result,
    a_paused_service_fires_nothing_until_resumed,
];
