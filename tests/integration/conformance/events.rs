//! The events outbox (`crate::events`): every change's events, written by
//! the stores' triggers in the change's transaction, read by cursor and
//! filter, pruned by age; stream tickets.

use chrono::Duration;
use jobsd::domain::event_types::TypeFilter;
use jobsd::domain::{JobState, RunState};
use jobsd::store::{EventQuery, EventRow, Store};
use serde_json::json;

use super::{
    claim_of, expire_lease, hourly, now, once_due, outcome, retry, seconds, slots,
    trigger_and_claim,
};

conformance![
    a_runs_life_and_its_jobs_changes_are_events_in_order,
    retries_rescues_hand_backs_and_progress_are_told_apart,
    pages_filter_by_type_job_and_run_and_never_repeat_or_skip,
    events_older_than_the_cutoff_are_pruned,
    tickets_are_found_by_hash_until_pruned,
];

fn all() -> EventQuery {
    EventQuery {
        limit: 1000,
        ..EventQuery::default()
    }
}

async fn events(store: &Store, query: EventQuery) -> Vec<EventRow> {
    store.events_page(&query).await.unwrap().events
}

/// [`events`] once at least `n` are visible. On PostgreSQL a committed
/// event shows once every transaction older than its own has ended, in
/// any database of the cluster (the other tests' too): soon, not at once.
async fn events_n(store: &Store, query: EventQuery, n: usize) -> Vec<EventRow> {
    crate::support::wait_for(
        &format!("{n} events"),
        std::time::Duration::from_secs(10),
        || {
            let query = query.clone();
            async move {
                let got = events(store, query).await;
                (got.len() >= n).then_some(got)
            }
        },
    )
    .await
}

