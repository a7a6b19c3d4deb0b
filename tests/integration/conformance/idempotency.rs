//! Idempotency keys: one attempt takes a key, the others find it (pending,
//! then answered); only the owning attempt completes or releases it; an
//! expired key is taken over; keys are scoped by caller, method and route;
//! expired keys are pruned in bounded batches.

use jobsd::store::{Begun, IdempotencyBegin, IdempotencyKey, StoredAnswer, StoredKey};

use super::*;

fn key(caller: &str, route: &str, key: &str) -> IdempotencyKey {
    IdempotencyKey {
        caller: caller.into(),
        method: "POST".into(),
        route: route.into(),
        key: key.into(),
    }
}

fn begin(key: &IdempotencyKey, hash: &str, at: DateTime<Utc>) -> IdempotencyBegin {
    IdempotencyBegin {
        key: key.clone(),
        claim: Uuid::new_v4(),
        request_hash: hash.into(),
        now: at,
        expired_before: at - chrono::Duration::hours(24),
    }
}

fn answer() -> StoredAnswer {
    StoredAnswer {
        status: 201,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("location".into(), "/api/v1/runs/x".into()),
        ],
        body: br#"{"job":{"job_id":"a"}}"#.to_vec(),
    }
}

/// The first attempt starts; a second finds it pending, then answered,
/// with the answer as stored; only the owner's claim completes it.
async fn a_key_is_taken_once_then_answered(store: Store) {
    let k = key("token:1", "/api/v1/jobs", "k1");
    let t0 = now();
    let first = begin(&k, "h1", t0);
    assert_eq!(
        store.idempotency_begin(&first).await.unwrap(),
        Begun::Started
    );
    let second = begin(&k, "h1", t0 + seconds(1));
    assert_eq!(
        store.idempotency_begin(&second).await.unwrap(),
        Begun::Existing(StoredKey {
            request_hash: "h1".into(),
            created_at: t0,
            answer: None
        })
    );
    // Not the second attempt's key: it can neither complete nor release it.
    assert!(!store
        .idempotency_complete(&k, second.claim, &answer(), now())
        .await
        .unwrap());
    assert!(!store.idempotency_release(&k, second.claim).await.unwrap());
    assert!(store
        .idempotency_complete(&k, first.claim, &answer(), now())
        .await
        .unwrap());
    // Answered once only.
    assert!(!store
        .idempotency_complete(&k, first.claim, &answer(), now())
        .await
        .unwrap());
    assert!(!store.idempotency_release(&k, first.claim).await.unwrap());
    let third = begin(&k, "h2", t0 + seconds(2));
    assert_eq!(
        store.idempotency_begin(&third).await.unwrap(),
        Begun::Existing(StoredKey {
            request_hash: "h1".into(),
            created_at: t0,
            answer: Some(answer())
        })
    );
}

/// Another caller, route or method has keys of its own; a released key is
/// free again.
async fn keys_are_scoped_and_a_released_key_is_free(store: Store) {
    let t0 = now();
    let k = key("token:1", "/api/v1/jobs", "same");
    let mut other_method = k.clone();
    other_method.method = "PUT".into();
    for scoped in [
        k.clone(),
        key("anonymous", "/api/v1/jobs", "same"),
        key("token:1", "/api/v1/jobs/{id}/run", "same"),
        other_method,
    ] {
        assert_eq!(
            store
                .idempotency_begin(&begin(&scoped, "h", t0))
                .await
                .unwrap(),
            Begun::Started,
            "{scoped:?}"
        );
    }
    let released = key("token:1", "/api/v1/jobs", "released");
    let first = begin(&released, "h", t0);
    assert_eq!(
        store.idempotency_begin(&first).await.unwrap(),
        Begun::Started
    );
    assert!(store
        .idempotency_release(&released, first.claim)
        .await
        .unwrap());
    let again = begin(&released, "other", t0 + seconds(1));
    assert_eq!(
        store.idempotency_begin(&again).await.unwrap(),
        Begun::Started
    );
}

/// A key older than the expiry is taken over by the next attempt (as if
/// pruned); the old attempt can no longer complete it.
async fn an_expired_key_is_taken_over(store: Store) {
    let k = key("anonymous", "/api/v1/jobs", "old");
    let long_ago = now() - chrono::Duration::hours(25);
    let old = begin(&k, "h", long_ago);
    assert_eq!(store.idempotency_begin(&old).await.unwrap(), Begun::Started);
    assert!(store
        .idempotency_complete(&k, old.claim, &answer(), long_ago)
        .await
        .unwrap());
    let fresh = begin(&k, "another", now());
    assert_eq!(
        store.idempotency_begin(&fresh).await.unwrap(),
        Begun::Started
    );
    assert!(!store
        .idempotency_complete(&k, old.claim, &answer(), now())
        .await
        .unwrap());
    let next = begin(&k, "another", now());
    match store.idempotency_begin(&next).await.unwrap() {
        Begun::Existing(stored) => {
            assert_eq!(stored.request_hash, "another");
            assert_eq!(stored.answer, None);
        }
        other => panic!("{other:?}"),
    }
}

/// Keys created before the cutoff go, `limit` at a time; newer ones stay.
async fn expired_keys_are_pruned_in_batches(store: Store) {
    let old = now() - chrono::Duration::hours(30);
    for i in 0..5 {
        let b = begin(
            &key("anonymous", "/api/v1/jobs", &format!("old{i}")),
            "h",
            old,
        );
        assert_eq!(store.idempotency_begin(&b).await.unwrap(), Begun::Started);
    }
    let fresh = key("anonymous", "/api/v1/jobs", "fresh");
    assert_eq!(
        store
            .idempotency_begin(&begin(&fresh, "h", now()))
            .await
            .unwrap(),
        Begun::Started
    );
    let cutoff = now() - chrono::Duration::hours(24);
    assert_eq!(store.idempotency_prune_before(cutoff, 3).await.unwrap(), 3);
    assert_eq!(store.idempotency_prune_before(cutoff, 3).await.unwrap(), 2);
    assert_eq!(store.idempotency_prune_before(cutoff, 3).await.unwrap(), 0);
    assert!(matches!(
        store
            .idempotency_begin(&begin(&fresh, "h", now()))
            .await
            .unwrap(),
        Begun::Existing(_)
    ));
}

conformance![
    a_key_is_taken_once_then_answered,
    keys_are_scoped_and_a_released_key_is_free,
    an_expired_key_is_taken_over,
    expired_keys_are_pruned_in_batches,
];
