//! Batches (issue #15): atomic submits and appends (inline and staged),
//! refusals after wait-off and abort, fair claims within `max_parallel`,
//! fenced row ends in groups, abort racing running rows, lease rescue,
//! completion exactly once with its `batch.completed` summary, output
//! pages without empty outputs, output files (stored with a row's written
//! successful end only, paged in row order, removed with the batch),
//! deletion and retention; and counters that always equal a `count(*)` of
//! the rows.

use jobsd::batches::files::RowFiles;
use jobsd::batches::{BatchStatus, Counts, RowState};
use jobsd::domain::event_types::TypeFilter;
use jobsd::store::{
    BatchFilter, ClaimedRow, EventQuery, NewBatch, NewRows, RowClaimSlots, RowEnd, RowFilter,
    StoreError,
};

use super::*;

fn batch(waitoff: bool) -> NewBatch {
    NewBatch {
        id: Uuid::now_v7(),
        handler: "log".into(),
        context: json!({"model": "m1"}),
        max_retries: 1,
        retry_backoff_ms: 0,
        timeout_ms: None,
        max_parallel: None,
        waitoff,
    }
}

fn rows(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"message": format!("row {i}")}))
        .collect()
}

fn claim_slots(instance: &str, limit: i64) -> RowClaimSlots {
    RowClaimSlots {
        instance: instance.into(),
        lease_ms: LEASE_MS,
        limit,
        turn: 0,
    }
}

fn c(total: i64, queued: i64, inprog: i64, success: i64, failed: i64, aborted: i64) -> Counts {
    Counts {
        total,
        queued,
        inprog,
        success,
        failed,
        aborted,
    }
}

/// The counters equal a count of the rows, and add up.
async fn assert_exact(store: &Store, id: Uuid) -> Counts {
    let check = store.batch_counts_check(id).await.unwrap();
    assert_eq!(check.counters, check.rows, "counters against count(*)");
    assert!(check.counters.adds_up(), "{:?}", check.counters);
    check.counters
}

/// The batch events, once there are `n` (on PostgreSQL an event shows
/// once every older transaction in the cluster has ended).
async fn batch_events(store: &Store, n: usize) -> Vec<jobsd::store::EventRow> {
    let query = EventQuery {
        types: TypeFilter::parse("batch.").unwrap(),
        limit: 100,
        ..EventQuery::default()
    };
    crate::support::wait_for("the batch events", Duration::from_secs(10), || async {
        let events = store.events_page(&query).await.unwrap().events;
        (events.len() >= n).then_some(events)
    })
    .await
}

async fn finish_all(store: &Store, claimed: &[ClaimedRow], end: RowEnd) -> usize {
    let ends: Vec<_> = claimed
        .iter()
        .map(|r| (r.claim.clone(), end.clone()))
        .collect();
    store.batch_rows_finish(&ends).await.unwrap().len()
}

/// Prunes batches final before `cutoff`, `page` at a time, until a page
/// comes back short; how many went in all.
async fn prune_all(store: &Store, cutoff: DateTime<Utc>, page: i64) -> u64 {
    let mut total = 0;
    loop {
        let went = store
            .batches_prune_finished_before(cutoff, page)
            .await
            .unwrap();
        total += went;
        if (went as i64) < page {
            return total;
        }
    }
}

