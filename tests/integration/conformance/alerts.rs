//! Alerts: a job's own settings stored with it, the feed that advances
//! once per version read (states, alerts as events and the cursor in one
//! write, or nothing), a job's open alerts on its row, and what the clock
//! checks read (watched jobs, running runs).

use std::collections::BTreeSet;

use jobsd::alerts::rules::{AlertKind, AlertState};
use jobsd::alerts::settings::JobAlerts;
use jobsd::store::{AlertAdvance, EventQuery, NewAlert};

use super::*;

fn with_alerts(job_id: &str, alerts: JobAlerts) -> NewJob {
    NewJob {
        alerts,
        ..hourly(job_id)
    }
}

fn failing() -> AlertState {
    AlertState {
        consecutive_failures: 3,
        open: BTreeSet::from([AlertKind::Failing]),
        last_raised: [(AlertKind::Failing, now())].into(),
    }
}

async fn job_settings_are_stored_and_replaced(store: Store) {
    let own = JobAlerts {
        failures_before_alert: Some(2),
        expect_success_within_ms: Some(93_600_000),
        ..JobAlerts::default()
    };
    store.job_insert(&with_alerts("a", own), "i").await.unwrap();
    let row = store.job_get("a").await.unwrap();
    assert_eq!(row.alerts, own);
    assert!(row.alerts_open.is_empty());
    let changed = JobAlerts {
        max_duration_ms: Some(0),
        ..JobAlerts::default()
    };
    let replaced = store
        .job_replace(&with_alerts("a", changed), row.row_version)
        .await
        .unwrap();
    assert_eq!(replaced.alerts, changed);
    store.job_insert(&hourly("plain"), "i").await.unwrap();
    assert!(store.job_get("plain").await.unwrap().alerts.is_empty());
}

async fn the_feed_advances_once_from_the_version_it_read(store: Store) {
    store.job_insert(&hourly("a"), "i").await.unwrap();
    let run = trigger(&store, "a").await;
    let feed = store.alert_feed().await.unwrap();
    assert!(feed.position.is_some(), "a fresh feed starts at the start");
    assert_eq!(feed.checked_at, None);
    let at = now();
    let state = failing();
    let advance = AlertAdvance {
        from_version: feed.version,
        to: None,
        checked_at: Some(at),
        states: vec![("a".into(), Some(state.clone()))],
        alerts: vec![NewAlert {
            kind: AlertKind::Failing,
            job_id: "a".into(),
            run_id: Some(run.run_id),
            reason: "3 failed runs in a row".into(),
            at,
        }],
    };
    assert!(store.alert_feed_advance(&advance).await.unwrap());
    // The same step again (another replica's, from the same version): nothing.
    assert!(!store.alert_feed_advance(&advance).await.unwrap());
    let moved = store.alert_feed().await.unwrap();
    assert_eq!(moved.version, feed.version + 1);
    assert_eq!(moved.checked_at, Some(at));
    assert_eq!(moved.position, feed.position, "`to: None` keeps the cursor");

    let states = store
        .alert_states(&["a".into(), "nobody".into()])
        .await
        .unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states["a"], state);
    assert_eq!(store.job_get("a").await.unwrap().alerts_open, ["failing"]);

    // Written once, as an event of the job and the run.
    let alerts = crate::support::wait_for("the alert event", Duration::from_secs(10), || async {
        let page = store
            .events_page(&EventQuery {
                job_id: Some("a".into()),
                limit: 100,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        let alerts: Vec<_> = page
            .events
            .into_iter()
            .filter(|e| e.event_type.starts_with("alert."))
            .collect();
        (!alerts.is_empty()).then_some(alerts)
    })
    .await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].event_type, "alert.failing");
    assert_eq!(alerts[0].run_id, Some(run.run_id));
    assert_eq!(alerts[0].reason.as_deref(), Some("3 failed runs in a row"));

    // A step that moves the cursor and removes the state.
    let to = alerts[0].position;
    assert!(store
        .alert_feed_advance(&AlertAdvance {
            from_version: moved.version,
            to: Some(to),
            states: vec![("a".into(), None)],
            ..AlertAdvance::default()
        })
        .await
        .unwrap());
    let last = store.alert_feed().await.unwrap();
    assert_eq!(last.position, Some(to));
    assert_eq!(last.checked_at, Some(at), "kept when not checked");
    assert!(store.alert_states(&["a".into()]).await.unwrap().is_empty());
    assert!(store.job_get("a").await.unwrap().alerts_open.is_empty());
}

async fn the_clock_checks_read_watched_jobs_and_running_runs(store: Store) {
    let watched = JobAlerts {
        expect_success_within_ms: Some(60_000),
        max_duration_ms: Some(1_000),
        ..JobAlerts::default()
    };
    store
        .job_insert(&with_alerts("watched", watched), "i")
        .await
        .unwrap();
    store.job_insert(&hourly("plain"), "i").await.unwrap();
    let mut paused = with_alerts("paused", watched);
    paused.state = JobState::Paused;
    paused.next_run_at = None;
    store.job_insert(&paused, "i").await.unwrap();

    let ids = |jobs: &[jobsd::store::WatchedJob]| {
        let mut ids: Vec<String> = jobs.iter().map(|j| j.job_id.clone()).collect();
        ids.sort();
        ids
    };
    let own = store.alert_watched_jobs(false).await.unwrap();
    assert_eq!(ids(&own), ["watched"]);
    assert_eq!(own[0].alerts, watched);
    assert_eq!(own[0].last_success, None);
    let every = store.alert_watched_jobs(true).await.unwrap();
    assert_eq!(ids(&every), ["plain", "watched"], "not the paused one");

    // A success is seen as the job's last.
    let run = trigger_and_claim(&store, "watched", "w1").await;
    let running = store.alert_running_runs(false).await.unwrap();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].run_id, run.run_id);
    assert_eq!(running[0].alerts, watched);
    assert!(running[0].started_at <= now());
    trigger_and_claim(&store, "plain", "w1").await;
    assert_eq!(store.alert_running_runs(false).await.unwrap().len(), 1);
    assert_eq!(store.alert_running_runs(true).await.unwrap().len(), 2);
    store
        .run_finish(&claim_of(&run), &outcome(RunState::Succeeded))
        .await
        .unwrap();
    let own = store.alert_watched_jobs(false).await.unwrap();
    assert!(own[0].last_success.is_some(), "{own:?}");
    assert!(store.alert_running_runs(false).await.unwrap().is_empty());
}

conformance![
    job_settings_are_stored_and_replaced,
    the_feed_advances_once_from_the_version_it_read,
    the_clock_checks_read_watched_jobs_and_running_runs,
];
