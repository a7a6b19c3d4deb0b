//! Bounded history: what pruning deletes and what it never touches, with
//! runs and jobs aged by raw SQL per backend (no interface method makes a
//! row old).

use jobsd::retention::{prunable_states, Maintenance, Pruned, Retention, RetentionConfig};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::support::failure_record;

/// Moves the creation and end of `runs` two hours into the past.
async fn age_runs(store: &Store, runs: &[Uuid]) {
    let ids = runs
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let us = 2 * 3_600 * 1_000_000_i64;
    let changed = execute_sql(
        store,
        &format!(
            "UPDATE runs SET created_at = created_at - interval '2 hours', \
             finished_at = finished_at - interval '2 hours' WHERE run_id IN ({ids})"
        ),
        &format!(
            "UPDATE runs SET created_at = created_at - {us}, finished_at = finished_at - {us} \
             WHERE run_id IN ({ids})"
        ),
    )
    .await;
    assert_eq!(changed, runs.len() as u64);
}

/// Moves the creation of job `job_id` two hours into the past.
async fn age_job(store: &Store, job_id: &str) {
    let us = 2 * 3_600 * 1_000_000_i64;
    let changed = execute_sql(
        store,
        &format!(
            "UPDATE jobs SET created_at = created_at - interval '2 hours' WHERE job_id = '{job_id}'"
        ),
        &format!("UPDATE jobs SET created_at = created_at - {us} WHERE job_id = '{job_id}'"),
    )
    .await;
    assert_eq!(changed, 1);
}

/// `hourly(job_id)` allowing ten runs at once (so manual runs pile up).
fn roomy(job_id: &str) -> NewJob {
    let mut job = hourly(job_id);
    job.max_instances = 10;
    job
}

/// Runs one manual run of `job_id` to `state`; returns it.
async fn finished(store: &Store, job_id: &str, state: RunState) -> Uuid {
    let run = trigger_and_claim(store, job_id, "w1").await;
    assert!(store
        .run_finish(&claim_of(&run), &outcome(state))
        .await
        .unwrap());
    run.run_id
}

fn ids(runs: &[RunRow]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = runs.iter().map(|r| r.run_id).collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

fn maintenance(store: &Store, retention: Retention, failure_retention: Retention) -> Maintenance {
    Maintenance::new(
        store.clone(),
        RetentionConfig {
            retention,
            failure_retention,
            every: Duration::from_secs(60),
            batch: 2,
        },
    )
}

const HOUR: Retention = Retention::For(Duration::from_secs(3_600));

/// Finished runs older than the cutoff go; queued, waiting and running runs
/// of any age stay, as do newer finished runs and the runs of a job with
/// `keep_runs` (which the age rule does not apply to).
async fn old_finished_runs_are_pruned_and_active_ones_never(store: Store) {
    store.job_insert(&roomy("j"), "test").await.unwrap();
    let old_done = finished(&store, "j", RunState::Succeeded).await;
    let old_cancelled = finished(&store, "j", RunState::Cancelled).await;
    let new_done = finished(&store, "j", RunState::Succeeded).await;
    let mut kept = roomy("kept");
    kept.keep_runs = Some(5);
    store.job_insert(&kept, "test").await.unwrap();
    let kept_old = finished(&store, "kept", RunState::Succeeded).await;
    let running = trigger_and_claim(&store, "j", "w1").await.run_id;
    let queued = trigger(&store, "j").await.run_id;
    store.job_insert(&due("w"), "test").await.unwrap();
    fire(
        &store,
        &[fired("w", now() - seconds(1), RunState::Waiting, WAITING)],
        &[advance("w", Some(now() + seconds(3_600)))],
    )
    .await;
    let waiting = runs_of(&store, "w").await;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].state, RunState::Waiting);
    let waiting = waiting[0].run_id;
    age_runs(
        &store,
        &[old_done, old_cancelled, running, queued, waiting, kept_old],
    )
    .await;

    let cutoff = now() - seconds(3_600);
    let states = prunable_states();
    assert_eq!(
        store
            .runs_prune_finished_before(cutoff, &states, 100)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        ids(&runs_of(&store, "j").await),
        sorted(vec![new_done, running, queued])
    );
    assert_eq!(ids(&runs_of(&store, "w").await), vec![waiting]);
    assert_eq!(ids(&runs_of(&store, "kept").await), vec![kept_old]);
    assert_eq!(
        store
            .runs_prune_finished_before(cutoff, &states, 100)
            .await
            .unwrap(),
        0
    );
}

