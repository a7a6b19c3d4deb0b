//! The hot statements, with example arguments, for the plan test
//! (`tests/integration/plans.rs`): it `PREPARE`s each one and checks that
//! its custom and generic plans reach `runs` and `jobs` through indexes
//! only, whatever the statistics say.
//!
//! The SQL is the very text the store executes (each statement's builder
//! is shared with its method); only the arguments are made up here, as SQL
//! literals, from rows the test has loaded.

use uuid::Uuid;

use super::batches::{ROW_CLAIM_SQL, ROW_FINISH_SETTINGS, ROW_FINISH_SQL};
use super::ends::{
    complete_jobs_sql, failure_records_sql, one_shot_facts_sql, release_waiting_sql,
    WAITING_RUNS_SQL,
};
use super::execution::{
    run_claim_pick_sql, run_claim_sql, run_finish_many_sql, run_hand_back_sql, run_heartbeat_sql,
    run_next_queued_sql, run_rescue_expired_sql, run_retry_sql, RUN_RESCUE_PICK_SQL,
};
use super::firing::{fire_commit_sql, DUE_JOBS_LOCK_SQL, DUE_JOBS_NEXT_SQL, FIRING_SETTINGS};
use super::runs::RUN_COUNTS_ACTIVE_SQL;
use super::stats::{STATS_QUEUE_SQL, STATS_RUNS_SQL};
use crate::domain::rules;

/// Rows of a loaded database to aim the statements at.
#[derive(Debug, Clone)]
pub struct PlanFixture {
    /// The instance holding the running runs.
    pub instance: String,
    /// Running runs (attempt 1), as many as a batch of outcomes.
    pub running: Vec<Uuid>,
    /// Jobs with due or running runs.
    pub jobs: Vec<String>,
}

/// One statement to explain.
#[derive(Debug, Clone)]
pub struct HotStatement {
    pub name: &'static str,
    pub sql: String,
    /// SQL literals for `$1`, `$2`, ...
    pub args: Vec<String>,
    /// Settings the store applies to the statement's transaction.
    pub settings: Option<&'static str>,
}

fn text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn text_array(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().map(|s| text(&s)).collect();
    format!("ARRAY[{}]::text[]", items.join(","))
}

fn uuid_array(ids: &[Uuid]) -> String {
    let items: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    format!("'{{{}}}'::uuid[]", items.join(","))
}

/// A jsonb object literal mapping each run id to `value(id)` (JSON text).
fn json_map(ids: &[Uuid], value: impl Fn(&Uuid) -> String) -> String {
    let entries: Vec<String> = ids
        .iter()
        .map(|id| format!("\"{id}\": {}", value(id)))
        .collect();
    format!("'{{{}}}'::jsonb", entries.join(",").replace('\'', "''"))
}

/// [`json_map`] keyed by job ids.
fn json_job_map(ids: &[String], value: &str) -> String {
    let entries: Vec<String> = ids
        .iter()
        .map(|id| format!("{}: {value}", serde_json::Value::from(id.as_str())))
        .collect();
    format!("'{{{}}}'::jsonb", entries.join(",").replace('\'', "''"))
}

fn repeat(value: &str, n: usize, ty: &str) -> String {
    format!("array_fill(({value})::{ty}, ARRAY[{n}])")
}

