//! The embedded store's query plans under stale statistics, as
//! `plans.rs` checks PostgreSQL's: the tables analysed after a quiet period
//! (a few hundred finished runs), then a burst arrives that the statistics
//! know nothing of. SQLite plans every statement from `sqlite_stat1`, so a
//! plan chosen on it must still reach `runs` and `jobs` by index. The
//! store's safeguards are the `+state` fences (a lookup by primary key must
//! not turn into a walk of a partial index on `state`) and its `INDEXED BY`
//! choices; this test fails when either is lost.
//!
//! It records every statement the store runs while it takes each hot path
//! (create, fire, claim, heartbeat, finish, retry, hand back, rescue,
//! settle, read), from sqlx's statement log, and explains each one
//! (`EXPLAIN QUERY PLAN`) on the same file. A plan fails when it
//! - scans `runs` or `jobs` whole, or by an index of all their rows
//!   (history grows without bound), or
//! - scans any index of them inside a loop (per row of a join, or in a
//!   correlated subquery): quadratic in the burst.
//!
//! SQLite only: PostgreSQL's plans are `plans.rs`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use jobsd::domain::{RunState, Trigger};
use jobsd::store::{Backend, ClaimSlots, FiredRun, RunClaim, RunOutcome, RunRetry, Store};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::support::{execute_sql, TestDb};

/// Indexes of a bounded set of rows (live work, not history): a scan of
/// one of them is as long as the work waiting, and fine as the outer loop.
const PARTIAL_INDEXES: [&str; 7] = [
    "runs_queue_idx",
    "runs_running_idx",
    "runs_running_lock_idx",
    "runs_active_job_idx",
    "runs_waiting_job_idx",
    "jobs_due_idx",
    "jobs_file_source_idx",
];

/// Statements sqlx logs (target `sqlx::query`, field `db.statement`).
#[derive(Clone, Default)]
struct Statements(Arc<Mutex<BTreeSet<String>>>);

impl<S: tracing::Subscriber> Layer<S> for Statements {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        struct Sql(Option<String>);
        impl Visit for Sql {
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "db.statement" {
                    self.0 = Some(value.to_string());
                }
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "db.statement" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        let mut sql = Sql(None);
        event.record(&mut sql);
        if let (Some(sql), Ok(mut all)) = (sql.0, self.0.lock()) {
            all.insert(sql);
        }
    }
}

/// The recorder, installed once per process (sqlx logs from its own
/// worker threads, so it must be the global subscriber).
fn statements() -> Statements {
    static RECORDER: OnceLock<Statements> = OnceLock::new();
    RECORDER
        .get_or_init(|| {
            let recorder = Statements::default();
            let subscriber = tracing_subscriber::registry().with(recorder.clone());
            let _ = tracing::subscriber::set_global_default(subscriber);
            recorder
        })
        .clone()
}

/// The quiet period (300 runs, one each running, queued and waiting),
/// analysed; then the burst, not analysed: 20,000 jobs
/// due, each with a running run (some behind lock keys), and 10,000
/// queued runs.
const FIXTURE: &str = "
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
    INSERT INTO jobs (job_id, handler, schedule_kind, start_at, state, created_at, updated_at)
    SELECT 'quiet-' || i, 'log', 'once', 0, 'completed', 0, 0 FROM n;
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
    INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after,
      created_at, started_at, finished_at, state, attempt, instance, history)
    SELECT printf('00000000-0000-7000-8000-%012d', i), 'quiet-' || i, 'log', '{}', 'schedule',
      0, 0, 0, 0, 0,
      CASE i WHEN 1 THEN 'running' WHEN 2 THEN 'queued' WHEN 3 THEN 'waiting' ELSE 'succeeded' END,
      1, 'inst', '[]' FROM n;
    ANALYZE;
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
    INSERT INTO jobs (job_id, handler, schedule_kind, interval_ms, start_at, state, next_run_at,
      max_instances, created_at, updated_at)
    SELECT 'busy-' || i, 'log', 'interval', 1000, 0, 'running',
      CAST(unixepoch('subsec') * 1000000 AS INTEGER) - 1000000, 2, 0, 0 FROM n;
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
    INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after,
      created_at, started_at, state, attempt, instance, lease_expires_at, lock_key, history)
    SELECT printf('00000000-0000-7000-9000-%012d', i), 'busy-' || i, 'log', '{}', 'schedule',
      i, 0, 0, 0, 'running', 1, 'inst', 0,
      CASE WHEN i % 10 = 0 THEN 'key-' || (i % 50) END, '[]' FROM n;
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
    INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after,
      created_at, state, lock_key, history)
    SELECT printf('00000000-0000-7000-a000-%012d', i), 'busy-' || i, 'log', '{}', 'manual',
      0, 0, 0, 'queued', CASE WHEN i % 3 = 0 THEN 'key-' || (i % 50) END, '[]' FROM n;
