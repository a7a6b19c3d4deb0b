//! Jobs: insert, read, list, replace, pause and resume, delete.

use jobsd::store::{JobFilter, JobType, StoreError};

use super::*;
use crate::support::failure_record;

/// The ids of a listing's page, and the count of all matches.
async fn listed(store: &Store, filter: JobFilter) -> (Vec<String>, i64) {
    let (jobs, count) = store.job_list(&filter).await.unwrap();
    (jobs.into_iter().map(|j| j.job_id).collect(), count)
}

fn page(limit: i64, offset: i64) -> JobFilter {
    JobFilter {
        limit,
        offset,
        ..JobFilter::default()
    }
}

/// Every field of a definition reads back as written; a job_id taken
/// is a Conflict (and the stored job is kept), an unknown one NotFound.
async fn a_job_reads_back_as_written(store: Store) {
    let mut interval = hourly("every-hour");
    interval.kwargs = json!({"message": "hi", "nested": {"n": 1, "list": [1, "two", null]}});
    interval.timezone = "Europe/Berlin".into();
    interval.misfire_grace_ms = Some(5_000);
    interval.coalesce = false;
    interval.max_instances = 3;
    interval.lock_key = Some("k".into());
    interval.timeout_ms = Some(30_000);
    interval.max_retries = 2;
    interval.retry_backoff_ms = 1_500;
    interval.keep_runs = Some(7);
    interval.description = Some("every hour, on the hour's phase".into());
    interval.tags = vec!["b".into(), "a".into()];
    let mut cron = hourly("on-the-hour");
    cron.schedule_kind = ScheduleKind::Cron;
    cron.interval_ms = None;
    cron.cron = Some("0 * * * *".into());
    cron.state = JobState::Paused;
    cron.next_run_at = None;
    cron.source = "/etc/jobsd/jobs/cron.yaml".into();
    cron.failed_run_id = Some(Uuid::now_v7());
    for job in [&interval, &cron] {
        let before = Utc::now() - seconds(1);
        let inserted = store.job_insert(job, "test").await.unwrap();
        assert_eq!(inserted.definition(), *job);
        let read = store.job_get(&job.job_id).await.unwrap();
        assert_eq!(read.definition(), *job);
        assert_eq!(read.row_version, inserted.row_version);
        assert!(
            read.created_at >= before && read.created_at <= Utc::now(),
            "{read:?}"
        );
        assert!(read.updated_at >= read.created_at, "{read:?}");
        assert_eq!(read.last_run_id, None);
        assert_eq!(read.last_run_state, None);
        assert_eq!(counts(&read), json!({}));
        assert!(!read.has_queued_run() && !read.has_fired);
    }

    let mut again = interval.clone();
    again.handler = "sleep".into();
    let err = store.job_insert(&again, "test").await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.job_get("every-hour").await.unwrap().handler, "log");
    let err = store.job_get("nope").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

/// A listing is oldest first, filtered by type (failure records or
/// not), handler and state, paged; its count is of every match.
async fn jobs_are_listed_oldest_first_filtered_and_counted(store: Store) {
    let mut sleeper = hourly("b-sleep");
    sleeper.handler = "sleep".into();
    sleeper.kwargs = json!({"seconds": 1});
    let mut paused = hourly("c-paused");
    paused.state = JobState::Paused;
    paused.next_run_at = None;
    let record = failure_record("d-failure", json!({"exc_str": "boom"}));
    for job in [&hourly("a"), &sleeper, &paused, &record] {
        store.job_insert(job, "test").await.unwrap();
    }
    let all = ["a", "b-sleep", "c-paused", "d-failure"];
    assert_eq!(
        listed(&store, page(100, 0)).await,
        (all.map(String::from).to_vec(), 4)
    );
    let filtered = |f: fn(&mut JobFilter)| {
        let mut filter = page(100, 0);
        f(&mut filter);
        filter
    };
    assert_eq!(
        listed(&store, filtered(|f| f.job_type = JobType::Failed)).await,
        (vec!["d-failure".to_string()], 1)
    );
    assert_eq!(
        listed(&store, filtered(|f| f.job_type = JobType::User)).await,
        (
            vec!["a".to_string(), "b-sleep".into(), "c-paused".into()],
            3
        )
    );
    assert_eq!(
        listed(&store, filtered(|f| f.handler = Some("sleep".into()))).await,
        (vec!["b-sleep".to_string()], 1)
    );
    assert_eq!(
        listed(&store, filtered(|f| f.state = Some(JobState::Paused))).await,
        (vec!["c-paused".to_string(), "d-failure".into()], 2)
    );
    assert_eq!(
        listed(
            &store,
            filtered(|f| {
                f.state = Some(JobState::Running);
                f.job_type = JobType::User;
            })
        )
        .await,
        (vec!["a".to_string(), "b-sleep".into()], 2)
    );
    assert_eq!(
        listed(&store, page(2, 0)).await,
        (all[..2].iter().map(|s| s.to_string()).collect(), 4)
    );
    assert_eq!(
        listed(&store, page(2, 2)).await,
        (all[2..].iter().map(|s| s.to_string()).collect(), 4)
    );
    assert_eq!(listed(&store, page(2, 4)).await, (vec![], 4));
}

