//! Run counters (issue #12 §4): a job's `run_counts` and the stats' runs
//! by state come from counters kept by the store, not from counting runs.
//! Every operation that inserts runs, changes their state or deletes them
//! is taken here, and after each the counters must equal a real count of
//! the stored runs.

use std::collections::BTreeSet;

use jobsd::retention::prunable_states;
use jobsd::store::JobFilter;

use super::*;

/// The counts of ended runs among `counted`: what the counters hold (live
/// runs are counted from their indexes when read).
fn ended(counted: &[(String, i64)]) -> Vec<(String, i64)> {
    counted
        .iter()
        .filter(|(state, _)| !state.parse::<RunState>().unwrap().is_active())
        .cloned()
        .collect()
}

/// The jobs a test touched (deleted ones too), to check after each step.
struct Checked {
    store: Store,
    jobs: BTreeSet<String>,
}

impl Checked {
    fn new(store: &Store) -> Self {
        Checked {
            store: store.clone(),
            jobs: BTreeSet::new(),
        }
    }

    /// Asserts, after `step`, that every job's counters equal its counted
    /// runs, that its `run_counts` shows them, and that the stats' runs by
    /// state equal the runs listed in each state.
    async fn after(&mut self, step: &str) {
        let (jobs, _) = self
            .store
            .job_list(&JobFilter {
                limit: 1000,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        self.jobs.extend(jobs.iter().map(|j| j.job_id.clone()));
        for job_id in &self.jobs {
            let check = self.store.run_counts_check(job_id).await.unwrap();
            assert_eq!(
                check.counters,
                ended(&check.counted),
                "{step}: job {job_id}"
            );
            let job = jobs.iter().find(|j| &j.job_id == job_id);
            if job.is_none() && check.counted.is_empty() {
                // Gone with its runs: so are its counters.
                assert_eq!(check.rows, 0, "{step}: counter rows of deleted {job_id}");
            }
            if let Some(job) = job {
                let shown: Value = check
                    .counted
                    .iter()
                    .map(|(state, n)| (state.clone(), json!(n)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
                assert_eq!(counts(job), shown, "{step}: run_counts of {job_id}");
                let got = self.store.job_get(job_id).await.unwrap();
                assert_eq!(counts(&got), shown, "{step}: job_get of {job_id}");
            }
        }
        let stats = self.store.stats().await.unwrap();
        for state in RunState::ALL {
            let (_, listed) = self
                .store
                .run_list(&RunFilter {
                    state: Some(*state),
                    limit: 1,
                    ..RunFilter::default()
                })
                .await
                .unwrap();
            let counted: i64 = stats
                .runs
                .iter()
                .filter(|(s, _)| s == state)
                .map(|(_, n)| n)
                .sum();
            assert_eq!(counted, listed, "{step}: stats' {state} runs");
        }
    }
}

/// A job allowing ten runs at once, so manual runs pile up.
fn roomy(job_id: &str) -> NewJob {
    let mut job = hourly(job_id);
    job.max_instances = 10;
    job
}

/// Claims every due queued run for `instance`.
async fn claim_all(store: &Store, instance: &str) -> Vec<RunRow> {
    store.run_claim(&slots(instance, 100)).await.unwrap()
}

/// Every operation that writes runs, in turn; counters checked after each.
async fn counters_equal_counted_runs_after_every_write(store: Store) {
    let mut check = Checked::new(&store);
    check.after("empty").await;

    // Creation: a due one-shot job gets its run at once (claimed, or not).
    store.job_insert(&once_due("once"), "test").await.unwrap();
    check.after("one-shot job created").await;
    let claimed = store
        .job_insert_many(&[once_due("once-claimed")], &slots("w1", 10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    check.after("one-shot job created and claimed").await;

    // Firing: queued, waiting and missed runs stored by the scheduler.
    store.job_insert(&due("tick"), "test").await.unwrap();
    let at = now() - seconds(1);
    fire(
        &store,
        &[fired("tick", at, RunState::Queued, "due")],
        &[advance("tick", Some(now() + seconds(3_600)))],
    )
    .await;
    check.after("fired queued").await;
    store.job_insert(&due("skip"), "test").await.unwrap();
    fire(
        &store,
        &[fired("skip", at, RunState::Missed, "missed: late")],
        &[advance("skip", Some(now() + seconds(3_600)))],
    )
    .await;
    check.after("fired missed").await;

    // Manual runs, claims, heartbeats, and every final state.
    store.job_insert(&roomy("m"), "test").await.unwrap();
    for _ in 0..6 {
        trigger(&store, "m").await;
    }
    check.after("triggered").await;
    let running = claim_all(&store, "w1").await;
    assert!(running.len() >= 7, "{running:#?}");
    check.after("claimed").await;
    let beats: Vec<(RunClaim, Option<Value>)> =
        running.iter().map(|r| (claim_of(r), None)).collect();
    store.run_heartbeat("w1", LEASE_MS, &beats).await.unwrap();
    check.after("heartbeat").await;
    let of_m: Vec<&RunRow> = running.iter().filter(|r| r.job_id == "m").collect();
    assert_eq!(of_m.len(), 6);
    let ends = [
        RunState::Succeeded,
        RunState::Failed,
        RunState::TimedOut,
        RunState::Cancelled,
    ];
    let finished: Vec<(RunClaim, RunOutcome)> = of_m
        .iter()
        .zip(ends)
        .map(|(r, state)| (claim_of(r), outcome(state)))
        .collect();
    assert_eq!(store.run_finish_many(&finished).await.unwrap().len(), 4);
    check.after("finished in each final state").await;
    let others: Vec<(RunClaim, RunOutcome)> = running
        .iter()
        .filter(|r| r.job_id != "m")
        .map(|r| (claim_of(r), outcome(RunState::Succeeded)))
        .collect();
    store.run_finish_many(&others).await.unwrap();
    check.after("one-shot runs finished, jobs completed").await;

    // Retry, hand back, rescue of an expired lease.
    let (retried, handed) = (of_m[4], of_m[5]);
    assert!(store
        .run_retry(&claim_of(retried), &retry(0, "boom"))
        .await
        .unwrap());
    check.after("retried").await;
    assert_eq!(
        store
            .run_hand_back(&[claim_of(handed)], "shutting down")
            .await
            .unwrap(),
        1
    );
    check.after("handed back").await;
    let again = claim_all(&store, "w2").await;
    assert_eq!(again.len(), 2, "{again:#?}");
    check.after("claimed again").await;
    expire_lease(&store, again[0].run_id).await;
    assert_eq!(store.run_rescue_expired(10, "w3").await.unwrap().len(), 1);
    check.after("rescued").await;

    // Cancels: a queued run at once, a running one by request and its end.
    let queued = trigger(&store, "m").await;
    store.run_cancel(queued.run_id, "not needed").await.unwrap();
    check.after("queued run cancelled").await;
    let running = &again[1];
    store.run_cancel(running.run_id, "stop").await.unwrap();
    check.after("cancel requested").await;
    store
        .run_finish(&claim_of(running), &outcome(RunState::Cancelled))
        .await
        .unwrap();
    check.after("cancelled run ended").await;

    // Operator overrides: a finished run re-queued, a queued one failed.
    let (ended, _) = store
        .run_list(&RunFilter {
            job_id: Some("m".into()),
            state: Some(RunState::Succeeded),
            limit: 1,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    store
        .run_override_state(ended[0].run_id, RunState::Queued, "again")
        .await
        .unwrap();
    check.after("override to queued").await;
    store
        .run_override_state(ended[0].run_id, RunState::Failed, "give up")
        .await
        .unwrap();
    check.after("override to failed").await;

    // A late start: claimed as missed.
    let mut late = due("late");
    late.misfire_grace_ms = Some(1);
    store.job_insert(&late, "test").await.unwrap();
    fire(
        &store,
        &[fired("late", now() - seconds(10), RunState::Queued, "due")],
        &[advance("late", Some(now() + seconds(3_600)))],
    )
    .await;
    let missed = claim_all(&store, "w1").await;
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].state, RunState::Missed);
    check.after("claimed late: missed").await;

    // A run waiting for a slot, decided by the end of the one holding it.
    store.job_insert(&due("slot"), "test").await.unwrap();
    trigger(&store, "slot").await;
    let holder = claim_all(&store, "w1").await;
    assert_eq!(holder.len(), 1);
    fire(
        &store,
        &[fired(
            "slot",
            now() - seconds(1),
            RunState::Waiting,
            WAITING,
        )],
        &[advance("slot", Some(now() + seconds(3_600)))],
    )
    .await;
    check.after("fired waiting").await;
    store
        .run_finish(&claim_of(&holder[0]), &outcome(RunState::Succeeded))
        .await
        .unwrap();
    check.after("waiting run decided").await;
    store.run_settle_waiting(None, 10).await.unwrap();
    check.after("waiting runs settled").await;

    // Pruning: by age, and beyond a job's newest `keep_runs`.
    let states = prunable_states();
    store
        .runs_prune_beyond_newest("m", 1, &states, 100)
        .await
        .unwrap();
    check.after("pruned beyond the newest").await;
    let pruned = store
        .runs_prune_finished_before(now() + seconds(3_600), &states, 100)
        .await
        .unwrap();
    assert!(pruned > 0);
    check.after("pruned by age").await;
    store.jobs_prune_completed_without_runs(100).await.unwrap();
    check.after("completed jobs pruned").await;

    // Deleting jobs: one with a running run (removed once it ends), and
    // the failure records.
    trigger(&store, "m").await;
    let last = claim_all(&store, "w1").await;
    trigger(&store, "m").await;
    store.job_delete("m").await.unwrap();
    check.after("job deleted while running").await;
    store
        .run_finish(&claim_of(&last[0]), &outcome(RunState::Succeeded))
        .await
        .unwrap();
    check.after("deleted job's run ended").await;
    store.job_delete_failed().await.unwrap();
    check.after("failure records deleted").await;
}

/// Runs copied in (`jobsd copy`) are counted as they are inserted, in
/// whatever state they come.
async fn imported_runs_are_counted(store: Store) {
    let mut check = Checked::new(&store);
    store.job_insert(&roomy("src"), "test").await.unwrap();
    store.job_insert(&roomy("dst"), "test").await.unwrap();
    let done = trigger_and_claim(&store, "src", "w1").await;
    store
        .run_finish(&claim_of(&done), &outcome(RunState::Failed))
        .await
        .unwrap();
    trigger(&store, "src").await;
    let copies: Vec<RunRow> = runs_of(&store, "src")
        .await
        .into_iter()
        .map(|mut r| {
            r.run_id = Uuid::now_v7();
            r.job_id = "dst".into();
            r
        })
        .collect();
    assert_eq!(store.run_import(&copies).await.unwrap(), 2);
    check.after("imported").await;
    assert_eq!(store.run_import(&copies).await.unwrap(), 0);
    check.after("imported again: skipped").await;
}

conformance![
    counters_equal_counted_runs_after_every_write,
    imported_runs_are_counted
];

/// An upgraded database starts exact: the migration counts the runs
/// stored before it. Raw SQL per backend: the schema before the counters
/// is not the store's.
mod upgrade {
    use std::borrow::Cow;

    use super::ended;

    use jobsd::store::Store;
    use sqlx::migrate::Migrator;

    use crate::support::{execute_sql, TestDb};

    /// The runs stored before the upgrade: job `a` 2 queued and 1
    /// succeeded, job `b` 1 failed.
    const RUNS: [(&str, &str, &str); 4] = [
        ("00000000-0000-7000-8000-000000000001", "a", "queued"),
        ("00000000-0000-7000-8000-000000000002", "a", "queued"),
        ("00000000-0000-7000-8000-000000000003", "a", "succeeded"),
        ("00000000-0000-7000-8000-000000000004", "b", "failed"),
    ];

    fn before(migrator: Migrator, last: i64) -> Migrator {
        let kept: Vec<_> = migrator
            .migrations
            .iter()
            .filter(|m| m.version <= last)
            .cloned()
            .collect();
        Migrator {
            migrations: Cow::Owned(kept),
            ..migrator
        }
    }

    async fn upgraded(store: &Store) {
        for job in ["a", "b"] {
            execute_sql(
                store,
                &format!(
                    "INSERT INTO jobs (job_id, handler, schedule_kind, start_at, state) \
                     VALUES ('{job}', 'log', 'never', now(), 'paused')"
                ),
                &format!(
                    "INSERT INTO jobs (job_id, handler, schedule_kind, start_at, state, \
                     created_at, updated_at) VALUES ('{job}', 'log', 'never', 0, 'paused', 0, 0)"
                ),
            )
            .await;
        }
        for (run_id, job, state) in RUNS {
            execute_sql(
                store,
                &format!(
                    "INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, \
                     run_after, state) VALUES ('{run_id}', '{job}', 'log', '{{}}', 'manual', \
                     now(), now(), '{state}')"
                ),
                &format!(
                    "INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, \
                     run_after, created_at, state) VALUES ('{run_id}', '{job}', 'log', '{{}}', \
                     'manual', 0, 0, 0, '{state}')"
                ),
            )
            .await;
        }
        store.migrate().await.expect("upgrades");
        let counts = |pairs: &[(&str, i64)]| -> Vec<(String, i64)> {
            pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
        };
        let a = store.run_counts_check("a").await.unwrap();
        assert_eq!(a.counted, counts(&[("queued", 2), ("succeeded", 1)]));
        assert_eq!(a.counters, ended(&a.counted));
        let b = store.run_counts_check("b").await.unwrap();
        assert_eq!(b.counters, counts(&[("failed", 1)]));
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.runs.iter().map(|(_, n)| n).sum::<i64>(), 4);
    }

    async fn connect(db: &TestDb) -> Store {
        Store::connect(&db.url, 2, std::time::Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn postgres() {
        let db = TestDb::on(jobsd::store::Backend::Postgres);
        let store = connect(&db).await;
        let pool = store.as_postgres().expect("postgres").pool().clone();
        before(sqlx::migrate!("./migrations/postgres"), 6)
            .run(&pool)
            .await
            .unwrap();
        upgraded(&store).await;
    }

    #[tokio::test]
    async fn sqlite() {
        let db = TestDb::on(jobsd::store::Backend::Sqlite);
        let store = connect(&db).await;
        let path = store.as_sqlite().expect("sqlite").path().to_path_buf();
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(path),
        )
        .await
        .unwrap();
        before(sqlx::migrate!("./migrations/sqlite"), 3)
            .run(&pool)
            .await
            .unwrap();
        pool.close().await;
        upgraded(&store).await;
    }
}