";

fn slots(limit: i64) -> ClaimSlots {
    ClaimSlots {
        instance: "plans".into(),
        lease_ms: 30_000,
        limit,
    }
}

fn outcome(state: RunState) -> RunOutcome {
    RunOutcome {
        state,
        result: None,
        error: (state != RunState::Succeeded).then(|| "boom".into()),
        traceback: None,
        reason: "handler returned".into(),
        ended_ago_ms: 0,
    }
}

/// Takes every hot path of the store once, on the burst.
async fn take_the_hot_paths(store: &Store) {
    let mut due: Vec<_> = (0..300)
        .map(|i| {
            let mut job = crate::conformance::hourly(&format!("new-{i}"));
            job.schedule_kind = jobsd::domain::ScheduleKind::Once;
            job.interval_ms = None;
            job.next_run_at = Some(chrono::Utc::now());
            job
        })
        .collect();
    due[0].lock_key = Some("key-1".into());
    store.job_insert_many(&due, &slots(100)).await.unwrap();

    let batch = store.due_jobs_claim(500).await.unwrap();
    assert!(!batch.jobs.is_empty(), "the burst's jobs are due");
    let fired: Vec<FiredRun> = batch
        .jobs
        .iter()
        .enumerate()
        .map(|(i, job)| FiredRun {
            job_id: job.job_id.clone(),
            scheduled_for: job.next_run_at,
            trigger: Trigger::Schedule,
            state: if i % 2 == 0 {
                RunState::Queued
            } else {
                RunState::Waiting
            },
            reason: "due".into(),
            result: None,
        })
        .collect();
    let advances: Vec<_> = batch
        .jobs
        .iter()
        .map(|job| jobsd::store::JobAdvance {
            job_id: job.job_id.clone(),
            next_run_at: Some(job.next_run_at + chrono::Duration::hours(1)),
            complete: false,
        })
        .collect();
    batch.commit(&fired, &advances, &slots(50)).await.unwrap();
    store.due_jobs_next().await.unwrap();

    let claimed = store.run_claim(&slots(400)).await.unwrap();
    assert!(claimed.len() >= 100, "runs were claimed: {}", claimed.len());
    store.run_next_queued_in().await.unwrap();
    let claims: Vec<RunClaim> = claimed
        .iter()
        .map(|r| RunClaim {
            run_id: r.run_id,
            attempt: r.attempt,
            instance: "plans".into(),
        })
        .collect();
    let beats: Vec<_> = claims.iter().map(|c| (c.clone(), None)).collect();
    store.run_heartbeat("plans", 30_000, &beats).await.unwrap();
    let (ends, rest) = claims.split_at(claims.len() - 2);
    let finished: Vec<_> = ends
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let state = [RunState::Succeeded, RunState::Failed, RunState::TimedOut][i % 3];
            (c.clone(), outcome(state))
        })
        .collect();
    store.run_finish_many(&finished).await.unwrap();
    let retry = RunRetry {
        delay_ms: 0,
        error: "boom".into(),
        traceback: None,
        reason: "retrying".into(),
    };
    store.run_retry(&rest[0], &retry).await.unwrap();
    store
        .run_hand_back(&rest[1..], "shutting down")
        .await
        .unwrap();

    // The burst's leases ran out long ago (`lease_expires_at` 0).
    store.run_rescue_expired(200, "plans").await.unwrap();
    store.run_settle_waiting(None, 200).await.unwrap();
    let some: Vec<String> = (1..50).map(|i| format!("busy-{i}")).collect();
    store.run_settle_waiting(Some(&some), 200).await.unwrap();

    // Reads of one job or run (the paged lists read in index order and
    // stop at their limit; their counts are issue #12's).
    store.job_get("busy-7").await.unwrap();
    store.run_latest("busy-7").await.unwrap();
    store.run_get(claimed[0].run_id).await.unwrap();
}

