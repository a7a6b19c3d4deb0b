//! API tokens: stored by hash, listed without it, found by hash whatever
//! their state, revoked under a check that sees the other live admin
//! tokens, and their last use recorded.

use jobsd::auth::Scope;
use jobsd::store::{NewToken, StoreError, TokenKey, TokenRow};

use super::*;

/// A token to store, named `name`, with a made-up prefix and hash.
fn new_token(name: &str, scope: Scope, created_at: DateTime<Utc>) -> NewToken {
    let tag = Uuid::new_v4().simple().to_string();
    NewToken {
        id: Uuid::now_v7(),
        name: name.into(),
        prefix: format!("jobsd_{}", &tag[..8]),
        hash: format!("{tag}{tag}"),
        scope,
        created_at,
        expires_at: None,
    }
}

/// The row `new` should read back as.
fn row_of(new: &NewToken) -> TokenRow {
    TokenRow {
        id: new.id,
        name: new.name.clone(),
        prefix: new.prefix.clone(),
        scope: new.scope,
        created_at: new.created_at,
        expires_at: new.expires_at,
        revoked_at: None,
        last_used_at: None,
    }
}

/// Tokens read back as written (oldest first, without their hash), are
/// found by hash, and a taken prefix or hash is a conflict.
async fn tokens_are_stored_listed_and_found_by_hash(store: Store) {
    assert!(!store.token_exists().await.unwrap());
    assert!(store.token_list().await.unwrap().is_empty());
    let t0 = now();
    let mut ci = new_token("ci", Scope::Read, t0);
    ci.expires_at = Some(t0 + seconds(3600));
    let ops = new_token("ops", Scope::Admin, t0 + seconds(1));
    assert_eq!(store.token_insert(&ops).await.unwrap(), row_of(&ops));
    assert_eq!(store.token_insert(&ci).await.unwrap(), row_of(&ci));
    assert!(store.token_exists().await.unwrap());

    assert_eq!(
        store.token_list().await.unwrap(),
        [row_of(&ci), row_of(&ops)]
    );
    assert_eq!(
        store.token_find_by_hash(&ops.hash).await.unwrap(),
        Some(row_of(&ops))
    );
    assert_eq!(store.token_find_by_hash("f00").await.unwrap(), None);

    let same_prefix = NewToken {
        id: Uuid::now_v7(),
        hash: "other".into(),
        ..ci.clone()
    };
    let same_hash = NewToken {
        id: Uuid::now_v7(),
        prefix: "jobsd_zzzzzzzz".into(),
        ..ci.clone()
    };
    for taken in [same_prefix, same_hash] {
        assert!(
            matches!(
                store.token_insert(&taken).await,
                Err(StoreError::Conflict(_))
            ),
            "{taken:?}"
        );
    }
    assert_eq!(store.token_list().await.unwrap().len(), 2);
}

/// Live tokens are those neither revoked nor expired at the given time.
async fn live_tokens_are_counted_by_scope_at_a_time(store: Store) {
    let t0 = now();
    let mut expiring = new_token("expiring", Scope::Admin, t0);
    expiring.expires_at = Some(t0 + seconds(60));
    let lasting = new_token("lasting", Scope::Admin, t0);
    let revoked = new_token("revoked", Scope::Admin, t0);
    let reader = new_token("reader", Scope::Read, t0);
    for t in [&expiring, &lasting, &revoked, &reader] {
        store.token_insert(t).await.unwrap();
    }
    store
        .token_revoke(&TokenKey::Id(revoked.id), t0, |_, _| Ok(()))
        .await
        .unwrap();
    let count = |scope, at| {
        let store = store.clone();
        async move { store.token_count_live(scope, at).await.unwrap() }
    };
    assert_eq!(count(Scope::Admin, t0).await, 2);
    assert_eq!(count(Scope::Admin, t0 + seconds(59)).await, 2);
    // Expired at the instant it expires, as the API judges it.
    assert_eq!(count(Scope::Admin, t0 + seconds(60)).await, 1);
    assert_eq!(count(Scope::Read, t0).await, 1);
    assert_eq!(count(Scope::Write, t0).await, 0);
}

