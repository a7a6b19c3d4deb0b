//! The store conformance suite (SPEC §13; River's `riverdrivertest`, Oban's
//! engine tests): one set of tests against the storage interface,
//! [`jobsd::store::Store`], each run on BOTH backends in every test run
//! (`<test>::postgres` and `<test>::sqlite`), whatever `JOBSD_TEST_BACKEND`
//! says. Each test opens a fresh, migrated store and takes every step by
//! hand, with no service running: what one backend does, the other must
//! do too.
//!
//! Only what no interface method can do (a lease running out) is set up
//! with raw SQL, written per backend, in this module ([`expire_lease`]).

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use jobsd::domain::{JobState, RunState, ScheduleKind, Trigger};
use jobsd::store::notify::{self, Listener, Notice};
use jobsd::store::{
    Backend, ClaimSlots, FiredRun, JobAdvance, JobRow, ManualRun, NewJob, RunClaim, RunFilter,
    RunOutcome, RunRetry, RunRow, Store,
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{execute_sql, micros, TestDb};

/// `conformance![name, ...]`, after `async fn name(store: Store)` (written
/// as a plain function, so rustfmt and the compiler see it whole), adds a
/// module `name` with two tests, `postgres` and `sqlite`, each running the
/// function on a fresh migrated store of that backend. A function left out
/// of the list is dead code, which clippy refuses.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn postgres() {
                crate::conformance::on(jobsd::store::Backend::Postgres, super::$name).await;
            }

            #[tokio::test]
            async fn sqlite() {
                crate::conformance::on(jobsd::store::Backend::Sqlite, super::$name).await;
            }
        }
    )*};
}

mod alerts;
mod audit;
mod batches;
mod callbacks;
mod claims;
mod counters;
mod events;
mod files;
mod firing;
mod idempotency;
mod jobs;
mod queue;
mod retention;
mod runs;
mod service;
mod tokens;
mod webhooks;

/// Runs `test` on a fresh, migrated store of `backend`, in a database of
/// its own (removed afterwards).
pub async fn on<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let db = TestDb::on(backend);
    let store = Store::connect(&db.url, 4, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(store.backend(), backend);
    store.migrate().await.expect("migrates");
    test(store).await;
    drop(db);
}

/// The lease the claims of these tests take.
pub const LEASE_MS: i64 = 60_000;

/// Why the planner stores a time `waiting`.
pub const WAITING: &str = "waiting: every max_instances slot is held by a running run";

/// Now, at the stores' precision (microseconds), so that times written
/// read back equal.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn seconds(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

/// A running `log` job every hour, next due in an hour: it does not come
/// due during a test; its runs come from triggers.
pub fn hourly(job_id: &str) -> NewJob {
    let start = now();
    NewJob {
        job_id: job_id.into(),
        handler: "log".into(),
        kwargs: json!({"message": job_id}),
        schedule_kind: ScheduleKind::Interval,
        interval_ms: Some(3_600_000),
        cron: None,
        timezone: "UTC".into(),
        start_at: start,
        misfire_grace_ms: None,
        coalesce: true,
        max_instances: 1,
        lock_key: None,
        timeout_ms: None,
        max_retries: 0,
        retry_backoff_ms: 1000,
        state: JobState::Running,
        next_run_at: Some(start + chrono::Duration::hours(1)),
        description: None,
        tags: vec![],
        source: "api".into(),
        failed_run_id: None,
        keep_runs: None,
        notify: vec![],
        alerts: Default::default(),
    }
}

/// [`hourly`], due a second ago (an interval job gets no run at creation:
/// the scheduler fires it).
pub fn due(job_id: &str) -> NewJob {
    let mut job = hourly(job_id);
    job.next_run_at = Some(now() - seconds(1));
    job
}

/// A one-shot `log` job whose time came 100 ms ago.
pub fn once_due(job_id: &str) -> NewJob {
    let mut job = hourly(job_id);
    job.schedule_kind = ScheduleKind::Once;
    job.interval_ms = None;
    job.next_run_at = Some(now() - chrono::Duration::milliseconds(100));
    job
}

/// A job's runs by state (`{}` when it has none).
pub fn counts(row: &JobRow) -> Value {
    row.run_counts.clone().unwrap_or_else(|| json!({}))
}

pub fn slots(instance: &str, limit: i64) -> ClaimSlots {
    ClaimSlots {
        instance: instance.into(),
        lease_ms: LEASE_MS,
        limit,
    }
}

pub fn claim_of(run: &RunRow) -> RunClaim {
    RunClaim {
        run_id: run.run_id,
        attempt: run.attempt,
        instance: run.instance.clone().expect("claimed"),
    }
}

/// An attempt that ended in `state` just now.
pub fn outcome(state: RunState) -> RunOutcome {
    RunOutcome {
        state,
        result: (state == RunState::Succeeded).then(|| json!({"ok": true})),
        error: (state != RunState::Succeeded).then(|| format!("it ended {state}")),
        traceback: None,
        reason: format!("handler ended {state}"),
        ended_ago_ms: 0,
    }
}