/// A job with `keep_runs: 3` keeps its newest three finished runs, however
/// old, and loses the older ones; its queued run is not counted or touched.
async fn keep_runs_keeps_the_newest_finished(store: Store) {
    let mut job = roomy("k");
    job.keep_runs = Some(3);
    store.job_insert(&job, "test").await.unwrap();
    store.job_insert(&roomy("other"), "test").await.unwrap();
    let mut done = Vec::new();
    for _ in 0..5 {
        done.push(finished(&store, "k", RunState::Succeeded).await);
    }
    let other = finished(&store, "other", RunState::Succeeded).await;
    let queued = trigger(&store, "k").await.run_id;
    age_runs(&store, &done).await;
    assert_eq!(
        store.jobs_keeping_runs().await.unwrap(),
        vec![("k".to_string(), 3)]
    );
    let states = prunable_states();
    assert_eq!(
        store
            .runs_prune_beyond_newest("k", 3, &states, 100)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        ids(&runs_of(&store, "k").await),
        sorted(vec![done[2], done[3], done[4], queued])
    );
    assert_eq!(ids(&runs_of(&store, "other").await), vec![other]);
    assert_eq!(
        store
            .runs_prune_beyond_newest("k", 3, &states, 100)
            .await
            .unwrap(),
        0
    );
    // The maintenance pass applies it too, and the age rule does not:
    // the queued run ends, and the oldest of the three kept goes.
    let claimed = store.run_claim(&slots("w1", 10)).await.unwrap();
    assert_eq!(ids(&claimed), vec![queued]);
    assert!(store
        .run_finish(&claim_of(&claimed[0]), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    let pruned = maintenance(&store, HOUR, Retention::KeepAll)
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(pruned.runs, 1, "{pruned:?}");
    assert_eq!(
        ids(&runs_of(&store, "k").await),
        sorted(vec![done[3], done[4], queued])
    );
}

/// A completed one-shot job left without runs is removed; a completed one
/// with a run, a paused or scheduled one-shot job without runs, and a
/// failure record are kept.
async fn completed_one_shot_jobs_without_runs_are_removed(store: Store) {
    for id in ["done", "done-with-run"] {
        let claimed = store
            .job_insert_many(&[once_due(id)], &slots("w1", 1))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(store
            .run_finish(&claim_of(&claimed[0]), &outcome(RunState::Succeeded))
            .await
            .unwrap());
        assert_eq!(store.job_get(id).await.unwrap().state, JobState::Completed);
    }
    let old_run = runs_of(&store, "done").await.remove(0).run_id;
    age_runs(&store, &[old_run]).await;
    let mut paused = once_due("paused-once");
    paused.state = JobState::Paused;
    paused.next_run_at = None;
    let mut later = once_due("later-once");
    later.next_run_at = Some(now() + seconds(3_600));
    for job in [paused, later, failure_record("failed", json!({}))] {
        store.job_insert(&job, "test").await.unwrap();
    }

    let pruned = maintenance(&store, HOUR, Retention::KeepAll)
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        pruned,
        Pruned {
            runs: 1,
            jobs: 1,
            failure_records: 0,
            ..Pruned::default()
        }
    );
    let err = store.job_get("done").await.unwrap_err();
    assert!(matches!(err, jobsd::store::StoreError::NotFound), "{err:?}");
    for id in ["done-with-run", "paused-once", "later-once", "failed"] {
        store.job_get(id).await.unwrap();
    }
    assert_eq!(
        store.jobs_prune_completed_without_runs(100).await.unwrap(),
        0
    );
}

/// Failure records stay without `--failure-retention`; with it, those
/// older than it go, and the newer ones and other old jobs stay.
async fn failure_records_follow_their_own_retention(store: Store) {
    for job in [
        failure_record("old-failure", json!({})),
        failure_record("new-failure", json!({})),
        hourly("old-user-job"),
    ] {
        store.job_insert(&job, "test").await.unwrap();
    }
    age_job(&store, "old-failure").await;
    age_job(&store, "old-user-job").await;
    let kept = maintenance(&store, HOUR, Retention::KeepAll)
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(kept, Pruned::default());
    store.job_get("old-failure").await.unwrap();

    let pruned = maintenance(&store, HOUR, HOUR)
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(pruned.failure_records, 1, "{pruned:?}");
    assert!(store.job_get("old-failure").await.is_err());
    store.job_get("new-failure").await.unwrap();
    store.job_get("old-user-job").await.unwrap();
    assert_eq!(
        store
            .jobs_prune_failure_records_before(now() - seconds(3_600), 100)
            .await
            .unwrap(),
        0
    );
}

/// One call prunes at most its limit and says how many; a maintenance pass
/// loops over full batches until nothing is left.
async fn a_batch_prunes_at_most_its_limit(store: Store) {
    store.job_insert(&roomy("j"), "test").await.unwrap();
    let mut done = Vec::new();
    for _ in 0..5 {
        done.push(finished(&store, "j", RunState::Succeeded).await);
    }
    age_runs(&store, &done).await;
    let cutoff = now() - seconds(3_600);
    let states = prunable_states();
    let mut sizes = Vec::new();
    for _ in 0..3 {
        sizes.push(
            store
                .runs_prune_finished_before(cutoff, &states, 2)
                .await
                .unwrap(),
        );
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert!(runs_of(&store, "j").await.is_empty());

    let mut more = Vec::new();
    for _ in 0..5 {
        more.push(finished(&store, "j", RunState::Succeeded).await);
    }
    age_runs(&store, &more).await;
    // batch 2: three statements in one pass.
    let pruned = maintenance(&store, HOUR, Retention::KeepAll)
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(pruned.runs, 5);
    assert!(runs_of(&store, "j").await.is_empty());
}

/// Two replicas pruning at once delete each old run once between them,
/// and neither fails.
async fn concurrent_prunes_share_the_work(store: Store) {
    store.job_insert(&roomy("j"), "test").await.unwrap();
    let mut done = Vec::new();
    for _ in 0..20 {
        done.push(finished(&store, "j", RunState::Succeeded).await);
    }
    age_runs(&store, &done).await;
    let cutoff = now() - seconds(3_600);
    let states = prunable_states();
    let (a, b) = tokio::join!(
        store.runs_prune_finished_before(cutoff, &states, 15),
        store.runs_prune_finished_before(cutoff, &states, 15)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let rest = store
        .runs_prune_finished_before(cutoff, &states, 15)
        .await
        .unwrap();
    assert_eq!(a + b + rest, 20, "{a} + {b} + {rest}");
    assert!(runs_of(&store, "j").await.is_empty());
}

/// `--retention 0` (and no failure retention) keeps everything.
async fn retention_zero_keeps_everything(store: Store) {
    store.job_insert(&roomy("j"), "test").await.unwrap();
    let old = finished(&store, "j", RunState::Succeeded).await;
    age_runs(&store, &[old]).await;
    let claimed = store
        .job_insert_many(&[once_due("once")], &slots("w1", 1))
        .await
        .unwrap();
    assert!(store
        .run_finish(&claim_of(&claimed[0]), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    age_runs(&store, &[claimed[0].run_id]).await;
    store
        .job_insert(&failure_record("failed", json!({})), "test")
        .await
        .unwrap();
    age_job(&store, "failed").await;
    let pruned = maintenance(&store, Retention::KeepAll, Retention::KeepAll)
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(pruned, Pruned::default());
    assert_eq!(ids(&runs_of(&store, "j").await), vec![old]);
    assert_eq!(runs_of(&store, "once").await.len(), 1);
    store.job_get("failed").await.unwrap();
}

conformance![
    old_finished_runs_are_pruned_and_active_ones_never,
    keep_runs_keeps_the_newest_finished,
    completed_one_shot_jobs_without_runs_are_removed,
    failure_records_follow_their_own_retention,
    a_batch_prunes_at_most_its_limit,
    concurrent_prunes_share_the_work,
    retention_zero_keeps_everything,
    events_follow_the_runs_retention,
];

/// The maintenance pass prunes events older than `--retention`, in
/// batches, and keeps the newer ones; `--retention 0` keeps them all.
async fn events_follow_the_runs_retention(store: Store) {
    for id in ["e1", "e2", "e3"] {
        store.job_insert(&hourly(id), "test").await.unwrap();
    }
    store.job_insert(&hourly("new"), "test").await.unwrap();
    let all = jobsd::store::EventQuery {
        limit: 100,
        ..Default::default()
    };
    let visible = || async {
        let page = store.events_page(&all).await.unwrap();
        (page.events.len() == 4).then_some(())
    };
    crate::support::wait_for("4 events", Duration::from_secs(10), visible).await;
    // The first three jobs' events age two hours (on PostgreSQL each
    // insert wrote its own row of events).
    let us = 2 * 3_600 * 1_000_000_i64;
    let aged = execute_sql(
        &store,
        "UPDATE events SET at = at - interval '2 hours' \
         WHERE keys && ARRAY['j:e1', 'j:e2', 'j:e3']",
        &format!("UPDATE events SET at = at - {us} WHERE job_id IN ('e1', 'e2', 'e3')"),
    )
    .await;
    assert_eq!(aged, 3);
    let kept_all = maintenance(&store, Retention::KeepAll, Retention::KeepAll)
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(kept_all.events, 0);
    let pruned = maintenance(&store, HOUR, Retention::KeepAll)
        .run_once(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(pruned.events, 3);
    let left = store.events_page(&all).await.unwrap().events;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].job_id.as_deref(), Some("new"));
}
