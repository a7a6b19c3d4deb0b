//! Jobs that default-job files own: the upsert the loader plans, and the
//! release of jobs whose file is gone.

use jobsd::store::{FileJobPlan, FileUpsert, FileUpsertResult, StoreError};

use super::*;

/// The job a file at `source` defines.
fn file_job(job_id: &str, source: &str, message: &str) -> NewJob {
    let mut job = hourly(job_id);
    job.source = source.into();
    job.kwargs = json!({"message": message});
    job
}

fn write(job: &NewJob, file_state: JobState) -> FileJobPlan {
    FileJobPlan::Write {
        job: Box::new(job.clone()),
        file_state,
    }
}

fn outcome_only(outcome: FileUpsert) -> FileUpsertResult {
    FileUpsertResult {
        outcome,
        released: vec![],
    }
}

/// Upserts `job` as its file declares it, running.
async fn load(store: &Store, job: &NewJob) -> FileUpsertResult {
    store
        .job_upsert_from_file(&job.job_id, |_| write(job, JobState::Running))
        .await
        .unwrap()
}

/// A file's job is inserted, kept when unchanged, updated or refused,
/// as the plan decides from the stored row it is shown (with the state
/// the file declared when last applied, stored beside it).
async fn a_file_job_is_inserted_kept_updated_or_refused(store: Store) {
    let src = "/srv/jobs/a.yaml";
    let v1 = file_job("a", src, "one");
    let result = store
        .job_upsert_from_file("a", |row| {
            assert!(row.is_none(), "no job yet: {row:?}");
            write(&v1, JobState::Running)
        })
        .await
        .unwrap();
    assert_eq!(result, outcome_only(FileUpsert::Inserted));
    assert_eq!(store.job_get("a").await.unwrap().definition(), v1);
    assert_eq!(
        store.job_file_state("a").await.unwrap(),
        Some(JobState::Running)
    );

    let result = store
        .job_upsert_from_file("a", |row| {
            let row = row.expect("the stored job");
            assert_eq!(row.file_state, Some(JobState::Running));
            assert_eq!(row.row.definition(), v1);
            FileJobPlan::Keep
        })
        .await
        .unwrap();
    assert_eq!(result, outcome_only(FileUpsert::Unchanged));

    let mut v2 = file_job("a", src, "two");
    v2.state = JobState::Paused;
    v2.next_run_at = None;
    let result = store
        .job_upsert_from_file("a", |_| write(&v2, JobState::Paused))
        .await
        .unwrap();
    assert_eq!(result, outcome_only(FileUpsert::Updated));
    assert_eq!(store.job_get("a").await.unwrap().definition(), v2);
    assert_eq!(
        store.job_file_state("a").await.unwrap(),
        Some(JobState::Paused)
    );

    let result = store
        .job_upsert_from_file("a", |_| FileJobPlan::Refuse("it is broken".into()))
        .await
        .unwrap();
    assert_eq!(
        result,
        outcome_only(FileUpsert::Refused("it is broken".into()))
    );
    assert_eq!(
        store.job_get("a").await.unwrap().definition(),
        v2,
        "left alone"
    );

    // A job made by the API has no file state; a file may take it over.
    store.job_insert(&hourly("api"), "test").await.unwrap();
    let mine = file_job("api", "/srv/jobs/api.yaml", "mine");
    let result = store
        .job_upsert_from_file("api", |row| {
            assert_eq!(row.expect("the API's job").file_state, None);
            write(&mine, JobState::Running)
        })
        .await
        .unwrap();
    assert_eq!(result, outcome_only(FileUpsert::Updated));
    assert_eq!(store.job_get("api").await.unwrap().definition(), mine);
    assert_eq!(
        store.job_file_state("api").await.unwrap(),
        Some(JobState::Running)
    );
}

/// A file that now defines another job lets go of its old one: paused,
/// and no longer backed by a file. Other files' jobs are left alone.
async fn a_file_defining_another_job_releases_its_old_one(store: Store) {
    load(&store, &file_job("old", "/srv/jobs/a.yaml", "x")).await;
    load(&store, &file_job("other", "/srv/jobs/b.yaml", "x")).await;
    let result = load(&store, &file_job("new", "/srv/jobs/a.yaml", "x")).await;
    assert_eq!(
        result,
        FileUpsertResult {
            outcome: FileUpsert::Inserted,
            released: vec!["old".into()]
        }
    );
    let old = store.job_get("old").await.unwrap();
    assert_eq!((old.state, old.next_run_at), (JobState::Paused, None));
    assert_eq!(store.job_file_state("old").await.unwrap(), None);
    let other = store.job_get("other").await.unwrap();
    assert_eq!(other.state, JobState::Running);
    assert_eq!(
        store.job_file_state("other").await.unwrap(),
        Some(JobState::Running)
    );
}

/// The jobs whose file is gone from a directory are let go of once:
/// paused and no longer backed by a file. Jobs of other directories and
/// of the API are left alone.
async fn jobs_of_removed_files_are_released_once(store: Store) {
    load(&store, &file_job("a", "/d/a.yaml", "x")).await;
    load(&store, &file_job("b", "/d/b.yaml", "x")).await;
    load(&store, &file_job("c", "/e/c.yaml", "x")).await;
    store.job_insert(&hourly("api"), "test").await.unwrap();
    let present = ["/d/a.yaml".to_string()];
    assert_eq!(
        store.job_release_files("/d/", &present).await.unwrap(),
        ["b"]
    );
    let b = store.job_get("b").await.unwrap();
    assert_eq!((b.state, b.next_run_at), (JobState::Paused, None));
    assert_eq!(store.job_file_state("b").await.unwrap(), None);
    for id in ["a", "c"] {
        assert_eq!(
            store.job_get(id).await.unwrap().state,
            JobState::Running,
            "{id}"
        );
        assert_eq!(
            store.job_file_state(id).await.unwrap(),
            Some(JobState::Running),
            "{id}"
        );
    }
    assert!(
        store
            .job_release_files("/d/", &present)
            .await
            .unwrap()
            .is_empty(),
        "once"
    );
    assert_eq!(store.job_release_files("/d/", &[]).await.unwrap(), ["a"]);
    assert_eq!(store.job_get("api").await.unwrap().state, JobState::Running);
    assert_eq!(store.job_file_state("api").await.unwrap(), None);
    assert!(matches!(
        store.job_file_state("nope").await,
        Err(StoreError::NotFound)
    ));
}

conformance![
    a_file_job_is_inserted_kept_updated_or_refused,
    a_file_defining_another_job_releases_its_old_one,
    jobs_of_removed_files_are_released_once,
];
