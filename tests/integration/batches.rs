//! Batches over HTTP (issue #15): submit (JSON and streamed NDJSON),
//! append, wait-off, abort, status and counts, rows, outputs, output files;
//! bad input refused naming the row, storing nothing.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{assert_error, wait_for, TestApp};

async fn post_ndjson(app: &TestApp, path: &str, body: String) -> (u16, Value) {
    let resp = app
        .client
        .post(app.url(path))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn text(app: &TestApp, path: &str) -> (u16, String) {
    let resp = app.client.get(app.url(path)).send().await.expect("sent");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

fn id_of(body: &Value) -> String {
    body["batch"]["batch_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no batch id in {body}"))
        .to_string()
}

/// Waits until the batch is final; returns it.
pub async fn final_batch(app: &TestApp, id: &str, within: Duration) -> Value {
    wait_for("the batch to be final", within, || async {
        let (_, body) = app.get(&format!("/api/v1/batches/{id}")).await;
        body["batch"]["finished_at"]
            .is_string()
            .then(|| body["batch"].clone())
    })
    .await
}

fn messages(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"message": format!("row {i}")}))
        .collect()
}

#[tokio::test]
async fn submit_append_waitoff_and_read_back() {
    let app = TestApp::start().await;
    let (status, body) = app
        .post(
            "/api/v1/batches",
            json!({"handler": "LOG", "context": {"k": 1}, "rows": messages(3), "max_parallel": 2}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = id_of(&body);
    assert_eq!(
        body["batch"]["handler"], "log",
        "matched case-insensitively"
    );
    assert_eq!(body["batch"]["counts"]["total"], 3);
    assert_eq!(body["batch"]["context"], json!({"k": 1}));
    let (status, body) = app
        .post(
            &format!("/api/v1/batches/{id}/rows"),
            json!({"rows": messages(2)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["batch"]["counts"]["total"], 5);
    let (status, _) = post_ndjson(
        &app,
        &format!("/api/v1/batches/{id}/rows"),
        "{\"message\":\"n\"}\n".into(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = app
        .post(&format!("/api/v1/batches/{id}/waitoff"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["batch"]["waitoff"], true);
    let refused = app
        .post(
            &format!("/api/v1/batches/{id}/rows"),
            json!({"rows": messages(1)}),
        )
        .await;
    // 409: wait-off is set (or the batch is final already).
    assert_eq!(refused.0, 409, "{}", refused.1);
    let batch = final_batch(&app, &id, Duration::from_secs(30)).await;
    assert_eq!(batch["status"], "success");
    assert_eq!(
        batch["counts"],
        json!({"total": 6, "queued": 0, "inprog": 0, "success": 6, "failed": 0, "aborted": 0})
    );
    assert_eq!(batch["progress"], 1.0);
    let (_, rows) = app.get(&format!("/api/v1/batches/{id}/rows?limit=4")).await;
    assert_eq!(rows["rows"].as_array().unwrap().len(), 4);
    assert_eq!(rows["rows"][0]["status"], "success");
    assert_eq!(rows["rows"][0]["attempts"], 1);
    let cursor = rows["next_cursor"].as_str().expect("a next page");
    let (_, rest) = app
        .get(&format!("/api/v1/batches/{id}/rows?cursor={cursor}"))
        .await;
    assert_eq!(rest["rows"][0]["row"], 4);
    assert_eq!(rest["rows"].as_array().unwrap().len(), 2);
    // Outputs in row order, no empty lines.
    let (status, out) = text(&app, &format!("/api/v1/batches/{id}/output")).await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = out.split_terminator('\n').collect();
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|l| !l.trim().is_empty()));
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first, json!({"row": 0, "result": {"message": "row 0"}}));
    let (_, csv) = text(&app, &format!("/api/v1/batches/{id}/output?format=csv")).await;
    assert_eq!(csv.lines().next(), Some("row,message"));
    assert_eq!(csv.lines().nth(1), Some("0,row 0"));
    assert_eq!(csv.lines().count(), 7);
    let (_, list) = app.get("/api/v1/batches?status=success&handler=log").await;
    assert_eq!(list["batches"][0]["batch_id"], id.as_str());
    let (_, none) = app.get("/api/v1/batches?status=queued").await;
    assert!(none["batches"].as_array().unwrap().is_empty());
    let (status, _) = app.delete(&format!("/api/v1/batches/{id}")).await;
    assert_eq!(status, 204);
    assert_eq!(app.get(&format!("/api/v1/batches/{id}")).await.0, 404);
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_row_and_stores_nothing() {
    let app = TestApp::start_with(&["--max-batch-bytes", "4096"]).await;
    let unknown = app
        .post("/api/v1/batches", json!({"handler": "nope", "rows": []}))
        .await;
    assert_error(&unknown, 400, "unknown handler");
    let bad_row = app
        .post(
            "/api/v1/batches",
            json!({"handler": "log", "rows": [{"message": "ok"}, {"message": 7}]}),
        )
        .await;
    assert_error(&bad_row, 400, "row 1");
    assert_eq!(bad_row.1["problems"][0]["field"], "rows/1");
    let not_json = post_ndjson(
        &app,
        "/api/v1/batches?handler=log",
        "{\"message\":\"a\"}\n\n{\"message\":\n".into(),
    )
    .await;
    assert_error(&not_json, 400, "row 1");
    let too_big = post_ndjson(
        &app,
        "/api/v1/batches?handler=log",
        "{\"message\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}\n".repeat(200),
    )
    .await;
    assert_error(&too_big, 413, "max-batch-bytes");
    let bad_option = app
        .post(
            "/api/v1/batches",
            json!({"handler": "log", "max_parallel": 0}),
        )
        .await;
    assert_error(&bad_option, 400, "max_parallel");
    let unknown_field = app
        .post("/api/v1/batches", json!({"handler": "log", "rowz": []}))
        .await;
    assert_eq!(unknown_field.0, 400);
    let (_, list) = app.get("/api/v1/batches").await;
    assert!(list["batches"].as_array().unwrap().is_empty(), "{list}");
    // An empty batch without wait-off is allowed.
    let (status, body) = app.post("/api/v1/batches", json!({"handler": "log"})).await;
    assert_eq!(status, 201);
    assert_eq!(body["batch"]["status"], "queued");
    let id = id_of(&body);
    let bad_append = app
        .post(
            &format!("/api/v1/batches/{id}/rows"),
            json!({"rows": [{"message": "x"}, 5]}),
        )
        .await;
    assert_error(&bad_append, 400, "row 1");
    let (_, after) = app.get(&format!("/api/v1/batches/{id}")).await;
    assert_eq!(after["batch"]["counts"]["total"], 0);
    assert_eq!(app.get("/api/v1/batches/not-a-uuid").await.0, 404);
    assert_error(&app.get("/api/v1/batches?status=nope").await, 400, "status");
}

#[tokio::test]
async fn abort_makes_queued_rows_aborted_at_once() {
    let app = TestApp::start().await;
    let rows: Vec<Value> = (0..20).map(|_| json!({"seconds": 30})).collect();
    let (status, body) = app
        .post(
            "/api/v1/batches",
            json!({"handler": "sleep", "rows": rows, "max_parallel": 2}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = id_of(&body);
    wait_for("two rows running", Duration::from_secs(20), || async {
        let (_, b) = app.get(&format!("/api/v1/batches/{id}")).await;
        (b["batch"]["counts"]["inprog"] == 2).then_some(())
    })
    .await;
    let (_, b) = app.get(&format!("/api/v1/batches/{id}")).await;
    assert_eq!(b["batch"]["status"], "inprog");
    let (status, body) = app
        .post(
            &format!("/api/v1/batches/{id}/abort?cancel_running=true"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["batch"]["status"], "aborted");
    assert_eq!(body["batch"]["counts"]["aborted"], 18);
    let batch = final_batch(&app, &id, Duration::from_secs(20)).await;
    assert_eq!(
        batch["counts"]["aborted"], 20,
        "cancelled rows count as aborted"
    );
    assert_eq!(batch["status"], "aborted");
    let refused = app
        .post(
            &format!("/api/v1/batches/{id}/rows"),
            json!({"rows": [{"seconds": 1}]}),
        )
        .await;
    assert_error(&refused, 409, "aborted");
}

/// A library user's handler: counts its batch initialiser's calls and
/// returns what each row's call saw.
struct Scoring {
    inits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl jobsd::handlers::Handler for Scoring {
    fn name(&self) -> &str {
        "score"
    }
    fn kwargs_schema(&self) -> Value {
        json!({"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]})
    }
    fn example(&self) -> Value {
        json!({"x": 1})
    }
    async fn init_batch(
        &self,
        batch: &jobsd::handlers::BatchInfo,
    ) -> Result<Option<jobsd::handlers::BatchState>, jobsd::handlers::HandlerError> {
        self.inits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let factor = batch.context["factor"].as_i64().unwrap_or(1);
        Ok(Some(std::sync::Arc::new(factor)))
    }
    async fn execute(
        &self,
        ctx: jobsd::handlers::RunContext,
        kwargs: Value,
    ) -> jobsd::handlers::HandlerResult {
        let call = ctx
            .batch()
            .ok_or_else(|| anyhow::anyhow!("not a batch row"))?;
        let factor = *call
            .state::<i64>()
            .ok_or_else(|| anyhow::anyhow!("no state"))?;
        let x = kwargs["x"].as_i64().unwrap_or(0);
        if x < 0 {
            return Err(jobsd::handlers::HandlerError::fatal(anyhow::anyhow!(
                "negative"
            )));
        }
        // Even rows give no output (left out of the output).
        Ok(if x % 2 == 0 {
            Value::Null
        } else {
            json!({"y": x * factor, "row": call.row})
        })
    }
}

#[tokio::test]
async fn the_batch_initialiser_runs_once_per_batch_and_rows_see_its_state() {
    let inits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler = Scoring {
        inits: inits.clone(),
    };
    let app = TestApp::start_custom(crate::support::TestDb::new(), &[], |registry| {
        registry.register(handler).expect("registered");
    })
    .await;
    let rows: Vec<Value> = (0..50)
        .map(|x| json!({"x": x}))
        .chain([json!({"x": -1})])
        .collect();
    let (status, body) = app
        .post(
            "/api/v1/batches",
            json!({"handler": "score", "context": {"factor": 10}, "rows": rows, "waitoff": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = id_of(&body);
    let batch = final_batch(&app, &id, Duration::from_secs(30)).await;
    assert_eq!(batch["status"], "partial");
    assert_eq!(batch["counts"]["failed"], 1);
    assert_eq!(
        inits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "once for the batch"
    );
    let (_, out) = text(&app, &format!("/api/v1/batches/{id}/output")).await;
    let lines: Vec<Value> = out
        .split_terminator('\n')
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 25, "rows without output are left out");
    assert_eq!(lines[0], json!({"row": 1, "result": {"y": 10, "row": 1}}));
    let (_, failed) = app
        .get(&format!("/api/v1/batches/{id}/rows?status=failed"))
        .await;
    assert_eq!(failed["rows"][0]["row"], 50);
    assert!(failed["rows"][0]["error"]
        .as_str()
        .unwrap()
        .contains("negative"));
    // Another batch initialises again.
    let (_, body) = app
        .post(
            "/api/v1/batches",
            json!({"handler": "score", "rows": [{"x": 1}], "waitoff": true}),
        )
        .await;
    final_batch(&app, &id_of(&body), Duration::from_secs(30)).await;
    assert_eq!(inits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_big_batch_of_long_rows_leaves_slots_to_scheduled_runs() {
    let app = TestApp::start_with(&["--workers", "4"]).await;
    let rows: Vec<Value> = (0..40).map(|_| json!({"seconds": 2})).collect();
    let (status, body) = app
        .post("/api/v1/batches", json!({"handler": "sleep", "rows": rows}))
        .await;
    assert_eq!(status, 201, "{body}");
    let id = id_of(&body);
    wait_for("rows running", Duration::from_secs(20), || async {
        let (_, b) = app.get(&format!("/api/v1/batches/{id}")).await;
        (b["batch"]["counts"]["inprog"] == 3).then_some(())
    })
    .await;
    // Every row slot is taken (three of the four workers); a one-shot job
    // due now still runs at once, in the slot rows leave to runs.
    let (status, job) = app
        .post(
            "/api/v1/jobs/log?job_id=meanwhile",
            json!({"message": "not starved"}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    wait_for(
        "the run to succeed beside the batch",
        Duration::from_secs(5),
        || async {
            let (_, runs) = app.get("/api/v1/jobs/meanwhile/runs").await;
            (runs["runs"][0]["state"] == "succeeded").then_some(())
        },
    )
    .await;
    let (_, b) = app.get(&format!("/api/v1/batches/{id}")).await;
    assert!(b["batch"]["counts"]["queued"].as_i64() > Some(30), "{b}");
    let (status, _) = app
        .post(
            &format!("/api/v1/batches/{id}/abort?cancel_running=true"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
}

/// A library user's handler that returns what its row asks for: the row's
/// `result`, after failing (retryably) its first `fail_times` attempts.
/// The built-in handlers wrap what they return (`http`'s `body`,
/// `command`'s `stdout`), so none can give a top-level `$files`.
struct Echo;

#[async_trait::async_trait]
impl jobsd::handlers::Handler for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    fn kwargs_schema(&self) -> Value {
        json!({"type": "object", "properties": {"fail_times": {"type": "integer"}}})
    }
    fn example(&self) -> Value {
        json!({"result": {"$files": {"out.txt": "a line"}}})
    }
    async fn execute(
        &self,
        ctx: jobsd::handlers::RunContext,
        kwargs: Value,
    ) -> jobsd::handlers::HandlerResult {
        if i64::from(ctx.attempt) <= kwargs["fail_times"].as_i64().unwrap_or(0) {
            // Retryable (`From<anyhow::Error>`).
            return Err(anyhow::anyhow!("failing attempt {}", ctx.attempt).into());
        }
        Ok(kwargs["result"].clone())
    }
}

async fn echo_app() -> TestApp {
    TestApp::start_custom(crate::support::TestDb::new(), &[], |registry| {
        registry.register(Echo).expect("registered");
    })
    .await
}

/// GET `path`: status, content type and body text.
async fn file(app: &TestApp, path: &str) -> (u16, String, String) {
    let resp = app.client.get(app.url(path)).send().await.expect("sent");
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        resp.status().as_u16(),
        content_type,
        resp.text().await.expect("body"),
    )
}

#[tokio::test]
async fn rows_files_are_served_in_row_order_without_empty_lines() {
    let app = echo_app().await;
    let rows = json!([
        {"result": {"score": 1, "$files": {"out.csv": "id,score\n0,1\n", "notes.txt": ["zero"]}}},
        {"result": {"$files": {"out.csv": ["", "1,2\r\n\r\n"]}}},
        {"result": {"score": 3}},
        {"result": {"score": 4, "$files": {"../x": "a"}}},
        {"result": {"$files": {"out.csv": "4,5"}}, "fail_times": 1},
        {"result": {"$files": "out.csv"}},
        {"result": {"$files": {"out.csv": {"not": "lines"}}}},
    ]);
    let (status, body) = app
        .post(
            "/api/v1/batches",
            json!({"handler": "echo", "rows": rows, "waitoff": true,
                   "max_retries": 1, "retry_backoff": "0s"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // (The rows may be done by the time the answer is read.)
    assert!(body["batch"]["output_files"].is_array(), "{body}");
    let id = id_of(&body);
    let batch = final_batch(&app, &id, Duration::from_secs(30)).await;
    assert_eq!(batch["status"], "partial");
    assert_eq!(batch["counts"]["success"], 4);
    assert_eq!(batch["counts"]["failed"], 3, "bad $files fail the row");
    assert_eq!(batch["output_files"], json!(["notes.txt", "out.csv"]));

    // The file: succeeded rows' lines in row order, once each (row 4 after
    // its retry), no empty line, no \r.
    let (status, content_type, body) =
        file(&app, &format!("/api/v1/batches/{id}/files/out.csv")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/csv; charset=utf-8");
    assert_eq!(body, "id,score\n0,1\n1,2\n4,5\n");
    let (status, content_type, body) =
        file(&app, &format!("/api/v1/batches/{id}/files/notes.txt")).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; charset=utf-8");
    assert_eq!(body, "zero\n");

    // Results are stored without $files; a row with files only has none,
    // and is left out of the output.
    let (_, listed) = app.get(&format!("/api/v1/batches/{id}/rows")).await;
    let rows = listed["rows"].as_array().unwrap();
    assert_eq!(rows[0]["result"], json!({"score": 1}));
    assert_eq!(rows[1]["status"], "success");
    assert_eq!(rows[1]["result"], Value::Null);
    assert_eq!(rows[4]["attempts"], 2);
    assert!(
        rows.iter().all(|r| r["result"].get("$files").is_none()),
        "{listed}"
    );
    let (_, out) = text(&app, &format!("/api/v1/batches/{id}/output")).await;
    let rows_out: Vec<i64> = out
        .split_terminator('\n')
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["row"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(rows_out, vec![0, 2]);

    // Bad $files: the row failed at once (not retried), naming the problem.
    let (_, failed) = app
        .get(&format!("/api/v1/batches/{id}/rows?status=failed"))
        .await;
    let errors: Vec<(i64, i64, String)> = failed["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["row"].as_i64().unwrap(),
                r["attempts"].as_i64().unwrap(),
                r["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (
                3,
                1,
                r#"$files: "../x" is not a valid file name (1 to 200 letters, digits, . _ -; not starting with .)"#
                    .to_string()
            ),
            (
                5,
                1,
                "$files: must be an object mapping file names to lines, not a string".to_string()
            ),
            (
                6,
                1,
                r#"$files: the lines of "out.csv" must be a string or an array of strings, not an object"#
                    .to_string()
            ),
        ]
    );

    // The completion's summary names the files.
    let completed = wait_for("batch.completed", Duration::from_secs(10), || async {
        let (_, page) = app.get("/api/v1/events?type=batch.completed").await;
        page["events"].as_array().and_then(|e| e.first().cloned())
    })
    .await;
    assert_eq!(
        completed["data"]["output_files"],
        json!(["notes.txt", "out.csv"])
    );

    // Unknown batch or name: 404; a bad name: 400.
    assert_error(
        &app.get(&format!("/api/v1/batches/{id}/files/other.csv"))
            .await,
        404,
        "no output file",
    );
    let nobody = uuid::Uuid::now_v7();
    assert_error(
        &app.get(&format!("/api/v1/batches/{nobody}/files/out.csv"))
            .await,
        404,
        "no batch",
    );
    assert_eq!(
        app.get("/api/v1/batches/not-a-uuid/files/out.csv").await.0,
        404
    );
    for bad in [".hidden", "a%20b", "..%2Fx", &"n".repeat(201)] {
        assert_error(
            &app.get(&format!("/api/v1/batches/{id}/files/{bad}")).await,
            400,
            "not a valid file name",
        );
    }

    // Deleting the batch removes its files.
    assert_eq!(app.delete(&format!("/api/v1/batches/{id}")).await.0, 204);
    assert_eq!(
        app.get(&format!("/api/v1/batches/{id}/files/out.csv"))
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn a_running_batchs_file_holds_what_its_rows_wrote_so_far() {
    let app = echo_app().await;
    let (status, body) = app
        .post(
            "/api/v1/batches",
            json!({"handler": "echo", "rows": [{"result": {"$files": {"log.txt": "first"}}}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = id_of(&body);
    let path = format!("/api/v1/batches/{id}/files/log.txt");
    let batch = wait_for("the first row's file", Duration::from_secs(30), || async {
        let (_, b) = app.get(&format!("/api/v1/batches/{id}")).await;
        (b["batch"]["output_files"] == json!(["log.txt"])).then(|| b["batch"].clone())
    })
    .await;
    assert!(batch["finished_at"].is_null(), "no wait-off: still open");
    assert_eq!(file(&app, &path).await.2, "first\n");
    let (status, _) = app
        .post(
            &format!("/api/v1/batches/{id}/rows"),
            json!({"rows": [{"result": {"$files": {"log.txt": ["second", "third"]}}}]}),
        )
        .await;
    assert_eq!(status, 200);
    let text = wait_for(
        "the appended row's lines",
        Duration::from_secs(30),
        || async {
            let (_, _, text) = file(&app, &path).await;
            (text != "first\n").then_some(text)
        },
    )
    .await;
    assert_eq!(text, "first\nsecond\nthird\n");
    app.post(&format!("/api/v1/batches/{id}/waitoff"), json!({}))
        .await;
    let batch = final_batch(&app, &id, Duration::from_secs(30)).await;
    assert_eq!(batch["status"], "success");
}

#[tokio::test]
async fn a_files_pages_join_up_across_many_rows() {
    let app = echo_app().await;
    // More rows than one page of the file's stream (256), each two lines.
    let rows: Vec<Value> = (0..600)
        .map(|i| json!({"result": {"$files": {"big.txt": format!("{i}a\n{i}b")}}}))
        .collect();
    let (status, body) = app
        .post(
            "/api/v1/batches",
            json!({"handler": "echo", "rows": rows, "waitoff": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = id_of(&body);
    final_batch(&app, &id, Duration::from_secs(60)).await;
    let (status, _, text) = file(&app, &format!("/api/v1/batches/{id}/files/big.txt")).await;
    assert_eq!(status, 200);
    let expected: String = (0..600).map(|i| format!("{i}a\n{i}b\n")).collect();
    assert_eq!(text, expected);
}

/// An `http` row whose endpoint answers with `$files`: the files are the
/// batch's, the row's result keeps the rest of the body.
#[tokio::test]
async fn an_http_rows_endpoint_can_answer_with_output_files() {
    let server = axum::Router::new().route(
        "/row",
        axum::routing::post(|axum::Json(input): axum::Json<Value>| async move {
            let n = input["n"].as_i64().unwrap_or(-1);
            axum::Json(json!({"n": n, "$files": {"report.csv": format!("{n},ok")}}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/row", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, server).await });
    let app = TestApp::start().await;
    let rows: Vec<Value> = (0..3)
        .map(|n| json!({"url": url, "method": "POST", "body": {"n": n}}))
        .collect();
    let (status, body) = app
        .post(
            "/api/v1/batches",
            json!({"handler": "http", "rows": rows, "waitoff": true}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = id_of(&body);
    let batch = final_batch(&app, &id, Duration::from_secs(30)).await;
    assert_eq!(batch["status"], "success", "{batch}");
    assert_eq!(batch["output_files"], json!(["report.csv"]));
    let (status, _, text) = file(&app, &format!("/api/v1/batches/{id}/files/report.csv")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, "0,ok\n1,ok\n2,ok\n");
    let (status, rows) = app.get(&format!("/api/v1/batches/{id}/rows")).await;
    assert_eq!(status, 200, "{rows}");
    let first = &rows["rows"][0];
    assert_eq!(first["result"]["body"], json!({"n": 0}), "{first}");
    assert!(first["result"].get("$files").is_none(), "{first}");
}
