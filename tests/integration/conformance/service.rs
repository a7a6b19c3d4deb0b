//! The store itself, the replicas registered in it, and its notices.

use jobsd::store::notify::FireHint;

use super::*;

/// Migrations apply again harmlessly, the store answers a ping, and its
/// clock reads now.
async fn migrations_are_idempotent_and_the_clock_is_now(store: Store) {
    store.migrate().await.expect("migrates again");
    store.ping().await.unwrap();
    let before = Utc::now();
    let t = store.now().await.unwrap();
    let after = Utc::now();
    assert!(
        t >= before - seconds(1) && t <= after + seconds(1),
        "{before} {t} {after}"
    );
}

/// A heartbeat registers a replica or refreshes it; the list shows each
/// one (by name), whether it is alive and how many runs it executes;
/// silent ones are pruned, and a removed one is gone.
async fn instances_register_heartbeat_and_are_pruned(store: Store) {
    assert!(store.instance_list(60_000).await.unwrap().is_empty());
    store
        .instance_heartbeat("b", "1.0.0", Some("127.0.0.1:8081"), 60_000)
        .await
        .unwrap();
    store
        .instance_heartbeat("a", "1.0.0", None, 60_000)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    store
        .instance_heartbeat("a", "1.1.0", Some("127.0.0.1:8080"), 60_000)
        .await
        .unwrap();
    store.job_insert(&hourly("j"), "test").await.unwrap();
    trigger_and_claim(&store, "j", "a").await;

    let list = store.instance_list(60_000).await.unwrap();
    let shown: Vec<(&str, &str, Option<&str>, bool, i64)> = list
        .iter()
        .map(|i| {
            (
                i.name.as_str(),
                i.version.as_str(),
                i.address.as_deref(),
                i.alive,
                i.running_runs,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("a", "1.1.0", Some("127.0.0.1:8080"), true, 1),
            ("b", "1.0.0", Some("127.0.0.1:8081"), true, 0),
        ]
    );
    assert!(
        list[0].started_at < list[0].last_heartbeat,
        "refreshed, started before: {list:?}"
    );
    assert_near(list[0].last_heartbeat, Utc::now(), seconds(5));

    tokio::time::sleep(Duration::from_millis(100)).await;
    let list = store.instance_list(50).await.unwrap();
    assert!(list.iter().all(|i| !i.alive), "silent for 100 ms: {list:?}");
    // A's heartbeat prunes b, silent for longer than 50 ms.
    store
        .instance_heartbeat("a", "1.1.0", Some("127.0.0.1:8080"), 50)
        .await
        .unwrap();
    let list = store.instance_list(60_000).await.unwrap();
    assert_eq!(
        list.iter()
            .map(|i| (i.name.as_str(), i.alive))
            .collect::<Vec<_>>(),
        [("a", true)]
    );
    store.instance_remove("a").await.unwrap();
    assert!(store.instance_list(60_000).await.unwrap().is_empty());
}

/// A listener hears what changed: the service switch, a job's next
/// time, runs queued, a running run to cancel, a notice sent by hand.
async fn a_listener_hears_the_notices_of_changes(store: Store) {
    let mut listener = Some(store.listen().await.unwrap());
    store.service_set_paused(true).await.unwrap();
    notice_where(&mut listener, |n| n.jobs == Some(FireHint::Recheck)).await;
    store.service_set_paused(false).await.unwrap();
    notice_where(&mut listener, |n| n.jobs == Some(FireHint::Recheck)).await;

    let job = hourly("j");
    let next = job.next_run_at.unwrap().timestamp_millis();
    store.job_insert(&job, "test").await.unwrap();
    notice_where(&mut listener, |n| {
        n.jobs == Some(FireHint::EarliestAt(next))
    })
    .await;
    let queued = trigger(&store, "j").await;
    notice_where(&mut listener, |n| n.runs_queued).await;
    assert_eq!(store.run_claim(&slots("w1", 10)).await.unwrap().len(), 1);
    store.run_cancel(queued.run_id, "stop").await.unwrap();
    notice_where(&mut listener, |n| n.cancel == [queued.run_id]).await;
    let id = Uuid::now_v7();
    store.notify(&Notice::cancel(id)).await.unwrap();
    notice_where(&mut listener, |n| n.cancel == [id]).await;
}

/// A write whose caller gives up at any moment (a heartbeat bounded by a
/// timeout, a request whose client went away) leaves the store usable.
/// On the embedded store, dropping a write while its `BEGIN` was in flight
/// left the one writer connection inside a transaction, and every later
/// write failed ("begin_with at non-zero transaction depth").
async fn a_write_abandoned_at_any_moment_leaves_the_store_writable(store: Store) {
    store.job_insert(&hourly("kept"), "test").await.unwrap();
    for i in 0..400u64 {
        // Dropped after one poll, then after a wait of 0 to 200 µs for the
        // database to take the write, so that some are dropped while their
        // transaction begins (a timer's millisecond is too coarse for it).
        abandon_after(
            store.service_set_paused(i % 2 == 0),
            Duration::from_micros(i / 2),
        )
        .await;
        tokio::task::yield_now().await;
    }
    let paused = store.service_set_paused(false).await;
    assert!(paused.is_ok(), "the store still writes: {paused:?}");
    store.job_insert(&hourly("after"), "test").await.unwrap();
    assert_eq!(store.job_get("after").await.unwrap().job_id, "after");
}

/// Polls `write` once, waits `then` (busy: no timer is that fine), polls it
/// once more and drops it unless it is done.
async fn abandon_after<F: std::future::Future>(write: F, then: Duration) {
    use std::task::Poll;
    let mut write = std::pin::pin!(write);
    let done = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx).is_ready())).await;
    if done {
        return;
    }
    let start = std::time::Instant::now();
    while start.elapsed() < then {
        std::hint::spin_loop();
    }
    let _ = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx).is_ready())).await;
}

conformance![
    a_write_abandoned_at_any_moment_leaves_the_store_writable,
    migrations_are_idempotent_and_the_clock_is_now,
    instances_register_heartbeat_and_are_pruned,
    a_listener_hears_the_notices_of_changes,
];
