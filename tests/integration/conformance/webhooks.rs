//! Webhooks: definitions (unique names, found by id or name, rotated
//! secrets), the feed cursor that moves only from where it was read, and
//! deliveries claimed under leases: one attempt at a time, a stale claim
//! records nothing, an expired lease makes a delivery claimable again, and
//! a disabling attempt writes its `webhook.disabled` event with it.

use jobsd::store::{
    AttemptEnd, AttemptRow, DeliveryState, DeliveryStep, EventPosition, EventQuery, FeedAdvance,
    NewDelivery, NewWebhook, StoreError, WebhookSpec,
};

use super::*;

fn spec(name: &str) -> WebhookSpec {
    WebhookSpec {
        name: name.into(),
        url: "http://127.0.0.1:9/hook".into(),
        event_types: vec!["run.failed".into()],
        job_ids: vec![],
        tags: vec!["ops".into()],
        handler: None,
        paused: false,
    }
}

async fn webhook(store: &Store, name: &str) -> jobsd::store::WebhookRow {
    store
        .webhook_insert(&NewWebhook {
            id: Uuid::now_v7(),
            spec: spec(name),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        })
        .await
        .expect("inserted")
}

fn delivery(webhook_id: Uuid) -> NewDelivery {
    NewDelivery::new(
        webhook_id,
        "run.failed",
        None,
        json!({"type": "run.failed"}),
    )
}

fn end(attempt: i32, status: Option<i32>, step: DeliveryStep) -> AttemptEnd {
    AttemptEnd {
        attempt: AttemptRow {
            attempt,
            at: now(),
            status,
            latency_ms: 12,
            response: Some("nope".into()),
            error: None,
        },
        step,
    }
}

async fn expire_delivery_leases(store: &Store) {
    execute_sql(
        store,
        "UPDATE webhook_deliveries SET lease_expires_at = now() - interval '1 second' \
         WHERE state = 'delivering'",
        "UPDATE webhook_deliveries SET lease_expires_at = 0 WHERE state = 'delivering'",
    )
    .await;
}

