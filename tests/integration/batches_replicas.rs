//! Batches on several real `jobsd` processes sharing one PostgreSQL
//! (issue #15): three replicas process one batch with no row executed
//! twice; a replica killed with `kill -9` mid-batch loses no row; a
//! 1,000,000-row NDJSON submit streams in, and its output streams out,
//! with the replica's memory bounded and measured.
//!
//! PostgreSQL only: replicas need PostgreSQL (the embedded store serves
//! one process); the large-batch test measures a child process.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{execute_sql, micros, wait_for, Replica, TestDb};

async fn final_on(r: &Replica, id: &str, within: Duration) -> Value {
    wait_for("the batch to be final", within, || async {
        let (_, body) = r.get(&format!("/api/v1/batches/{id}")).await;
        body["batch"]["finished_at"]
            .is_string()
            .then(|| body["batch"].clone())
    })
    .await
}

/// Every row of a batch, page by page.
async fn all_rows(r: &Replica, id: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/batches/{id}/rows?limit=1000&cursor={c}"),
            None => format!("/api/v1/batches/{id}/rows?limit=1000"),
        };
        let (status, body) = r.get(&path).await;
        assert_eq!(status, 200, "{body}");
        rows.extend(body["rows"].as_array().cloned().unwrap_or_default());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return rows,
        }
    }
}

async fn submit(r: &Replica, body: Value) -> String {
    let (status, created) = r.post("/api/v1/batches", body).await;
    assert_eq!(status, 201, "{created}");
    created["batch"]["batch_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn three_replicas_process_one_batch_and_no_row_runs_twice() {
    let db = TestDb::postgres();
    let a = Replica::spawn(&db, "a", &["--workers", "8"]).await;
    let b = Replica::spawn(&db, "b", &["--workers", "8"]).await;
    let c = Replica::spawn(&db, "c", &["--workers", "8"]).await;
    let rows: Vec<Value> = (0..600).map(|_| json!({"seconds": 0.01})).collect();
    let id = submit(
        &a,
        json!({"handler": "sleep", "rows": rows, "waitoff": true, "max_parallel": 12}),
    )
    .await;
    let batch = final_on(&b, &id, Duration::from_secs(60)).await;
    assert_eq!(batch["status"], "success", "{batch}");
    assert_eq!(batch["counts"]["success"], 600);
    let rows = all_rows(&c, &id).await;
    assert_eq!(rows.len(), 600);
    let mut by_instance: HashMap<String, usize> = HashMap::new();
    for row in &rows {
        assert_eq!(row["attempts"], 1, "executed once: {row}");
        *by_instance
            .entry(row["instance"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        by_instance.len(),
        3,
        "every replica took rows: {by_instance:?}"
    );
}

#[tokio::test]
async fn a_replica_killed_mid_batch_loses_no_row() {
    let db = TestDb::postgres();
    let a = Replica::spawn(&db, "a", &["--workers", "8"]).await;
    let b = Replica::spawn(&db, "b", &["--workers", "8"]).await;
    let rows: Vec<Value> = (0..200).map(|_| json!({"seconds": 0.05})).collect();
    let id = submit(
        &a,
        json!({"handler": "sleep", "rows": rows, "waitoff": true}),
    )
    .await;
    // Kill a while it holds rows.
    wait_for("a holding rows", Duration::from_secs(30), || async {
        let (_, body) = b
            .get(&format!(
                "/api/v1/batches/{id}/rows?status=inprog&limit=1000"
            ))
            .await;
        let held = body["rows"]
            .as_array()
            .map(|rows| rows.iter().any(|r| r["instance"] == "a"))
            .unwrap_or(false);
        held.then_some(())
    })
    .await;
    a.signal("KILL");
    let batch = final_on(&b, &id, Duration::from_secs(60)).await;
    assert_eq!(batch["status"], "success", "{batch}");
    let c = &batch["counts"];
    assert_eq!(c["success"], 200, "{batch}");
    assert_eq!(c["total"], 200);
    let rows = all_rows(&b, &id).await;
    assert!(rows.iter().all(|r| r["status"] == "success"));
    assert!(
        rows.iter().any(|r| r["attempts"].as_i64() > Some(1)),
        "the dead replica's rows were run again elsewhere"
    );
    let store = jobsd::store::Store::connect(&db.url, 2, Duration::from_secs(10))
        .await
        .unwrap();
    let check = store.batch_counts_check(id.parse().unwrap()).await.unwrap();
    assert_eq!(check.counters, check.rows);
}

fn vm_hwm_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    kib / 1024.0
}

#[tokio::test]
async fn a_million_row_ndjson_submit_and_its_output_stream_in_bounded_memory() {
    const ROWS: usize = 1_000_000;
    let db = TestDb::postgres();
    // One worker: the rows are not the point here.
    let r = Replica::spawn(&db, "big", &["--workers", "1"]).await;
    let before = vm_hwm_mib(r.pid());
    let mut body = Vec::with_capacity(ROWS * 32);
    for i in 0..ROWS {
        body.extend_from_slice(format!("{{\"message\":\"row {i:07}\"}}\n").as_bytes());
    }
    let body_mib = body.len() as f64 / (1024.0 * 1024.0);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(170))
        .build()
        .unwrap();
    let resp = client
        .post(format!("{}/api/v1/batches?handler=log", r.base))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["batch"]["counts"]["total"], ROWS as i64);
    let id = created["batch"]["batch_id"].as_str().unwrap().to_string();
    let after_ingest = vm_hwm_mib(r.pid());
    // The rows' outputs, set directly (executing a million rows is the
    // benchmark's job): every row succeeded with its input as its result.
    let (status, _) = r
        .post(&format!("/api/v1/batches/{id}/abort"), json!({}))
        .await;
    assert_eq!(status, 200);
    let store = jobsd::store::Store::connect(&db.url, 2, Duration::from_secs(10))
        .await
        .unwrap();
    execute_sql(
        &store,
        &format!("UPDATE batch_rows SET state = 'success', result = input WHERE batch_id = '{id}'"),
        &format!("-- {}", micros(chrono::Utc::now())),
    )
    .await;
    let resp = client
        .get(format!("{}/api/v1/batches/{id}/output", r.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    let mut lines = 0usize;
    for (i, line) in text.split_terminator('\n').enumerate() {
        assert!(!line.is_empty(), "line {i} is empty");
        lines += 1;
    }
    assert_eq!(lines, ROWS);
    assert!(
        text.starts_with("{\"result\":{\"message\":\"row 0000000\"},\"row\":0}\n"),
        "{}",
        &text[..80]
    );
    let after_output = vm_hwm_mib(r.pid());
    eprintln!(
        "memory peak (VmHWM): {before:.0} MiB at start, {after_ingest:.0} MiB after ingesting \
         {ROWS} rows ({body_mib:.0} MiB of NDJSON), {after_output:.0} MiB after streaming their output"
    );
    // Held whole, the rows alone would take several hundred MiB.
    assert!(
        after_output - before < 120.0,
        "memory grew by {:.0} MiB",
        after_output - before
    );
}