/// A job's row sums up its runs: the newest one, the counts by state,
/// whether one is queued, and whether the schedule has fired it.
async fn a_job_row_sums_up_its_runs(store: Store) {
    let mut job = hourly("j");
    job.max_instances = 2;
    store.job_insert(&job, "test").await.unwrap();
    let first = trigger_and_claim(&store, "j", "w1").await;
    assert!(store
        .run_finish(&claim_of(&first), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    let second = trigger(&store, "j").await;
    let row = store.job_get("j").await.unwrap();
    assert_eq!(row.last_run_id, Some(second.run_id));
    assert_eq!(row.last_run_state, Some(RunState::Queued));
    assert_eq!(row.last_run_scheduled_for, Some(second.scheduled_for));
    assert_eq!(row.last_run_started_at, None);
    assert_eq!(row.last_run_finished_at, None);
    assert_eq!(counts(&row), json!({"succeeded": 1, "queued": 1}));
    assert!(row.has_queued_run());
    assert!(!row.has_fired, "manual runs are not firings");
}

/// A replace writes over the version it read only: a write from an
/// older version is Stale and changes nothing; runs are kept.
async fn a_replace_applies_only_to_the_version_read(store: Store) {
    let job = hourly("j");
    let v1 = store.job_insert(&job, "test").await.unwrap().row_version;
    let run = trigger(&store, "j").await;
    let mut changed = job.clone();
    changed.kwargs = json!({"message": "changed"});
    changed.max_retries = 4;
    changed.next_run_at = Some(now() + chrono::Duration::hours(2));
    let row = store.job_replace(&changed, v1).await.unwrap();
    assert_eq!(row.definition(), changed);
    assert_ne!(row.row_version, v1);
    assert_eq!(
        store.job_get("j").await.unwrap().row_version,
        row.row_version
    );

    let mut lost = job.clone();
    lost.kwargs = json!({"message": "a lost update"});
    let err = store.job_replace(&lost, v1).await.unwrap_err();
    assert!(matches!(err, StoreError::Stale), "{err:?}");
    assert_eq!(store.job_get("j").await.unwrap().definition(), changed);
    assert_eq!(
        store.run_get(run.run_id).await.unwrap().state,
        RunState::Queued,
        "runs are kept"
    );
    let err = store
        .job_replace(&hourly("ghost"), row.row_version)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

/// Pausing and resuming are conditional on the version read, too.
async fn pause_and_resume_apply_only_to_the_version_read(store: Store) {
    let v1 = store
        .job_insert(&hourly("j"), "test")
        .await
        .unwrap()
        .row_version;
    let paused = store
        .job_set_state("j", JobState::Paused, None, v1)
        .await
        .unwrap();
    assert_eq!((paused.state, paused.next_run_at), (JobState::Paused, None));
    let err = store
        .job_set_state("j", JobState::Running, Some(now()), v1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Stale), "{err:?}");
    assert_eq!(store.job_get("j").await.unwrap().state, JobState::Paused);
    let next = now() + chrono::Duration::minutes(30);
    let resumed = store
        .job_set_state("j", JobState::Running, Some(next), paused.row_version)
        .await
        .unwrap();
    assert_eq!(
        (resumed.state, resumed.next_run_at),
        (JobState::Running, Some(next))
    );
    let err = store
        .job_set_state("nope", JobState::Paused, None, resumed.row_version)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

/// Deleting a job deletes its runs. A running one is cancelled instead:
/// it keeps its lock key until its handler has stopped, and is removed
/// once its outcome is written.
async fn a_deleted_jobs_runs_go_with_it(store: Store) {
    let mut keyed = hourly("keyed");
    keyed.lock_key = Some("k".into());
    store.job_insert(&keyed, "test").await.unwrap();
    store.job_insert(&hourly("plain"), "test").await.unwrap();
    let done = trigger_and_claim(&store, "keyed", "w1").await;
    assert!(store
        .run_finish(&claim_of(&done), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    let running = trigger_and_claim(&store, "keyed", "w1").await;
    let queued = trigger(&store, "plain").await;

    store.job_delete("plain").await.unwrap();
    assert!(matches!(
        store.job_get("plain").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.run_get(queued.run_id).await,
        Err(StoreError::NotFound)
    ));

    store.job_delete("keyed").await.unwrap();
    assert!(matches!(
        store.job_get("keyed").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.run_get(done.run_id).await,
        Err(StoreError::NotFound)
    ));
    let still = store.run_get(running.run_id).await.unwrap();
    assert_eq!(still.state, RunState::Running);
    assert!(still.cancel_requested, "{still:#?}");
    let locks = store.lock_list().await.unwrap();
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(
        (locks[0].lock_key.as_str(), locks[0].run_id),
        ("k", running.run_id)
    );
    let acks = store
        .run_heartbeat("w1", LEASE_MS, &[(claim_of(&running), None)])
        .await
        .unwrap();
    assert_eq!(acks.len(), 1);
    assert!(acks[0].cancel_requested, "its worker is told to stop it");

    assert!(store
        .run_finish(&claim_of(&running), &outcome(RunState::Cancelled))
        .await
        .unwrap());
    assert!(matches!(
        store.run_get(running.run_id).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.lock_list().await.unwrap().is_empty());
    let (_, left) = store
        .run_list(&RunFilter {
            limit: 10,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert!(matches!(
        store.job_delete("keyed").await,
        Err(StoreError::NotFound)
    ));
}

/// Deleting the failure records deletes them, and only them.
async fn deleting_the_failure_records_leaves_the_other_jobs(store: Store) {
    for job in [
        failure_record("failed-1", json!({"exc_str": "one"})),
        failure_record("failed-2", json!({"exc_str": "two"})),
        hourly("user"),
    ] {
        store.job_insert(&job, "test").await.unwrap();
    }
    let mut removed = store.job_delete_failed().await.unwrap();
    removed.sort();
    assert_eq!(removed, ["failed-1", "failed-2"]);
    assert_eq!(
        listed(&store, page(100, 0)).await,
        (vec!["user".to_string()], 1)
    );
    assert!(store.job_delete_failed().await.unwrap().is_empty());
}

/// Secrets in kwargs are stored and read back exactly as given, by the
/// job and by its runs: masking them is the API's business (`redact`),
/// never the store's, or a handler would be sent `"***"`.
async fn secrets_in_kwargs_are_stored_as_given(store: Store) {
    let mut job = hourly("with-secrets");
    job.handler = "http".into();
    job.kwargs = json!({
        "url": "http://127.0.0.1:1/",
        "headers": {"Authorization": "Bearer stored-secret", "Accept": "*/*"},
        "secret_headers": {"X-Token": "token-stored"},
    });
    store.job_insert(&job, "test").await.unwrap();
    assert_eq!(
        store.job_get("with-secrets").await.unwrap().kwargs,
        job.kwargs
    );
    let run = store
        .run_trigger(&ManualRun {
            job_id: job.job_id.clone(),
            handler: None,
            kwargs: None,
            reason: "test".into(),
        })
        .await
        .unwrap();
    assert_eq!(run.kwargs, job.kwargs);
    assert_eq!(store.run_get(run.run_id).await.unwrap().kwargs, job.kwargs);

    let version = store.job_get("with-secrets").await.unwrap().row_version;
    let mut changed = job.clone();
    changed.kwargs["secret_headers"]["X-Token"] = json!("token-replaced");
    let replaced = store.job_replace(&changed, version).await.unwrap();
    assert_eq!(replaced.kwargs, changed.kwargs);
    assert_eq!(
        store.job_get("with-secrets").await.unwrap().kwargs,
        changed.kwargs
    );
}

conformance![
    secrets_in_kwargs_are_stored_as_given,
    a_job_reads_back_as_written,
    jobs_are_listed_oldest_first_filtered_and_counted,
    a_job_row_sums_up_its_runs,
    a_replace_applies_only_to_the_version_read,
    pause_and_resume_apply_only_to_the_version_read,
    a_deleted_jobs_runs_go_with_it,
    deleting_the_failure_records_leaves_the_other_jobs,
];