/// Stored as written; names are unique; found by name or id; updated,
/// paused, rotated and deleted with their deliveries.
async fn webhooks_are_stored_found_changed_and_deleted(store: Store) {
    let ops = webhook(&store, "ops").await;
    assert_eq!(ops.spec, spec("ops"));
    let taken = store
        .webhook_insert(&NewWebhook {
            id: Uuid::now_v7(),
            spec: spec("ops"),
            secret: "whsec_x".into(),
        })
        .await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    assert_eq!(store.webhook_find("ops").await.unwrap().id, ops.id);
    assert_eq!(
        store.webhook_find(&ops.id.to_string()).await.unwrap().id,
        ops.id
    );
    assert!(matches!(
        store.webhook_find("nope").await,
        Err(StoreError::NotFound)
    ));
    let mut changed = spec("ops-2");
    changed.paused = true;
    changed.handler = Some("http".into());
    let updated = store.webhook_update(ops.id, &changed, false).await.unwrap();
    assert_eq!(updated.spec, changed);
    let other = webhook(&store, "other").await;
    let clash = store.webhook_update(other.id, &changed, false).await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    let until = now() + seconds(60);
    let rotated = store
        .webhook_rotate(ops.id, "whsec_new", until)
        .await
        .unwrap();
    assert_eq!(rotated.secret, "whsec_new");
    assert_eq!(
        rotated.previous_secret.as_deref(),
        Some(ops.secret.as_str())
    );
    assert_eq!(rotated.previous_until, Some(until));
    store
        .webhook_delivery_insert(&delivery(ops.id))
        .await
        .unwrap();
    store.webhook_delete(ops.id).await.unwrap();
    assert!(matches!(
        store.webhook_delete(ops.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(store
        .webhook_deliveries_list(ops.id, 10)
        .await
        .unwrap()
        .is_empty());
    let names: Vec<String> = store
        .webhook_list()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.spec.name)
        .collect();
    assert_eq!(names, ["other"]);
}

/// The feed moves only from the position it was read at, with its
/// deliveries (those of a webhook gone meanwhile dropped); a second
/// advance from the same position writes nothing.
async fn the_feed_moves_once_from_where_it_was_read(store: Store) {
    let ops = webhook(&store, "ops").await;
    assert_eq!(store.webhook_feed_position().await.unwrap(), None);
    let to = EventPosition {
        tx: 0,
        seq: 5,
        ord: 0,
    };
    let advance = FeedAdvance {
        from: None,
        to,
        deliveries: vec![delivery(ops.id), delivery(Uuid::now_v7())],
    };
    assert!(store.webhook_feed_advance(&advance).await.unwrap());
    assert_eq!(store.webhook_feed_position().await.unwrap(), Some(to));
    let again = FeedAdvance {
        deliveries: vec![delivery(ops.id)],
        ..advance.clone()
    };
    assert!(!store.webhook_feed_advance(&again).await.unwrap());
    let queued = store.webhook_deliveries_list(ops.id, 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].state, DeliveryState::Pending);
    assert_eq!(queued[0].attempt, 0);
}

/// One attempt at a time: a claimed delivery is not claimed again while
/// its lease holds; once it expires another claimer takes it (attempt 2)
/// and the first claim can neither renew nor record. A retry later is
/// not due before its time; the attempt log keeps each one.
async fn deliveries_are_claimed_under_leases(store: Store) {
    let ops = webhook(&store, "ops").await;
    let queued = store
        .webhook_delivery_insert(&delivery(ops.id))
        .await
        .unwrap();
    let first = store
        .webhook_deliveries_claim("a", LEASE_MS, 10)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let first = first.into_iter().next().unwrap();
    assert_eq!(first.claim.delivery_id, queued.id);
    assert_eq!(first.claim.attempt, 1);
    assert_eq!(first.message_id, queued.message_id);
    assert_eq!(first.secret, ops.secret);
    assert!(store
        .webhook_deliveries_claim("b", LEASE_MS, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .webhook_delivery_heartbeat(&first.claim, LEASE_MS)
        .await
        .unwrap());
    expire_delivery_leases(&store).await;
    let second = store
        .webhook_deliveries_claim("b", LEASE_MS, 10)
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    let second = second.into_iter().next().unwrap();
    assert_eq!(second.claim.attempt, 2);
    assert_eq!(second.message_id, queued.message_id);
    assert!(!store
        .webhook_delivery_heartbeat(&first.claim, LEASE_MS)
        .await
        .unwrap());
    let stale = end(1, Some(200), DeliveryStep::Delivered);
    assert!(!store
        .webhook_delivery_finish(&first.claim, &stale)
        .await
        .unwrap());
    let later = now() + seconds(3600);
    let failed = end(2, Some(503), DeliveryStep::RetryAt(later));
    assert!(store
        .webhook_delivery_finish(&second.claim, &failed)
        .await
        .unwrap());
    assert!(store
        .webhook_deliveries_claim("b", LEASE_MS, 10)
        .await
        .unwrap()
        .is_empty());
    let listed = store.webhook_deliveries_list(ops.id, 10).await.unwrap();
    assert_eq!(listed[0].state, DeliveryState::Pending);
    assert_eq!(listed[0].next_attempt_at, later);
    assert_eq!(listed[0].last_status, Some(503));
    assert_eq!(listed[0].attempts.len(), 1);
    assert_eq!(listed[0].attempts[0].status, Some(503));
    assert_eq!(listed[0].attempts[0].response.as_deref(), Some("nope"));
    let hook = store.webhook_find("ops").await.unwrap();
    assert!(hook.failing_since.is_some());
    // Redelivered: due now, attempts counted from 0, the same message id.
    let retried = store
        .webhook_delivery_retry(ops.id, queued.id)
        .await
        .unwrap();
    assert_eq!(
        (retried.state, retried.attempt),
        (DeliveryState::Pending, 0)
    );
    let third = store
        .webhook_deliveries_claim("c", LEASE_MS, 10)
        .await
        .unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].message_id, queued.message_id);
    let busy = store.webhook_delivery_retry(ops.id, queued.id).await;
    assert!(matches!(busy, Err(StoreError::Conflict(_))), "{busy:?}");
    let ok = end(1, Some(204), DeliveryStep::Delivered);
    assert!(store
        .webhook_delivery_finish(&third[0].claim, &ok)
        .await
        .unwrap());
    let hook = store.webhook_find("ops").await.unwrap();
    assert_eq!(hook.failing_since, None);
    let missing = store.webhook_delivery_retry(ops.id, Uuid::now_v7()).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
}