/// One `EXPLAIN QUERY PLAN` row.
struct Step {
    id: i64,
    parent: i64,
    detail: String,
}

/// What is wrong with a plan (see the module's comment).
fn problems(statement: &str, steps: &[Step]) -> Vec<String> {
    let hot = hot_names(statement);
    let mut children: BTreeMap<i64, Vec<&Step>> = BTreeMap::new();
    for step in steps {
        children.entry(step.parent).or_default().push(step);
    }
    let mut found = Vec::new();
    walk(&children, 0, false, &hot, &mut found);
    found
}

/// Checks the children of `parent`; `in_loop` when they run once per row
/// of something outside them.
fn walk(
    children: &BTreeMap<i64, Vec<&Step>>,
    parent: i64,
    in_loop: bool,
    hot: &BTreeSet<String>,
    found: &mut Vec<String>,
) {
    let Some(steps) = children.get(&parent) else {
        return;
    };
    let mut loops_before = 0;
    for step in steps {
        let detail = &step.detail;
        let words: Vec<&str> = detail.split_whitespace().collect();
        let is_loop = matches!(words.first(), Some(&"SCAN") | Some(&"SEARCH"));
        if words.first() == Some(&"SCAN") {
            let name = words.get(1).copied().unwrap_or("");
            if hot.contains(name) {
                let index = detail
                    .split(" INDEX ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next());
                match index {
                    Some(index) if PARTIAL_INDEXES.contains(&index) => {
                        if in_loop || loops_before > 0 {
                            found.push(format!("{detail}: a scan inside a loop"));
                        }
                    }
                    _ => found.push(format!("{detail}: a scan of all rows")),
                }
            }
        }
        let correlated = detail.starts_with("CORRELATED");
        walk(
            children,
            step.id,
            in_loop || correlated || loops_before > 0,
            hot,
            found,
        );
        loops_before += usize::from(is_loop);
    }
}

/// The names `runs` and `jobs` go by in `statement`: themselves and their
/// aliases (`FROM runs r`, `JOIN runs AS lr`).
fn hot_names(statement: &str) -> BTreeSet<String> {
    const NOT_ALIASES: [&str; 14] = [
        "WHERE",
        "SET",
        "ON",
        "INDEXED",
        "JOIN",
        "LEFT",
        "GROUP",
        "ORDER",
        "LIMIT",
        "AS",
        "RETURNING",
        "VALUES",
        "USING",
        "FROM",
    ];
    let words: Vec<&str> = statement
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    let mut names: BTreeSet<String> = ["runs", "jobs"].iter().map(|s| s.to_string()).collect();
    for (i, word) in words.iter().enumerate() {
        if *word != "runs" && *word != "jobs" {
            continue;
        }
        let mut next = words.get(i + 1).copied();
        if next.is_some_and(|w| w.eq_ignore_ascii_case("AS")) {
            next = words.get(i + 2).copied();
        }
        if let Some(alias) = next {
            if !NOT_ALIASES.iter().any(|k| k.eq_ignore_ascii_case(alias))
                && alias.len() <= 3
                && alias.chars().all(|c| c.is_ascii_lowercase())
            {
                names.insert(alias.to_string());
            }
        }
    }
    names
}

#[tokio::test]
async fn hot_statements_use_indexes_whatever_the_statistics_say() {
    let recorded = statements();
    let db = TestDb::on(Backend::Sqlite);
    let store = Store::connect(&db.url, 4, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store.migrate().await.unwrap();
    execute_sql(&store, "", FIXTURE).await;
    if let Ok(mut all) = recorded.0.lock() {
        all.clear();
    }
    take_the_hot_paths(&store).await;
    let taken: Vec<String> = recorded.0.lock().unwrap().iter().cloned().collect();
    let path = match &store {
        Store::Sqlite(lite) => lite.path().to_path_buf(),
        Store::Postgres(_) => unreachable!("an SQLite store"),
    };
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    let stats: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_stat1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(stats > 0, "the quiet period's statistics are in place");
    let mut explained = 0;
    let mut failures = Vec::new();
    for statement in &taken {
        let sql = statement.trim();
        let touches = hot_names(sql).len() > 2 || sql.contains("runs") || sql.contains("jobs");
        if !touches || sql.starts_with("PRAGMA") || sql.contains("_sqlx_migrations") {
            continue;
        }
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("explaining {sql}: {e}"));
        let steps: Vec<Step> = rows
            .iter()
            .map(|r| Step {
                id: r.get(0),
                parent: r.get(1),
                detail: r.get(3),
            })
            .collect();
        explained += 1;
        let found = problems(sql, &steps);
        if !found.is_empty() {
            let plan: Vec<String> = steps
                .iter()
                .map(|s| format!("  [{}<-{}] {}", s.id, s.parent, s.detail))
                .collect();
            failures.push(format!("{}\n{}\n{sql}", found.join("; "), plan.join("\n")));
        }
    }
    let _ = conn.close().await;
    assert!(
        explained >= 20,
        "the hot paths ran their statements ({explained} explained)"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn steps(plan: &[(i64, i64, &str)]) -> Vec<Step> {
    plan.iter()
        .map(|&(id, parent, detail)| Step {
            id,
            parent,
            detail: detail.into(),
        })
        .collect()
}

#[test]
fn a_plan_fails_for_a_scan_of_all_rows_or_a_scan_inside_a_loop() {
    let by_key = "UPDATE runs SET state = 'x' FROM o WHERE runs.run_id = o.run_id";
    let good = steps(&[
        (2, 0, "SCAN o"),
        (
            5,
            0,
            "SEARCH runs USING INDEX sqlite_autoindex_runs_1 (run_id=?)",
        ),
    ]);
    assert!(problems(by_key, &good).is_empty());
    let walk = steps(&[
        (2, 0, "SCAN o"),
        (5, 0, "SCAN runs USING INDEX runs_running_idx"),
    ]);
    assert_eq!(problems(by_key, &walk).len(), 1, "a scan per row of o");
    let queue = "SELECT r.run_id FROM runs r WHERE r.state = 'queued' ORDER BY r.run_after";
    let outer = steps(&[(3, 0, "SCAN r USING INDEX runs_queue_idx")]);
    assert!(
        problems(queue, &outer).is_empty(),
        "the queue, as the outer loop"
    );
    let whole = steps(&[(3, 0, "SCAN r")]);
    assert_eq!(problems(queue, &whole).len(), 1, "all runs");
    let history = steps(&[(3, 0, "SCAN r USING COVERING INDEX runs_created_idx")]);
    assert_eq!(problems(queue, &history).len(), 1, "an index of all runs");
    let correlated = steps(&[
        (
            3,
            0,
            "SEARCH j USING INDEX sqlite_autoindex_jobs_1 (job_id=?)",
        ),
        (7, 0, "CORRELATED SCALAR SUBQUERY 1"),
        (9, 7, "SCAN f USING INDEX runs_active_job_idx"),
    ]);
    let exists = "SELECT EXISTS (SELECT 1 FROM runs f WHERE f.job_id = j.job_id) FROM jobs j";
    assert_eq!(problems(exists, &correlated).len(), 1, "a scan per job");
}