fn types(events: &[EventRow]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

/// A one-shot job created due and claimed at once, then finished: created,
/// queued, running, succeeded, completed. Another job paused, resumed,
/// changed and deleted; the service paused (twice: one event) and resumed.
/// Each event names its ids and carries its history's time; the order is
/// the order of commits.
async fn a_runs_life_and_its_jobs_changes_are_events_in_order(store: Store) {
    let claimed = store
        .job_insert_many(&[once_due("once")], &slots("w1", 1))
        .await
        .unwrap();
    let run = &claimed[0];
    assert!(store
        .run_finish(&claim_of(run), &outcome(RunState::Succeeded))
        .await
        .unwrap());
    let mut got = events_n(&store, all(), 5).await;
    // The job and its run are written by one statement, whose events come
    // in the order of its triggers: the job's first here.
    if let Some(i) = got.iter().position(|e| e.event_type == "job.created") {
        let created = got.remove(i);
        got.insert(0, created);
    }
    assert_eq!(
        types(&got),
        [
            "job.created",
            "run.queued",
            "run.running",
            "run.succeeded",
            "job.completed"
        ],
        "{got:#?}"
    );
    for e in &got {
        assert_eq!(e.job_id.as_deref(), Some("once"));
    }
    for e in &got[1..4] {
        assert_eq!(e.run_id, Some(run.run_id));
        assert_eq!(e.attempt, Some(1));
    }
    assert_eq!(got[1].from_state, None);
    assert_eq!(got[2].from_state.as_deref(), Some("queued"));
    assert_eq!(got[2].instance.as_deref(), Some("w1"));
    assert_eq!(got[3].from_state.as_deref(), Some("running"));
    assert_eq!(got[3].reason.as_deref(), Some("handler ended succeeded"));
    assert_eq!(got[4].from_state.as_deref(), Some("running"));
    let t = now();
    for e in &got {
        assert!(e.at <= t && e.at > t - seconds(30), "{e:?}");
    }
    // The run's events carry its history's times.
    let stored = store.run_get(run.run_id).await.unwrap();
    let history_at: Vec<String> = stored
        .history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["at"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(history_at.len(), 3);
    for (e, at) in got[1..4].iter().zip(&history_at) {
        assert_eq!(
            e.at,
            at.parse::<chrono::DateTime<chrono::Utc>>().unwrap(),
            "{e:?}"
        );
    }
    let last = got.last().unwrap().position;
    store.job_insert(&hourly("h"), "test").await.unwrap();
    let row = store.job_get("h").await.unwrap();
    let row = store
        .job_set_state("h", JobState::Paused, None, row.row_version)
        .await
        .unwrap();
    let row = store
        .job_set_state("h", JobState::Running, row.next_run_at, row.row_version)
        .await
        .unwrap();
    let mut changed = hourly("h");
    changed.description = Some("changed".into());
    store.job_replace(&changed, row.row_version).await.unwrap();
    store.service_set_paused(true).await.unwrap();
    store.service_set_paused(true).await.unwrap();
    store.service_set_paused(false).await.unwrap();
    store.job_delete("h").await.unwrap();
    let later = events_n(
        &store,
        EventQuery {
            after: Some(last),
            ..all()
        },
        7,
    )
    .await;
    assert_eq!(
        types(&later),
        [
            "job.created",
            "job.paused",
            "job.resumed",
            "job.updated",
            "service.paused",
            "service.resumed",
            "job.deleted"
        ],
        "{later:#?}"
    );
    assert_eq!(later[1].from_state.as_deref(), Some("running"));
    assert_eq!(later[2].from_state.as_deref(), Some("paused"));
    assert_eq!(later[4].job_id, None);
    assert_eq!(later[6].job_id.as_deref(), Some("h"));
}

/// A retry is `run.retried`; a lease that ran out is `run.dead` then
/// `run.retried` (or `run.failed`); a run handed back at shutdown is
/// `run.queued` again; a new progress is `run.progress`.
async fn retries_rescues_hand_backs_and_progress_are_told_apart(store: Store) {
    let mut job = hourly("r");
    job.max_retries = 5;
    store.job_insert(&job, "test").await.unwrap();
    let first = trigger_and_claim(&store, "r", "w1").await;
    assert!(store
        .run_retry(&claim_of(&first), &retry(0, "boom"))
        .await
        .unwrap());
    let second = store.run_claim(&slots("w1", 10)).await.unwrap().remove(0);
    assert_eq!(second.attempt, 2);
    assert_eq!(
        store
            .run_hand_back(&[claim_of(&second)], "shutting down")
            .await
            .unwrap(),
        1
    );
    let third = store.run_claim(&slots("w2", 10)).await.unwrap().remove(0);
    assert_eq!(third.attempt, 2);
    store
        .run_heartbeat(
            "w2",
            60_000,
            &[(claim_of(&third), Some(json!({"done": 1})))],
        )
        .await
        .unwrap();
    expire_lease(&store, third.run_id).await;
    let rescued = store.run_rescue_expired(10, "w3").await.unwrap();
    assert_eq!(rescued.len(), 1);
    let got: Vec<EventRow> = events_n(
        &store,
        EventQuery {
            run_id: Some(first.run_id),
            ..all()
        },
        9,
    )
    .await;
    assert_eq!(
        types(&got),
        [
            "run.queued",
            "run.running",
            "run.retried",
            "run.running",
            "run.queued",
            "run.running",
            "run.progress",
            "run.dead",
            "run.retried"
        ],
        "{got:#?}"
    );
    assert_eq!(got[2].reason.as_deref(), Some("retrying after boom"));
    assert_eq!(got[4].reason.as_deref(), Some("shutting down"));
    assert_eq!(got[6].instance.as_deref(), Some("w2"));
    assert_eq!(got[7].from_state.as_deref(), Some("running"));
    assert_eq!(got[8].from_state.as_deref(), Some("dead"));
}

/// Filters by exact type, by group, by job and by run; pages of two from a
/// cursor, ascending and descending, cover every event once.
async fn pages_filter_by_type_job_and_run_and_never_repeat_or_skip(store: Store) {
    for id in ["a", "b"] {
        store.job_insert(&hourly(id), "test").await.unwrap();
        let run = trigger_and_claim(&store, id, "w").await;
        let end = if id == "a" {
            RunState::Failed
        } else {
            RunState::Succeeded
        };
        store
            .run_finish(&claim_of(&run), &outcome(end))
            .await
            .unwrap();
    }
    let every = events_n(&store, all(), 9).await;
    // Run a's failure left a failure record: a third job.
    assert_eq!(every.len(), 9, "{:?}", types(&every));
    let only = |filter: &str| EventQuery {
        types: TypeFilter::parse(filter).unwrap(),
        ..all()
    };
    let failed = events(&store, only("run.failed")).await;
    assert_eq!(types(&failed), ["run.failed"]);
    assert_eq!(failed[0].job_id.as_deref(), Some("a"));
    assert_eq!(
        types(&events(&store, only("job.")).await),
        ["job.created", "job.created", "job.created"]
    );
    let mut some = events(&store, only("run.failed,run.succeeded,job.created")).await;
    assert_eq!(some.len(), 5);
    some.retain(|e| e.event_type != "job.created");
    assert_eq!(types(&some), ["run.failed", "run.succeeded"]);
    let of_b = events(
        &store,
        EventQuery {
            job_id: Some("b".into()),
            ..all()
        },
    )
    .await;
    assert_eq!(of_b.len(), 4);
    assert!(of_b.iter().all(|e| e.job_id.as_deref() == Some("b")));

    for descending in [false, true] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = events(
                &store,
                EventQuery {
                    after,
                    descending,
                    limit: 3,
                    ..EventQuery::default()
                },
            )
            .await;
            let Some(last) = page.last() else { break };
            after = Some(last.position);
            seen.extend(page);
        }
        let mut expected = every.clone();
        if descending {
            expected.reverse();
        }
        assert_eq!(seen, expected, "descending: {descending}");
    }
}

async fn events_older_than_the_cutoff_are_pruned(store: Store) {
    store.job_insert(&hourly("old"), "test").await.unwrap();
    let before = events_n(&store, all(), 1).await;
    assert_eq!(before.len(), 1);
    assert_eq!(
        store
            .events_prune_before(now() - seconds(60), 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .events_prune_before(now() + seconds(1), 100)
            .await
            .unwrap(),
        1
    );
    assert!(events(&store, all()).await.is_empty());
}

async fn tickets_are_found_by_hash_until_pruned(store: Store) {
    let expires = now() + Duration::minutes(10);
    store
        .event_ticket_insert("hash-1", None, "type=run.", expires)
        .await
        .unwrap();
    let got = store.event_ticket_get("hash-1").await.unwrap().unwrap();
    assert_eq!(got.query, "type=run.");
    assert_eq!(got.expires_at, expires);
    assert!(!got.token_revoked);
    assert_eq!(store.event_ticket_get("hash-2").await.unwrap(), None);
    assert_eq!(store.event_tickets_prune(now()).await.unwrap(), 0);
    assert_eq!(
        store
            .event_tickets_prune(expires + seconds(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.event_ticket_get("hash-1").await.unwrap(), None);
}