/// An attempt that disables its webhook writes `webhook.disabled` with
/// it; the webhook's deliveries are then not claimed, until re-enabled.
async fn a_disabling_attempt_writes_its_event(store: Store) {
    let ops = webhook(&store, "ops").await;
    store
        .webhook_delivery_insert(&delivery(ops.id))
        .await
        .unwrap();
    store
        .webhook_delivery_insert(&delivery(ops.id))
        .await
        .unwrap();
    let claimed = store
        .webhook_deliveries_claim("a", LEASE_MS, 1)
        .await
        .unwrap();
    let gone = end(
        1,
        Some(410),
        DeliveryStep::Disable("the receiver answered 410 Gone".into()),
    );
    assert!(store
        .webhook_delivery_finish(&claimed[0].claim, &gone)
        .await
        .unwrap());
    let hook = store.webhook_find("ops").await.unwrap();
    assert!(hook.disabled_at.is_some());
    assert_eq!(
        hook.disabled_reason.as_deref(),
        Some("the receiver answered 410 Gone")
    );
    // On PostgreSQL an event shows once every older transaction of the
    // cluster has ended (other tests' too): soon, not at once.
    let events = crate::support::wait_for(
        "webhook.disabled visible",
        Duration::from_secs(10),
        || async {
            let events = store
                .events_page(&EventQuery {
                    limit: 100,
                    ..EventQuery::default()
                })
                .await
                .unwrap()
                .events;
            events
                .iter()
                .any(|e| e.event_type == "webhook.disabled")
                .then_some(events)
        },
    )
    .await;
    let disabled: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "webhook.disabled")
        .collect();
    assert_eq!(disabled.len(), 1, "{events:?}");
    let reason = disabled[0].reason.as_deref().unwrap_or_default();
    assert!(reason.contains("ops") && reason.contains("410"), "{reason}");
    assert!(store
        .webhook_deliveries_claim("a", LEASE_MS, 10)
        .await
        .unwrap()
        .is_empty());
    let enabled = store.webhook_update(ops.id, &ops.spec, true).await.unwrap();
    assert_eq!(enabled.disabled_at, None);
    assert_eq!(
        store
            .webhook_deliveries_claim("a", LEASE_MS, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Finished deliveries older than the cutoff are pruned, pending ones kept.
async fn finished_deliveries_are_pruned(store: Store) {
    let ops = webhook(&store, "ops").await;
    store
        .webhook_delivery_insert(&delivery(ops.id))
        .await
        .unwrap();
    let claimed = store
        .webhook_deliveries_claim("a", LEASE_MS, 1)
        .await
        .unwrap();
    let ok = end(1, Some(200), DeliveryStep::Delivered);
    store
        .webhook_delivery_finish(&claimed[0].claim, &ok)
        .await
        .unwrap();
    store
        .webhook_delivery_insert(&delivery(ops.id))
        .await
        .unwrap();
    let pruned = store
        .webhook_deliveries_prune_before(now() + seconds(1), 100)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let left = store.webhook_deliveries_list(ops.id, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].state, DeliveryState::Pending);
}

conformance![
    webhooks_are_stored_found_changed_and_deleted,
    the_feed_moves_once_from_where_it_was_read,
    deliveries_are_claimed_under_leases,
    a_disabling_attempt_writes_its_event,
    finished_deliveries_are_pruned,
];
