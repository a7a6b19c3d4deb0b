//! The queue as the stats read it (`Store::stats`), which the metrics'
//! `jobsd_runs_queued` and `jobsd_oldest_queued_run_age_seconds` serve:
//! queued runs due now are counted apart from those still in a backoff.

use super::*;

/// Two runs due now, one retry waiting out a minute's backoff, one
/// running: two due, three queued, one running.
async fn stats_count_due_queued_runs_apart_from_backoffs(store: Store) {
    let mut job = hourly("q");
    job.max_instances = 10;
    store.job_insert(&job, "me").await.unwrap();
    let empty = store.stats().await.unwrap();
    assert_eq!(empty.due_queued, 0);
    assert_eq!(empty.oldest_due_run_after, None);

    let retried = trigger_and_claim(&store, "q", "me").await;
    assert!(store
        .run_retry(&claim_of(&retried), &retry(60_000, "boom"))
        .await
        .unwrap());
    let running = trigger_and_claim(&store, "q", "me").await;
    assert_eq!(running.state, RunState::Running);
    let first = trigger(&store, "q").await;
    trigger(&store, "q").await;

    let stats = store.stats().await.unwrap();
    assert_eq!(stats.due_queued, 2, "the retry in its backoff is not due");
    let queued: i64 = stats
        .runs
        .iter()
        .filter(|(s, _)| *s == RunState::Queued)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(queued, 3, "queued, due or not");
    let oldest = stats.oldest_due_run_after.expect("a run is due");
    assert_near(oldest, first.run_after, chrono::Duration::milliseconds(1));

    // Claimed, they are no longer queued.
    let claimed = store.run_claim(&slots("me", 10)).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.due_queued, 0);
    assert_eq!(stats.oldest_due_run_after, None);
}

/// sqlx's pool counts: every open connection is idle or in use.
async fn pool_connections_add_up_to_the_open_ones(store: Store) {
    store.ping().await.unwrap();
    let pool = store.pool_connections();
    assert!(pool.idle + pool.in_use >= 1, "{pool:?}");
    store.stats().await.unwrap();
    let after = store.pool_connections();
    assert!(after.idle >= 1, "returned to the pool: {after:?}");
}

conformance![
    stats_count_due_queued_runs_apart_from_backoffs,
    pool_connections_add_up_to_the_open_ones
];
