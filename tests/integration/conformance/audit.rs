//! The audit log: entries read back as written, newest (highest UUIDv7)
//! first, filtered by job, paged by cursor, and pruned by age in batches.

use jobsd::store::{AuditEntry, AuditFilter, AuditMethod};

use super::*;

fn entry(job_id: Option<&str>, at: DateTime<Utc>) -> AuditEntry {
    AuditEntry {
        id: Uuid::now_v7(),
        at,
        actor: "ci".into(),
        token_id: Some(Uuid::new_v4()),
        method: AuditMethod::Patch,
        path: format!("/api/v1/jobs/{}", job_id.unwrap_or("-")),
        job_id: job_id.map(str::to_string),
        run_id: job_id.map(|_| Uuid::new_v4()),
        status: 200,
        reason: job_id.map(|j| format!("because of {j}")),
    }
}

fn filter(job_id: Option<&str>, before: Option<Uuid>, limit: i64) -> AuditFilter {
    AuditFilter {
        job_id: job_id.map(str::to_string),
        before,
        limit,
    }
}

/// Newest first, every field as written; by job; a page at a time.
async fn entries_are_listed_newest_first_by_job_and_cursor(store: Store) {
    let mut written = Vec::new();
    for (i, job) in ["a", "b", "a", "a"].into_iter().enumerate() {
        let mut e = entry(Some(job), now() + seconds(i as i64));
        if i == 1 {
            e.token_id = None;
            e.actor = "anonymous".into();
            e.method = AuditMethod::Delete;
            e.status = 403;
        }
        store.audit_insert(&e).await.unwrap();
        written.push(e);
    }
    let none = entry(None, now());
    store.audit_insert(&none).await.unwrap();
    written.push(none);

    let newest_first: Vec<AuditEntry> = written.iter().rev().cloned().collect();
    assert_eq!(
        store.audit_list(&filter(None, None, 100)).await.unwrap(),
        newest_first
    );
    let of_a: Vec<AuditEntry> = newest_first
        .iter()
        .filter(|e| e.job_id.as_deref() == Some("a"))
        .cloned()
        .collect();
    assert_eq!(
        store
            .audit_list(&filter(Some("a"), None, 100))
            .await
            .unwrap(),
        of_a
    );
    let page1 = store.audit_list(&filter(Some("a"), None, 2)).await.unwrap();
    assert_eq!(page1, of_a[..2]);
    let page2 = store
        .audit_list(&filter(Some("a"), Some(page1[1].id), 2))
        .await
        .unwrap();
    assert_eq!(page2, of_a[2..]);
    assert!(store
        .audit_list(&filter(Some("nope"), None, 10))
        .await
        .unwrap()
        .is_empty());
}

/// Entries recorded before the cutoff go, `limit` at a time.
async fn old_entries_are_pruned_in_batches(store: Store) {
    let old = now() - chrono::Duration::days(30);
    for _ in 0..3 {
        store.audit_insert(&entry(Some("j"), old)).await.unwrap();
    }
    let recent = entry(Some("j"), now());
    store.audit_insert(&recent).await.unwrap();
    let cutoff = now() - chrono::Duration::days(1);
    assert_eq!(store.audit_prune_before(cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.audit_prune_before(cutoff, 2).await.unwrap(), 1);
    assert_eq!(store.audit_prune_before(cutoff, 2).await.unwrap(), 0);
    assert_eq!(
        store.audit_list(&filter(None, None, 10)).await.unwrap(),
        vec![recent]
    );
}

conformance![
    entries_are_listed_newest_first_by_job_and_cursor,
    old_entries_are_pruned_in_batches,
];