/// The statements the scheduler and workers execute for every run: claim,
/// firing, completion (and the steps after it), heartbeat, retry,
/// hand-back and rescue.
pub fn hot_statements(f: &PlanFixture) -> Vec<HotStatement> {
    let ids = uuid_array(&f.running);
    let jobs = text_array(f.jobs.iter().cloned());
    let m = f.jobs.len();
    let one = f.running.first().copied().unwrap_or_else(Uuid::nil);
    let inst = text(&f.instance);
    vec![
        HotStatement {
            name: "claim: pick",
            sql: run_claim_pick_sql(),
            args: vec!["500".into()],
            settings: None,
        },
        HotStatement {
            name: "claim: write",
            sql: run_claim_sql(),
            args: vec![
                inst.clone(),
                ids.clone(),
                "30000".into(),
                uuid_array(&f.running[..1.min(f.running.len())]),
                text(rules::LATE_ERROR),
                text(rules::LATE_REASON),
            ],
            settings: None,
        },
        HotStatement {
            name: "next queued",
            sql: run_next_queued_sql(),
            args: vec![],
            settings: None,
        },
        HotStatement {
            name: "heartbeat",
            sql: run_heartbeat_sql(),
            args: vec![
                inst.clone(),
                "30000".into(),
                json_map(&f.running, |_| r#"{"a": 1}"#.into()),
                ids.clone(),
            ],
            settings: None,
        },
        HotStatement {
            name: "completion",
            sql: run_finish_many_sql(),
            args: vec![
                json_map(&f.running, |_| {
                    format!(
                        r#"{{"attempt": 1, "instance": "{}", "state": "succeeded", "reason": "done", "ago": 0}}"#,
                        f.instance
                    )
                }),
                ids.clone(),
                uuid_array(&[]),
            ],
            settings: None,
        },
        HotStatement {
            name: "completion: failure records",
            sql: failure_records_sql(),
            args: vec![
                text("ErrorHandler"),
                text("never"),
                text("paused"),
                text_array(f.running.iter().map(|id| format!("failed-{id}"))),
                repeat(r#"'{"exc_str": "boom"}'"#, f.running.len(), "jsonb"),
                ids.clone(),
                repeat("'run ended failed'", f.running.len(), "text"),
            ],
            settings: None,
        },
        HotStatement {
            name: "completion: waiting runs' decisions",
            sql: release_waiting_sql(),
            args: vec![
                json_map(&f.running, |_| {
                    r#"{"state": "queued", "ended": false, "error": null, "result": null, "reason": "free"}"#
                        .into()
                }),
                ids.clone(),
            ],
            settings: None,
        },
        HotStatement {
            name: "completion: one-shot jobs",
            sql: complete_jobs_sql(),
            args: vec![
                // Made-up row versions: the plan does not depend on them.
                text_array((0..m).map(|i| format!("({},{})", i / 50, i % 50 + 1))),
                json_job_map(&f.jobs, "1"),
                json_job_map(&f.jobs, r#""running""#),
            ],
            settings: None,
        },
        HotStatement {
            name: "one-shot facts",
            sql: one_shot_facts_sql(),
            args: vec![jobs.clone()],
            settings: None,
        },
        HotStatement {
            name: "retry",
            sql: run_retry_sql(),
            args: vec![
                format!("'{one}'::uuid"),
                "1".into(),
                inst.clone(),
                "1000".into(),
                text("boom"),
                "NULL".into(),
                text("retry"),
            ],
            settings: None,
        },
        HotStatement {
            name: "hand back",
            sql: run_hand_back_sql(),
            args: vec![
                ids.clone(),
                json_map(&f.running, |_| "1".into()),
                inst.clone(),
                text("shutdown"),
            ],
            settings: None,
        },
        HotStatement {
            name: "rescue: pick",
            sql: RUN_RESCUE_PICK_SQL.to_string(),
            args: vec!["100".into()],
            settings: None,
        },
        HotStatement {
            name: "rescue: write",
            sql: run_rescue_expired_sql(),
            args: vec![
                ids.clone(),
                inst.clone(),
                json_map(&f.running, |_| {
                    r#"{"state": "queued", "ended": false, "error": "lost", "dead": "lost", "next": "again"}"#
                        .into()
                }),
            ],
            settings: None,
        },
        HotStatement {
            name: "waiting runs of jobs",
            sql: WAITING_RUNS_SQL.to_string(),
            args: vec![jobs.clone()],
            settings: None,
        },
        HotStatement {
            name: "firing: lock due jobs",
            sql: DUE_JOBS_LOCK_SQL.to_string(),
            args: vec!["500".into()],
            settings: Some(FIRING_SETTINGS),
        },
        HotStatement {
            name: "firing: count active runs",
            sql: RUN_COUNTS_ACTIVE_SQL.to_string(),
            args: vec![jobs.clone()],
            settings: Some(FIRING_SETTINGS),
        },
        HotStatement {
            name: "firing: insert runs, advance jobs",
            sql: fire_commit_sql(),
            args: vec![
                uuid_array(&(0..m).map(|_| Uuid::now_v7()).collect::<Vec<_>>()),
                jobs.clone(),
                repeat("now()", m, "timestamptz"),
                repeat("'schedule'", m, "text"),
                repeat("'queued'", m, "text"),
                repeat("'due'", m, "text"),
                repeat("NULL", m, "jsonb"),
                inst.clone(),
                jobs.clone(),
                repeat("now() + interval '1 minute'", m, "timestamptz"),
                repeat("false", m, "bool"),
                "100".into(),
                "30000".into(),
            ],
            settings: Some(FIRING_SETTINGS),
        },
        HotStatement {
            name: "firing: next due",
            sql: DUE_JOBS_NEXT_SQL.to_string(),
            args: vec![],
            settings: Some(FIRING_SETTINGS),
        },
        HotStatement {
            name: "stats: runs by state",
            sql: STATS_RUNS_SQL.to_string(),
            args: vec![],
            settings: None,
        },
        HotStatement {
            name: "stats: oldest due queued run",
            sql: STATS_QUEUE_SQL.to_string(),
            args: vec![],
            settings: None,
        },
    ]
}

/// A batch's rows to aim the batch statements at.
#[derive(Debug, Clone)]
pub struct BatchPlanFixture {
    pub batch_id: Uuid,
    /// The instance holding the running rows.
    pub instance: String,
    /// Running rows (attempt 1), as many as a group of row ends.
    pub running: Vec<i64>,
}

/// The statements the workers execute for every chunk of a batch's rows:
/// a claim and a group of row ends.
pub fn batch_statements(f: &BatchPlanFixture) -> Vec<HotStatement> {
    let n = f.running.len();
    let idxs: Vec<String> = f.running.iter().map(i64::to_string).collect();
    vec![
        HotStatement {
            name: "batch rows: claim",
            sql: ROW_CLAIM_SQL.to_string(),
            args: vec![
                format!("'{}'::uuid", f.batch_id),
                n.to_string(),
                text(&f.instance),
                "30000".into(),
            ],
            settings: None,
        },
        HotStatement {
            name: "batch rows: ends",
            sql: ROW_FINISH_SQL.to_string(),
            args: vec![
                repeat(&format!("'{}'", f.batch_id), n, "uuid"),
                format!("'{{{}}}'::bigint[]", idxs.join(",")),
                repeat("1", n, "int"),
                repeat(&text(&f.instance), n, "text"),
                repeat("'success'", n, "text"),
                repeat("NULL", n, "text"),
                repeat("NULL", n, "text"),
                repeat("0", n, "bigint"),
                repeat("false", n, "bool"),
            ],
            settings: Some(ROW_FINISH_SETTINGS),
        },
    ]
}