async fn submit_get_list_and_append(store: Store) {
    let new = batch(false);
    let b = store
        .batch_create(&new, NewRows::Inline(&rows(3)))
        .await
        .unwrap();
    assert_eq!(b.counts, c(3, 3, 0, 0, 0, 0));
    assert_eq!(b.status(), BatchStatus::Queued);
    assert_eq!(b.context, json!({"model": "m1"}));
    assert!(b.waitoff_at.is_none() && b.started_at.is_none());
    let b = store
        .batch_append(new.id, NewRows::Inline(&rows(2)))
        .await
        .unwrap();
    assert_eq!(b.counts.total, 5);
    let listed = store
        .batch_rows_list(
            new.id,
            &RowFilter {
                limit: 10,
                ..RowFilter::default()
            },
        )
        .await
        .unwrap();
    let idxs: Vec<i64> = listed.iter().map(|r| r.idx).collect();
    assert_eq!(idxs, vec![0, 1, 2, 3, 4]);
    assert_eq!(
        listed[3].input,
        json!({"message": "row 0"}),
        "appended rows follow"
    );
    assert!(listed.iter().all(|r| r.state == RowState::Queued));
    // An empty batch without wait-off is allowed.
    let empty = store
        .batch_create(&batch(false), NewRows::Inline(&[]))
        .await
        .unwrap();
    assert_eq!(empty.counts, Counts::default());
    let all = store
        .batch_list(&BatchFilter {
            limit: 10,
            ..BatchFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, empty.id, "newest first");
    let page2 = store
        .batch_list(&BatchFilter {
            limit: 10,
            before: Some((all[0].created_at, all[0].id)),
            ..BatchFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].id, new.id);
    let queued = store
        .batch_list(&BatchFilter {
            limit: 10,
            status: Some(BatchStatus::Queued),
            handler: Some("log".into()),
            ..BatchFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 2);
    let none = store
        .batch_list(&BatchFilter {
            limit: 10,
            handler: Some("http".into()),
            ..BatchFilter::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(matches!(
        store.batch_get(Uuid::now_v7()).await,
        Err(StoreError::NotFound)
    ));
    assert_exact(&store, new.id).await;
    let events = batch_events(&store, 2).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event_type, "batch.created");
    assert_eq!(events[0].data.as_ref().unwrap()["rows"], 3);
}

async fn appends_are_refused_after_waitoff_and_abort(store: Store) {
    let a = batch(false);
    store
        .batch_create(&a, NewRows::Inline(&rows(1)))
        .await
        .unwrap();
    let b = store.batch_waitoff(a.id).await.unwrap();
    assert!(b.waitoff_at.is_some());
    let refused = store.batch_append(a.id, NewRows::Inline(&rows(1))).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(ref m)) if m.contains("wait-off")),
        "{refused:?}"
    );
    let x = batch(false);
    store
        .batch_create(&x, NewRows::Inline(&rows(2)))
        .await
        .unwrap();
    let aborted = store.batch_abort(x.id, false).await.unwrap();
    assert_eq!(aborted.status(), BatchStatus::Aborted);
    assert_eq!(aborted.counts, c(2, 0, 0, 0, 0, 2));
    assert!(aborted.finished_at.is_some(), "nothing was running");
    let refused = store.batch_append(x.id, NewRows::Inline(&rows(1))).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    assert!(matches!(
        store
            .batch_append(Uuid::now_v7(), NewRows::Inline(&rows(1)))
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(assert_exact(&store, a.id).await.total, 1);
}

async fn staged_rows_are_published_all_at_once(store: Store) {
    let upload = store.batch_upload_begin().await.unwrap();
    store.batch_upload_stage(upload, 0, &rows(3)).await.unwrap();
    store.batch_upload_stage(upload, 3, &rows(2)).await.unwrap();
    let new = batch(true);
    let b = store
        .batch_create(&new, NewRows::Staged(upload))
        .await
        .unwrap();
    assert_eq!(b.counts, c(5, 5, 0, 0, 0, 0));
    let listed = store
        .batch_rows_list(
            new.id,
            &RowFilter {
                limit: 10,
                after_idx: Some(2),
                ..RowFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|r| r.idx).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(listed[0].input, json!({"message": "row 0"}));
    // An upload is published once; a discarded one stores nothing.
    assert!(matches!(
        store
            .batch_create(&batch(false), NewRows::Staged(upload))
            .await,
        Err(StoreError::NotFound)
    ));
    let other = store.batch_upload_begin().await.unwrap();
    store.batch_upload_stage(other, 0, &rows(4)).await.unwrap();
    store.batch_upload_discard(other).await.unwrap();
    let lost = batch(false);
    assert!(store
        .batch_create(&lost, NewRows::Staged(other))
        .await
        .is_err());
    assert!(matches!(
        store.batch_get(lost.id).await,
        Err(StoreError::NotFound)
    ));
    // Appends stage too.
    let open = batch(false);
    store
        .batch_create(&open, NewRows::Inline(&rows(1)))
        .await
        .unwrap();
    let more = store.batch_upload_begin().await.unwrap();
    store.batch_upload_stage(more, 0, &rows(2)).await.unwrap();
    let b = store
        .batch_append(open.id, NewRows::Staged(more))
        .await
        .unwrap();
    assert_eq!(b.counts.total, 3);
    let old = store.batch_upload_begin().await.unwrap();
    store.batch_upload_stage(old, 0, &rows(1)).await.unwrap();
    let pruned = store
        .batch_uploads_prune_before(now() + seconds(60))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    assert_exact(&store, open.id).await;
}

async fn rows_are_claimed_ended_and_the_batch_completes_once(store: Store) {
    let new = batch(true);
    store
        .batch_create(&new, NewRows::Inline(&rows(5)))
        .await
        .unwrap();
    let first = store.batch_rows_claim(&claim_slots("w1", 3)).await.unwrap();
    assert_eq!(
        first.iter().map(|r| r.claim.idx).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(first[0].handler, "log");
    assert_eq!(first[0].context, json!({"model": "m1"}));
    assert_eq!(first[0].claim.attempt, 1);
    let b = store.batch_get(new.id).await.unwrap();
    assert_eq!(
        b.status(),
        BatchStatus::Inprog,
        "moves from queued on the first claim"
    );
    assert_eq!(b.counts, c(5, 2, 3, 0, 0, 0));
    let ends = vec![
        (
            first[0].claim.clone(),
            RowEnd::success(Some(json!({"n": 0}))),
        ),
        (first[1].claim.clone(), RowEnd::Failed("boom".into())),
        (
            first[2].claim.clone(),
            RowEnd::Retry {
                delay_ms: 0,
                error: "again".into(),
            },
        ),
    ];
    assert_eq!(store.batch_rows_finish(&ends).await.unwrap().len(), 3);
    // A stale claim (the attempt was ended) writes nothing.
    assert!(store.batch_rows_finish(&ends).await.unwrap().is_empty());
    assert_eq!(assert_exact(&store, new.id).await, c(5, 3, 0, 1, 1, 0));
    let rest = store
        .batch_rows_claim(&claim_slots("w2", 10))
        .await
        .unwrap();
    assert_eq!(rest.len(), 3);
    let retried = rest
        .iter()
        .find(|r| r.claim.idx == 2)
        .expect("the retried row");
    assert_eq!(retried.claim.attempt, 2);
    assert!(store
        .batch_rows_claim(&claim_slots("w2", 10))
        .await
        .unwrap()
        .is_empty());
    // Rows without output succeed too.
    assert_eq!(finish_all(&store, &rest, RowEnd::success(None)).await, 3);
    let b = store.batch_get(new.id).await.unwrap();
    assert_eq!(b.status(), BatchStatus::Partial);
    assert!(b.finished_at.is_some());
    assert_eq!(b.counts, c(5, 0, 0, 4, 1, 0));
    assert!(
        store.batch_settle(&[new.id]).await.unwrap().is_empty(),
        "completed once"
    );
    let events = batch_events(&store, 2).await;
    let completed: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "batch.completed")
        .collect();
    assert_eq!(completed.len(), 1);
    let data = completed[0].data.as_ref().expect("a summary");
    assert_eq!(data["status"], "partial");
    assert_eq!(data["counts"]["success"], 4);
    assert_eq!(data["counts"]["failed"], 1);
    assert_eq!(data["batch_id"], json!(new.id));
    // Output: succeeded rows with a result only, in row order.
    let out = store.batch_output_page(new.id, None, 10).await.unwrap();
    assert_eq!(out, vec![(0, json!({"n": 0}))]);
    let failed = store
        .batch_rows_list(
            new.id,
            &RowFilter {
                state: Some(RowState::Failed),
                limit: 10,
                ..RowFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error.as_deref(), Some("boom"));
    assert!(failed[0].finished_at.is_some());
}

async fn claims_are_fair_and_bounded_by_max_parallel(store: Store) {
    let mut big = batch(false);
    big.max_parallel = Some(2);
    store
        .batch_create(&big, NewRows::Inline(&rows(50)))
        .await
        .unwrap();
    let small = batch(false);
    store
        .batch_create(&small, NewRows::Inline(&rows(3)))
        .await
        .unwrap();
    let got = store
        .batch_rows_claim(&claim_slots("w1", 10))
        .await
        .unwrap();
    let of = |id: Uuid, got: &[ClaimedRow]| got.iter().filter(|r| r.claim.batch_id == id).count();
    assert_eq!(of(big.id, &got), 2);
    assert_eq!(of(small.id, &got), 3);
    // The bound holds across claimers: another replica gets none of `big`.
    let more = store
        .batch_rows_claim(&claim_slots("w2", 10))
        .await
        .unwrap();
    assert!(more.is_empty(), "{more:?}");
    let one: Vec<_> = got
        .iter()
        .filter(|r| r.claim.batch_id == big.id)
        .take(1)
        .cloned()
        .collect();
    finish_all(&store, &one, RowEnd::success(None)).await;
    let more = store
        .batch_rows_claim(&claim_slots("w2", 10))
        .await
        .unwrap();
    assert_eq!(more.len(), 1);
    // Two unbounded batches share a small claim.
    let x = batch(false);
    let y = batch(false);
    store
        .batch_create(&x, NewRows::Inline(&rows(100)))
        .await
        .unwrap();
    store
        .batch_create(&y, NewRows::Inline(&rows(100)))
        .await
        .unwrap();
    let got = store
        .batch_rows_claim(&claim_slots("w3", 10))
        .await
        .unwrap();
    assert_eq!(of(x.id, &got), 5);
    assert_eq!(of(y.id, &got), 5);
    for id in [big.id, small.id, x.id, y.id] {
        assert_exact(&store, id).await;
    }
}

async fn abort_ends_queued_rows_and_stops_running_ones(store: Store) {
    let new = batch(false);
    store
        .batch_create(&new, NewRows::Inline(&rows(5)))
        .await
        .unwrap();
    let running = store.batch_rows_claim(&claim_slots("w1", 2)).await.unwrap();
    let held: Vec<_> = running.iter().map(|r| r.claim.clone()).collect();
    let acks = store
        .batch_rows_heartbeat("w1", LEASE_MS, &held)
        .await
        .unwrap();
    assert_eq!(acks.len(), 2);
    assert!(acks.iter().all(|a| !a.cancel_requested));
    let b = store.batch_abort(new.id, true).await.unwrap();
    assert_eq!(b.status(), BatchStatus::Aborted);
    assert_eq!(b.counts, c(5, 0, 2, 0, 0, 3));
    assert!(b.finished_at.is_none(), "two rows still run");
    let acks = store
        .batch_rows_heartbeat("w1", LEASE_MS, &held)
        .await
        .unwrap();
    assert!(acks.iter().all(|a| a.cancel_requested));
    // Another instance's heartbeat holds nothing.
    assert!(store
        .batch_rows_heartbeat("w9", LEASE_MS, &held)
        .await
        .unwrap()
        .is_empty());
    let ends = vec![
        (
            held[0].clone(),
            RowEnd::Aborted("cancelled by abort".into()),
        ),
        (held[1].clone(), RowEnd::success(Some(json!(1)))),
    ];
    store.batch_rows_finish(&ends).await.unwrap();
    let b = store.batch_get(new.id).await.unwrap();
    assert_eq!(b.counts, c(5, 0, 0, 1, 0, 4));
    assert!(b.finished_at.is_some());
    assert_eq!(b.status(), BatchStatus::Aborted);
    let types: Vec<String> = batch_events(&store, 3)
        .await
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(
        types,
        vec!["batch.created", "batch.aborted", "batch.completed"]
    );
    // A second abort changes nothing; a final batch that was not aborted refuses.
    store.batch_abort(new.id, false).await.unwrap();
    let done = batch(true);
    store
        .batch_create(&done, NewRows::Inline(&[]))
        .await
        .unwrap();
    assert_eq!(
        store.batch_get(done.id).await.unwrap().status(),
        BatchStatus::Success
    );
    assert!(matches!(
        store.batch_abort(done.id, false).await,
        Err(StoreError::Conflict(_))
    ));
    assert_exact(&store, new.id).await;
}

async fn a_retry_racing_an_abort_is_aborted(store: Store) {
    let new = batch(false);
    store
        .batch_create(&new, NewRows::Inline(&rows(2)))
        .await
        .unwrap();
    let running = store.batch_rows_claim(&claim_slots("w1", 2)).await.unwrap();
    store.batch_abort(new.id, false).await.unwrap();
    // The rows were running when the abort came: they finish, and one asks
    // for a retry, which an aborted batch does not give.
    let ends = vec![
        (
            running[0].claim.clone(),
            RowEnd::Retry {
                delay_ms: 0,
                error: "again".into(),
            },
        ),
        (running[1].claim.clone(), RowEnd::success(None)),
    ];
    store.batch_rows_finish(&ends).await.unwrap();
    let b = store.batch_get(new.id).await.unwrap();
    assert_eq!(b.counts, c(2, 0, 0, 1, 0, 1));
    assert!(b.finished_at.is_some());
    assert!(store
        .batch_rows_claim(&claim_slots("w1", 2))
        .await
        .unwrap()
        .is_empty());
    assert_exact(&store, new.id).await;
}

async fn expired_leases_are_rescued(store: Store) {
    let mut new = batch(true);
    new.max_retries = 0;
    store
        .batch_create(&new, NewRows::Inline(&rows(2)))
        .await
        .unwrap();
    let held = store
        .batch_rows_claim(&claim_slots("dead", 2))
        .await
        .unwrap();
    assert_eq!(store.batch_rows_rescue_expired(10).await.unwrap(), 0);
    execute_sql(
        &store,
        "UPDATE batch_rows SET lease_expires_at = now() - interval '1 minute'",
        "UPDATE batch_rows SET lease_expires_at = 0",
    )
    .await;
    assert_eq!(store.batch_rows_rescue_expired(10).await.unwrap(), 2);
    assert_eq!(assert_exact(&store, new.id).await, c(2, 2, 0, 0, 0, 0));
    // The dead instance's late end is stale.
    assert_eq!(finish_all(&store, &held, RowEnd::success(None)).await, 0);
    let again = store
        .batch_rows_claim(&claim_slots("alive", 2))
        .await
        .unwrap();
    assert!(again.iter().all(|r| r.claim.attempt == 2));
    finish_all(&store, &again, RowEnd::success(None)).await;
    assert_eq!(
        store.batch_get(new.id).await.unwrap().status(),
        BatchStatus::Success
    );
}

async fn hand_back_does_not_count_the_attempt(store: Store) {
    let new = batch(false);
    store
        .batch_create(&new, NewRows::Inline(&rows(1)))
        .await
        .unwrap();
    let held = store.batch_rows_claim(&claim_slots("w1", 1)).await.unwrap();
    finish_all(&store, &held, RowEnd::HandBack).await;
    let again = store.batch_rows_claim(&claim_slots("w2", 1)).await.unwrap();
    assert_eq!(again[0].claim.attempt, 1);
    assert_exact(&store, new.id).await;
}

async fn final_batches_are_deleted_and_pruned(store: Store) {
    let open = batch(false);
    store
        .batch_create(&open, NewRows::Inline(&rows(2)))
        .await
        .unwrap();
    assert!(matches!(
        store.batch_delete(open.id).await,
        Err(StoreError::Conflict(_))
    ));
    let done = batch(false);
    store
        .batch_create(&done, NewRows::Inline(&rows(2)))
        .await
        .unwrap();
    store.batch_abort(done.id, false).await.unwrap();
    store.batch_delete(done.id).await.unwrap();
    assert!(matches!(
        store.batch_get(done.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.batch_delete(done.id).await,
        Err(StoreError::NotFound)
    ));
    let old = batch(false);
    store
        .batch_create(&old, NewRows::Inline(&rows(3)))
        .await
        .unwrap();
    store.batch_abort(old.id, false).await.unwrap();
    let cutoff = now() + seconds(60);
    let pruned = prune_all(&store, cutoff, 2).await;
    assert_eq!(pruned, 4, "three rows and the batch");
    assert!(matches!(
        store.batch_get(old.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(
        store.batch_get(open.id).await.is_ok(),
        "an open batch is never pruned"
    );
    assert!(store.batches_unsettled(10).await.unwrap().is_empty());
}

async fn retention_prunes_final_batches_only(store: Store) {
    use jobsd::retention::{Maintenance, Retention, RetentionConfig};
    let open = batch(false);
    store
        .batch_create(&open, NewRows::Inline(&rows(2)))
        .await
        .unwrap();
    let done = batch(false);
    store
        .batch_create(&done, NewRows::Inline(&rows(3)))
        .await
        .unwrap();
    store.batch_abort(done.id, false).await.unwrap();
    let maintenance = Maintenance::new(
        store.clone(),
        RetentionConfig {
            retention: Retention::from_duration(Duration::from_millis(1)),
            failure_retention: Retention::KeepAll,
            every: Duration::from_secs(60),
            batch: 2,
        },
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    crate::support::wait_for(
        "the final batch pruned",
        Duration::from_secs(10),
        || async {
            maintenance.run_once(&shutdown).await.unwrap();
            matches!(store.batch_get(done.id).await, Err(StoreError::NotFound)).then_some(())
        },
    )
    .await;
    assert_eq!(store.batch_get(open.id).await.unwrap().counts.total, 2);
    assert_eq!(
        store
            .batch_rows_list(
                done.id,
                &RowFilter {
                    limit: 10,
                    ..RowFilter::default()
                }
            )
            .await
            .unwrap()
            .len(),
        0
    );
}

/// The race of the bug list: an abort while workers finish rows
/// (some succeeding, some asking for a retry), 1,000 times; every time the
/// counters equal the rows and the batch ends final with every row counted
/// once.
async fn abort_racing_row_ends_keeps_the_counts_exact(store: Store) {
    for trial in 0..1000 {
        let new = batch(false);
        store
            .batch_create(&new, NewRows::Inline(&rows(4)))
            .await
            .unwrap();
        let held = store.batch_rows_claim(&claim_slots("w", 3)).await.unwrap();
        assert_eq!(held.len(), 3, "trial {trial}");
        let ends = vec![
            (held[0].claim.clone(), RowEnd::success(None)),
            (
                held[1].claim.clone(),
                RowEnd::Retry {
                    delay_ms: 0,
                    error: "again".into(),
                },
            ),
        ];
        let last = vec![(held[2].claim.clone(), RowEnd::success(Some(json!(trial))))];
        let cancel = trial % 2 == 0;
        let (a, b, c) = tokio::join!(
            store.batch_rows_finish(&ends),
            store.batch_abort(new.id, cancel),
            store.batch_rows_finish(&last),
        );
        a.unwrap();
        b.unwrap();
        c.unwrap();
        let counts = assert_exact(&store, new.id).await;
        let b = store.batch_get(new.id).await.unwrap();
        assert!(b.finished_at.is_some(), "trial {trial}: {b:?}");
        assert_eq!(b.status(), BatchStatus::Aborted);
        assert_eq!(
            (counts.total, counts.queued, counts.inprog),
            (4, 0, 0),
            "trial {trial}"
        );
        assert_eq!(
            counts.success + counts.aborted,
            4,
            "trial {trial}: {counts:?}"
        );
        assert!(counts.success >= 2, "the two successes count: {counts:?}");
    }
}

/// A row's lines for output files, as the worker gives them.
fn files(value: Value) -> RowFiles {
    jobsd::batches::files::parse(&value).expect("valid $files")
}

fn success_with(result: Option<Value>, value: Value) -> RowEnd {
    RowEnd::Success {
        result,
        files: files(value),
    }
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|l| l.to_string()).collect()
}

/// Whether `batch_files` still holds names of `id` (by deleting them: the
/// rows a delete finds are the rows there were).
async fn file_names_left(store: &Store, id: Uuid) -> u64 {
    execute_sql(
        store,
        &format!("DELETE FROM batch_files WHERE batch_id = '{id}'"),
        &format!("DELETE FROM batch_files WHERE batch_id = '{id}'"),
    )
    .await
}

async fn row_ends_with_files_store_them_and_pages_follow_row_order(store: Store) {
    let new = batch(true);
    store
        .batch_create(&new, NewRows::Inline(&rows(5)))
        .await
        .unwrap();
    assert!(store
        .batch_get(new.id)
        .await
        .unwrap()
        .output_files
        .is_empty());
    let mut held = store.batch_rows_claim(&claim_slots("w1", 5)).await.unwrap();
    held.sort_by_key(|r| r.claim.idx);
    // One group, out of row order: row 3 before row 0.
    let ends = vec![
        (
            held[3].claim.clone(),
            success_with(None, json!({"out.csv": "r3,x", "b-log.txt": ["three"]})),
        ),
        (
            held[0].claim.clone(),
            success_with(Some(json!({"n": 0})), json!({"out.csv": ["r0,a", "r0,b"]})),
        ),
        (
            held[1].claim.clone(),
            RowEnd::success(Some(json!({"n": 1}))),
        ),
        (
            held[2].claim.clone(),
            RowEnd::Retry {
                delay_ms: 0,
                error: "again".into(),
            },
        ),
        (
            held[4].claim.clone(),
            success_with(None, json!({"out.csv": "r4,z\n"})),
        ),
    ];
    assert_eq!(store.batch_rows_finish(&ends).await.unwrap().len(), 5);
    let b = store.batch_get(new.id).await.unwrap();
    assert_eq!(b.output_files, vec!["b-log.txt", "out.csv"], "sorted");
    assert!(b.finished_at.is_none(), "row 2 is queued again");
    let page = store
        .batch_file_page(new.id, "out.csv", None, 10)
        .await
        .unwrap();
    assert_eq!(
        page,
        vec![
            (0, lines(&["r0,a", "r0,b"])),
            (3, lines(&["r3,x"])),
            (4, lines(&["r4,z"])),
        ]
    );
    // Paged by rows, after a cursor.
    let first = store
        .batch_file_page(new.id, "out.csv", None, 2)
        .await
        .unwrap();
    assert_eq!(first.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 3]);
    let rest = store
        .batch_file_page(new.id, "out.csv", Some(3), 2)
        .await
        .unwrap();
    assert_eq!(rest, vec![(4, lines(&["r4,z"]))]);
    assert_eq!(
        store
            .batch_file_page(new.id, "b-log.txt", None, 10)
            .await
            .unwrap(),
        vec![(3, lines(&["three"]))]
    );
    assert!(store
        .batch_file_page(new.id, "nope.txt", None, 10)
        .await
        .unwrap()
        .is_empty());
    // The results are what the ends gave, files aside; a row with files
    // only has no output.
    let out = store.batch_output_page(new.id, None, 10).await.unwrap();
    assert_eq!(out, vec![(0, json!({"n": 0})), (1, json!({"n": 1}))]);
    // The retried row's second attempt fails: it contributes nothing.
    let again = store.batch_rows_claim(&claim_slots("w1", 5)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].claim.idx, 2);
    finish_all(&store, &again, RowEnd::Failed("boom".into())).await;
    let b = store.batch_get(new.id).await.unwrap();
    assert_eq!(b.status(), BatchStatus::Partial);
    assert_eq!(
        store
            .batch_file_page(new.id, "out.csv", None, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    // The completion's summary names the files.
    let events = batch_events(&store, 2).await;
    let completed = events
        .iter()
        .find(|e| e.event_type == "batch.completed")
        .expect("completed");
    assert_eq!(
        completed.data.as_ref().unwrap()["output_files"],
        json!(["b-log.txt", "out.csv"])
    );
    assert_eq!(b.summary()["output_files"], json!(["b-log.txt", "out.csv"]));
    assert_exact(&store, new.id).await;
}

async fn only_a_rows_written_successful_attempt_contributes_lines(store: Store) {
    let mut new = batch(true);
    new.max_retries = 3;
    store
        .batch_create(&new, NewRows::Inline(&rows(2)))
        .await
        .unwrap();
    let mut first = store.batch_rows_claim(&claim_slots("w1", 2)).await.unwrap();
    first.sort_by_key(|r| r.claim.idx);
    // Row 0's lease runs out; the same instance claims it again (attempt 2).
    execute_sql(
        &store,
        "UPDATE batch_rows SET lease_expires_at = now() - interval '1 minute' WHERE idx = 0",
        "UPDATE batch_rows SET lease_expires_at = 0 WHERE idx = 0",
    )
    .await;
    assert_eq!(store.batch_rows_rescue_expired(10).await.unwrap(), 1);
    let second = store.batch_rows_claim(&claim_slots("w1", 2)).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].claim.attempt, 2);
    // Both attempts' ends in one group: only the held attempt's is written,
    // and only its lines are kept. Row 1 ends with files but fails.
    let ends = vec![
        (
            first[0].claim.clone(),
            success_with(
                None,
                json!({"stale.txt": "from attempt 1", "a.txt": "stale"}),
            ),
        ),
        (
            second[0].claim.clone(),
            success_with(None, json!({"a.txt": "from attempt 2"})),
        ),
        (first[1].claim.clone(), RowEnd::Failed("boom".into())),
    ];
    let mut written = store.batch_rows_finish(&ends).await.unwrap();
    written.sort();
    assert_eq!(written, vec![(new.id, 0), (new.id, 1)]);
    let b = store.batch_get(new.id).await.unwrap();
    assert_eq!(b.output_files, vec!["a.txt"]);
    assert_eq!(
        store
            .batch_file_page(new.id, "a.txt", None, 10)
            .await
            .unwrap(),
        vec![(0, lines(&["from attempt 2"]))]
    );
    assert!(store
        .batch_file_page(new.id, "stale.txt", None, 10)
        .await
        .unwrap()
        .is_empty());
    // A late repeat of the ends writes nothing, and changes no file.
    let late = vec![(
        first[0].claim.clone(),
        success_with(None, json!({"late.txt": "no"})),
    )];
    assert!(store.batch_rows_finish(&late).await.unwrap().is_empty());
    assert_eq!(
        store.batch_get(new.id).await.unwrap().output_files,
        vec!["a.txt"]
    );
    assert_exact(&store, new.id).await;
}

/// A stale attempt's end in the same group as the held attempt's: the row
/// ends as the held attempt says, whichever comes first in the group.
async fn a_stale_end_in_the_group_does_not_decide_the_row(store: Store) {
    for stale_first in [true, false] {
        let mut new = batch(true);
        new.max_retries = 3;
        store
            .batch_create(&new, NewRows::Inline(&rows(1)))
            .await
            .unwrap();
        let first = store.batch_rows_claim(&claim_slots("w1", 1)).await.unwrap();
        execute_sql(
            &store,
            "UPDATE batch_rows SET lease_expires_at = now() - interval '1 minute'",
            "UPDATE batch_rows SET lease_expires_at = 0",
        )
        .await;
        assert_eq!(store.batch_rows_rescue_expired(10).await.unwrap(), 1);
        let second = store.batch_rows_claim(&claim_slots("w1", 1)).await.unwrap();
        assert_eq!(second[0].claim.attempt, 2);
        let stale = (first[0].claim.clone(), RowEnd::Failed("stale".into()));
        let held = (
            second[0].claim.clone(),
            RowEnd::success(Some(json!({"attempt": 2}))),
        );
        let ends = if stale_first {
            vec![stale, held]
        } else {
            vec![held, stale]
        };
        assert_eq!(
            store.batch_rows_finish(&ends).await.unwrap(),
            vec![(new.id, 0)]
        );
        let row = store
            .batch_rows_list(
                new.id,
                &RowFilter {
                    limit: 10,
                    ..RowFilter::default()
                },
            )
            .await
            .unwrap()
            .remove(0);
        assert_eq!(row.state, RowState::Success, "stale first: {stale_first}");
        assert_eq!(row.result, Some(json!({"attempt": 2})));
        assert_eq!(row.error, None);
        assert_exact(&store, new.id).await;
    }
}

async fn deleting_or_pruning_a_batch_removes_its_files(store: Store) {
    let mut made = Vec::new();
    for _ in 0..2 {
        let new = batch(true);
        store
            .batch_create(&new, NewRows::Inline(&rows(2)))
            .await
            .unwrap();
        let held = store.batch_rows_claim(&claim_slots("w1", 2)).await.unwrap();
        finish_all(&store, &held, success_with(None, json!({"f.txt": "x"}))).await;
        let b = store.batch_get(new.id).await.unwrap();
        assert!(b.finished_at.is_some());
        assert_eq!(b.output_files, vec!["f.txt"], "one name for both rows");
        made.push(new.id);
    }
    let (deleted, pruned) = (made[0], made[1]);
    store.batch_delete(deleted).await.unwrap();
    assert_eq!(file_names_left(&store, deleted).await, 0);
    assert!(store
        .batch_file_page(deleted, "f.txt", None, 10)
        .await
        .unwrap()
        .is_empty());
    let cutoff = now() + seconds(60);
    let n = prune_all(&store, cutoff, 10).await;
    assert_eq!(n, 3, "two rows and the batch (names are not counted)");
    assert!(matches!(
        store.batch_get(pruned).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(file_names_left(&store, pruned).await, 0);
}

conformance![
    submit_get_list_and_append,
    appends_are_refused_after_waitoff_and_abort,
    staged_rows_are_published_all_at_once,
    rows_are_claimed_ended_and_the_batch_completes_once,
    claims_are_fair_and_bounded_by_max_parallel,
    abort_ends_queued_rows_and_stops_running_ones,
    a_retry_racing_an_abort_is_aborted,
    expired_leases_are_rescued,
    hand_back_does_not_count_the_attempt,
    final_batches_are_deleted_and_pruned,
    retention_prunes_final_batches_only,
    abort_racing_row_ends_keeps_the_counts_exact,
    row_ends_with_files_store_them_and_pages_follow_row_order,
    only_a_rows_written_successful_attempt_contributes_lines,
    deleting_or_pruning_a_batch_removes_its_files,
    a_stale_end_in_the_group_does_not_decide_the_row,
];
