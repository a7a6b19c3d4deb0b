//! Query plans that hold under real load: after a quiet period (the tables
//! analysed while nearly empty and idle), thousands of rows arrive, and the
//! statistics no longer say how many runs are running or queued. A plan
//! chosen on them must still reach `runs` and `jobs` through indexes:
//! a sequential scan, or a join filter re-reading every running run per
//! row, turns a burst quadratic (it made one 40x slower).
//!
//! Each hot statement is `PREPARE`d and explained twice: with its custom
//! plan, and with the generic plan PostgreSQL switches to after five
//! executions of a prepared statement (sqlx prepares them), forced with
//! `plan_cache_mode` (PostgreSQL 15 has no `EXPLAIN (GENERIC_PLAN)`).
//!
//! PostgreSQL only: it checks PostgreSQL's query plans of PostgreSQL's statements.

use jobsd::store::postgres::hot::{
    batch_statements, hot_statements, BatchPlanFixture, PlanFixture,
};
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

use crate::support::{serve_config, TestDb};

const TABLES: [&str; 2] = ["runs", "jobs"];

/// Problems of one plan node and its children: a sequential scan of a hot
/// table, or a join filter over a subtree that reads one.
fn problems(node: &Value, out: &mut Vec<String>) -> bool {
    let relation = node["Relation Name"].as_str().unwrap_or("");
    let kind = node["Node Type"].as_str().unwrap_or("");
    let mut touches = TABLES.contains(&relation);
    if touches && kind == "Seq Scan" {
        out.push(format!("sequential scan of {relation}"));
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        touches |= problems(child, out);
    }
    if touches {
        if let Some(filter) = node["Join Filter"].as_str() {
            out.push(format!("{kind} with join filter {filter}"));
        }
    }
    touches
}

/// A short outline of a plan, one node a line, for the failure message.
fn outline(node: &Value, depth: usize, out: &mut String) {
    let mut line = format!(
        "{}{} {}{}",
        "  ".repeat(depth),
        node["Node Type"].as_str().unwrap_or("?"),
        node["Relation Name"].as_str().unwrap_or(""),
        node["Index Name"]
            .as_str()
            .map(|i| format!(" using {i}"))
            .unwrap_or_default()
    );
    for key in ["Index Cond", "Join Filter", "Hash Cond", "Filter"] {
        if let Some(v) = node[key].as_str() {
            line.push_str(&format!(
                " [{key}: {}]",
                v.chars().take(100).collect::<String>()
            ));
        }
    }
    out.push_str(&line);
    out.push('\n');
    for child in node["Plans"].as_array().into_iter().flatten() {
        outline(child, depth + 1, out);
    }
}