pub fn retry(delay_ms: i64, error: &str) -> RunRetry {
    RunRetry {
        delay_ms,
        error: error.into(),
        traceback: Some(format!("traceback of {error}")),
        reason: format!("retrying after {error}"),
    }
}

pub fn manual(job_id: &str) -> ManualRun {
    ManualRun {
        job_id: job_id.into(),
        handler: None,
        kwargs: None,
        reason: "triggered by a test".into(),
    }
}

/// Queues a manual run of `job_id`.
pub async fn trigger(store: &Store, job_id: &str) -> RunRow {
    store.run_trigger(&manual(job_id)).await.unwrap()
}

/// Queues a manual run of `job_id` and claims it (the only queued run)
/// for `instance`.
pub async fn trigger_and_claim(store: &Store, job_id: &str, instance: &str) -> RunRow {
    let run = trigger(store, job_id).await;
    let claimed = store.run_claim(&slots(instance, 10)).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:#?}");
    assert_eq!(claimed[0].run_id, run.run_id);
    claimed.into_iter().next().unwrap()
}

/// The runs of `job_id`, newest first.
pub async fn runs_of(store: &Store, job_id: &str) -> Vec<RunRow> {
    store
        .run_list(&RunFilter {
            job_id: Some(job_id.into()),
            limit: 1000,
            ..RunFilter::default()
        })
        .await
        .unwrap()
        .0
}

pub fn fired(job_id: &str, at: DateTime<Utc>, state: RunState, reason: &str) -> FiredRun {
    FiredRun {
        job_id: job_id.into(),
        scheduled_for: at,
        trigger: Trigger::Schedule,
        state,
        reason: reason.into(),
        result: None,
    }
}

pub fn advance(job_id: &str, next_run_at: Option<DateTime<Utc>>) -> JobAdvance {
    JobAdvance {
        job_id: job_id.into(),
        next_run_at,
        complete: false,
    }
}

/// One firing, as a scheduler does it: claims the due jobs (each job
/// advanced must be among them), stores `runs`, advances the jobs, commits;
/// claims nothing for itself.
pub async fn fire(store: &Store, runs: &[FiredRun], advances: &[JobAdvance]) -> Vec<RunRow> {
    let batch = store.due_jobs_claim(100).await.unwrap();
    for a in advances {
        assert!(
            batch.jobs.iter().any(|j| j.job_id == a.job_id),
            "{} is due: {:#?}",
            a.job_id,
            batch.jobs
        );
    }
    batch
        .commit(runs, advances, &ClaimSlots::none("scheduler"))
        .await
        .unwrap()
}

/// A run's history as `(from, to, reason)`, `from` empty for the first.
pub fn steps(run: &RunRow) -> Vec<(String, String, String)> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    run.history
        .as_array()
        .unwrap_or_else(|| panic!("history is a list: {}", run.history))
        .iter()
        .map(|h| (text(&h["from"]), text(&h["to"]), text(&h["reason"])))
        .collect()
}

/// Asserts a run's history, step by step.
#[track_caller]
pub fn assert_steps(run: &RunRow, expected: &[(&str, &str, &str)]) {
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(steps(run), expected, "{run:#?}");
}

/// Asserts the last step of a run's history, and who took it.
#[track_caller]
pub fn assert_last_step(run: &RunRow, from: &str, to: &str, reason: &str, instance: Option<&str>) {
    let last = run
        .history
        .as_array()
        .and_then(|h| h.last())
        .unwrap_or_else(|| panic!("no history: {run:#?}"));
    assert_eq!(
        (
            last["from"].as_str(),
            last["to"].as_str(),
            last["reason"].as_str(),
            last["instance"].as_str()
        ),
        (Some(from), Some(to), Some(reason), instance),
        "{run:#?}"
    );
}

/// Asserts that `t` lies within `slack` of `expected`.
#[track_caller]
pub fn assert_near(t: DateTime<Utc>, expected: DateTime<Utc>, slack: chrono::Duration) {
    assert!(
        t >= expected - slack && t <= expected + slack,
        "{t} is not within {slack} of {expected}"
    );
}

/// The next notice that `matches`, within 10 s.
pub async fn notice_where(listener: &mut Option<Listener>, matches: impl Fn(&Notice) -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if matches(&notify::next(listener).await) {
                return;
            }
        }
    })
    .await
    .expect("the notice arrives within 10 s");
}

/// Lets the lease of the running run `run_id` run out, as if its instance
/// had died: raw SQL per backend, as no interface method does it.
pub async fn expire_lease(store: &Store, run_id: Uuid) {
    let past = micros(Utc::now() - seconds(1));
    let changed = execute_sql(
        store,
        &format!(
            "UPDATE runs SET lease_expires_at = now() - interval '1 second' \
             WHERE run_id = '{run_id}' AND state = 'running'"
        ),
        &format!(
            "UPDATE runs SET lease_expires_at = {past} \
             WHERE run_id = '{run_id}' AND state = 'running'"
        ),
    )
    .await;
    assert_eq!(changed, 1, "run {run_id} is running");
}