/// Revoking by id or prefix sets the time once; the check sees the token
/// and the other live admin tokens, and a refusal writes nothing.
async fn tokens_are_revoked_by_id_or_prefix_under_a_check(store: Store) {
    let t0 = now();
    let a = new_token("a", Scope::Admin, t0);
    let b = new_token("b", Scope::Admin, t0);
    let r = new_token("r", Scope::Read, t0);
    for t in [&a, &b, &r] {
        store.token_insert(t).await.unwrap();
    }
    let mut seen = None;
    let revoked = store
        .token_revoke(
            &TokenKey::Prefix(r.prefix.clone()),
            t0 + seconds(1),
            |t, others| {
                seen = Some((t.clone(), others));
                Ok(())
            },
        )
        .await
        .unwrap();
    assert_eq!(seen, Some((row_of(&r), 2)));
    assert_eq!(
        revoked,
        TokenRow {
            revoked_at: Some(t0 + seconds(1)),
            ..row_of(&r)
        }
    );

    let mut others_of_a = None;
    store
        .token_revoke(&TokenKey::Id(a.id), t0 + seconds(2), |_, others| {
            others_of_a = Some(others);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(others_of_a, Some(1), "b is the other live admin token");

    let refused = store
        .token_revoke(&TokenKey::Id(b.id), t0 + seconds(3), |_, others| {
            assert_eq!(others, 0);
            Err("b is the last one".into())
        })
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Conflict(m)) if m == "b is the last one"),
        "{refused:?}"
    );
    assert_eq!(
        store.token_find_by_hash(&b.hash).await.unwrap(),
        Some(row_of(&b)),
        "a refused revocation writes nothing"
    );

    // Again: returned as it is, the first time kept.
    let again = store
        .token_revoke(&TokenKey::Id(r.id), t0 + seconds(9), |_, _| Ok(()))
        .await
        .unwrap();
    assert_eq!(again.revoked_at, Some(t0 + seconds(1)));

    for missing in [
        TokenKey::Id(Uuid::now_v7()),
        TokenKey::Prefix("jobsd_nothere0".into()),
    ] {
        assert!(matches!(
            store.token_revoke(&missing, t0, |_, _| Ok(())).await,
            Err(StoreError::NotFound)
        ));
    }
    assert!(store.token_exists().await.unwrap());
}

/// Last uses are recorded; an older time than the stored one is ignored,
/// and an unknown token is no error.
async fn last_uses_are_recorded_and_never_go_back(store: Store) {
    let t0 = now();
    let a = new_token("a", Scope::Write, t0);
    let b = new_token("b", Scope::Read, t0 + seconds(1));
    store.token_insert(&a).await.unwrap();
    store.token_insert(&b).await.unwrap();
    store.token_touch(&[]).await.unwrap();
    store
        .token_touch(&[(a.id, t0 + seconds(60)), (Uuid::now_v7(), t0)])
        .await
        .unwrap();
    store
        .token_touch(&[(a.id, t0 + seconds(30)), (b.id, t0 + seconds(5))])
        .await
        .unwrap();
    let used: Vec<Option<DateTime<Utc>>> = store
        .token_list()
        .await
        .unwrap()
        .iter()
        .map(|t| t.last_used_at)
        .collect();
    assert_eq!(used, [Some(t0 + seconds(60)), Some(t0 + seconds(5))]);
}

conformance![
    tokens_are_stored_listed_and_found_by_hash,
    live_tokens_are_counted_by_scope_at_a_time,
    tokens_are_revoked_by_id_or_prefix_under_a_check,
    last_uses_are_recorded_and_never_go_back,
];