async fn load(conn: &mut PgConnection) -> PlanFixture {
    // Keep the statistics as the quiet period left them.
    for t in TABLES {
        conn.execute(format!("ALTER TABLE {t} SET (autovacuum_enabled = false)").as_str())
            .await
            .unwrap();
    }
    // The quiet period: 300 one-shot jobs ran and completed; then ANALYZE.
    conn.execute(
        "INSERT INTO jobs (job_id, handler, schedule_kind, start_at, state) \
         SELECT 'quiet-' || i, 'log', 'once', now(), 'completed' FROM generate_series(1, 300) i; \
         INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after, \
           state, attempt, started_at, finished_at, instance) \
         SELECT gen_random_uuid(), 'quiet-' || i, 'log', '{}', 'schedule', now(), now(), \
           'succeeded', 1, now(), now(), 'inst' FROM generate_series(1, 300) i; \
         ANALYZE jobs; ANALYZE runs;",
    )
    .await
    .unwrap();
    // Then the burst: 20,000 periodic jobs due, each with a running run, and
    // 10,000 queued runs (some behind lock keys), none of it analysed.
    conn.execute(
        "INSERT INTO jobs (job_id, handler, schedule_kind, interval_ms, start_at, state, next_run_at) \
         SELECT 'busy-' || i, 'log', 'interval', 1000, now(), 'running', now() - interval '1 second' \
         FROM generate_series(1, 20000) i; \
         INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after, \
           state, attempt, started_at, instance, lease_expires_at, lock_key) \
         SELECT gen_random_uuid(), 'busy-' || i, 'log', '{}', 'schedule', now() - interval '2 seconds', \
           now(), 'running', 1, now(), 'inst', now() + interval '30 seconds', \
           CASE WHEN i % 10 = 0 THEN 'key-' || (i % 50) END \
         FROM generate_series(1, 20000) i; \
         INSERT INTO runs (run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after, \
           state, lock_key) \
         SELECT gen_random_uuid(), 'busy-' || i, 'log', '{}', 'manual', now(), now(), 'queued', \
           CASE WHEN i % 3 = 0 THEN 'key-' || (i % 50) END \
         FROM generate_series(1, 10000) i;",
    )
    .await
    .unwrap();
    let running: Vec<Uuid> = sqlx::query_scalar(
        "SELECT run_id FROM runs WHERE state = 'running' ORDER BY random() LIMIT 500",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let jobs: Vec<String> =
        sqlx::query_scalar("SELECT job_id FROM jobs WHERE job_id LIKE 'busy-%' LIMIT 500")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    PlanFixture {
        instance: "inst".into(),
        running,
        jobs,
    }
}

/// A new PostgreSQL database with the service's tables, and a connection.
async fn migrated_database() -> (TestDb, PgConnection) {
    let db = TestDb::postgres();
    let config = serve_config(&db, &[]);
    let store = jobsd::app::open_store(&config.database).await.unwrap();
    drop(store);
    let conn = PgConnection::connect(&db.url).await.unwrap();
    (db, conn)
}

#[tokio::test]
async fn hot_statements_use_indexes_whatever_the_statistics_say() {
    let (_db, mut conn) = migrated_database().await;
    let fixture = load(&mut conn).await;
    let mut failures = Vec::new();
    for (i, statement) in hot_statements(&fixture).into_iter().enumerate() {
        let name = format!("hot_{i}");
        conn.execute(format!("PREPARE {name} AS {}", statement.sql).as_str())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", statement.name, statement.sql));
        let args = if statement.args.is_empty() {
            String::new()
        } else {
            format!("({})", statement.args.join(", "))
        };
        let setting = statement
            .settings
            .map(|s| s.replace("SET LOCAL", "SET"))
            .unwrap_or_else(|| "RESET enable_seqscan".into());
        conn.execute(setting.as_str()).await.unwrap();
        for mode in ["force_custom_plan", "force_generic_plan"] {
            conn.execute(format!("SET plan_cache_mode = {mode}").as_str())
                .await
                .unwrap();
            let plan: Value =
                sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) EXECUTE {name}{args}"))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("{} ({mode}): {e}", statement.name));
            let root = &plan[0]["Plan"];
            let mut found = Vec::new();
            problems(root, &mut found);
            // Sub-plans (CTEs, init plans) are children in the JSON too.
            if !found.is_empty() {
                let mut tree = String::new();
                outline(root, 0, &mut tree);
                failures.push(format!(
                    "{} ({mode}): {}\n{tree}",
                    statement.name,
                    found.join("; ")
                ));
            }
        }
        conn.execute(format!("DEALLOCATE {name}").as_str())
            .await
            .unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Rows a plan read from `batch_rows`: what each of its nodes on the table
/// returned or filtered out, over all its loops.
fn batch_rows_read(node: &Value) -> f64 {
    let mut n = 0.0;
    let index = node["Index Name"].as_str().unwrap_or("");
    if node["Relation Name"].as_str() == Some("batch_rows") || index.starts_with("batch_rows_") {
        let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
        let rows = [
            "Actual Rows",
            "Rows Removed by Filter",
            "Rows Removed by Index Recheck",
        ]
        .iter()
        .map(|k| node[*k].as_f64().unwrap_or(0.0))
        .sum::<f64>();
        n += rows * loops;
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        n += batch_rows_read(child);
    }
    n
}

/// A batch of 100,000 rows just published and being worked on, never
/// analysed (as in the first minutes of any new batch): 20,000 done,
/// 20,000 running, the rest queued.
async fn load_batch(conn: &mut PgConnection) -> BatchPlanFixture {
    let batch_id = Uuid::now_v7();
    conn.execute("ALTER TABLE batch_rows SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO batches (id, handler, next_idx, started_at) VALUES ($1, 'log', 100000, now())",
    )
    .bind(batch_id)
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO batch_rows (batch_id, idx, input, state, attempt, instance, \
           lease_expires_at, started_at, finished_at) \
         SELECT $1, g, '{\"message\": \"m\"}', \
           CASE WHEN g < 20000 THEN 'success' WHEN g < 40000 THEN 'inprog' ELSE 'queued' END, \
           CASE WHEN g < 40000 THEN 1 ELSE 0 END, CASE WHEN g < 40000 THEN 'inst' END, \
           CASE WHEN g >= 20000 AND g < 40000 THEN now() + interval '30 seconds' END, \
           CASE WHEN g < 40000 THEN now() END, CASE WHEN g < 20000 THEN now() END \
         FROM generate_series(0, 99999) g",
    )
    .bind(batch_id)
    .execute(&mut *conn)
    .await
    .unwrap();
    let running: Vec<i64> = sqlx::query_scalar(
        "SELECT idx FROM (SELECT idx FROM batch_rows WHERE batch_id = $1 AND state = 'inprog' \
           ORDER BY random() LIMIT 500) s ORDER BY idx",
    )
    .bind(batch_id)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    BatchPlanFixture {
        batch_id,
        instance: "inst".into(),
        running,
    }
}

/// A claim of 500 rows and a group of 500 row ends read about the rows
/// they change, with custom and generic plans, while the batch has no
/// statistics. Before, a group of ends was planned as a hash of every
/// running row of the table (20,000 here) per group, which halved the
/// rows' rate; a claim by a join to its picked rows re-read the batch for
/// each of them.
#[tokio::test]
async fn batch_row_claims_and_ends_read_about_the_rows_they_change() {
    let (_db, mut conn) = migrated_database().await;
    let fixture = load_batch(&mut conn).await;
    let bound = 5.0 * fixture.running.len() as f64;
    let mut failures = Vec::new();
    // Without statistics (a new batch), then with them, taken while few
    // rows run and the leases index still holds the ended ones' entries.
    for (round, analyse) in [false, true].into_iter().enumerate() {
        if analyse {
            // Most running rows end, leaving their entries in the leases
            // index (not vacuumed yet); the statistics then see few running.
            sqlx::query(
                "UPDATE batch_rows SET state = 'success', finished_at = now(), \
                   lease_expires_at = NULL \
                 WHERE batch_id = $1 AND state = 'inprog' AND NOT (idx = ANY($2))",
            )
            .bind(fixture.batch_id)
            .bind(&fixture.running)
            .execute(&mut conn)
            .await
            .unwrap();
            conn.execute("ANALYZE batch_rows").await.unwrap();
        }
        for (i, statement) in batch_statements(&fixture).into_iter().enumerate() {
            let name = format!("batch_{round}_{i}");
            conn.execute(format!("PREPARE {name} AS {}", statement.sql).as_str())
                .await
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", statement.name, statement.sql));
            let args = format!("({})", statement.args.join(", "));
            // A statement whose transaction forces a plan is explained with it.
            let modes: Vec<String> = match statement.settings {
                Some(s) => vec![s.to_string()],
                None => ["force_custom_plan", "force_generic_plan"]
                    .iter()
                    .map(|m| format!("SET LOCAL plan_cache_mode = {m}"))
                    .collect(),
            };
            for mode in modes {
                conn.execute("BEGIN").await.unwrap();
                conn.execute(mode.as_str()).await.unwrap();
                let plan: Value = sqlx::query_scalar(&format!(
                    "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}{args}"
                ))
                .fetch_one(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{} ({mode}): {e}", statement.name));
                conn.execute("ROLLBACK").await.unwrap();
                let root = &plan[0]["Plan"];
                let read = batch_rows_read(root);
                let changed = root["Actual Rows"].as_f64().unwrap_or(0.0);
                if changed < fixture.running.len() as f64 || read > bound {
                    let mut tree = String::new();
                    outline(root, 0, &mut tree);
                    failures.push(format!(
                        "{} ({mode}, analysed: {analyse}): changed {changed} rows, read {read} \
                     (at most {bound})\n{tree}",
                        statement.name
                    ));
                }
            }
            conn.execute(format!("DEALLOCATE {name}").as_str())
                .await
                .unwrap();
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
