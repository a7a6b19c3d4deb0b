//! Events (issue #13 §1) through a real jobsd: `GET /api/v1/events` pages
//! and filters, the Server-Sent Events stream (resume from `Last-Event-ID`,
//! events of another replica), stream tickets under auth, in-process
//! listeners, and a cursor that skips nothing when transactions commit out
//! of order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use jobsd::auth::Scope;
use jobsd::events::EventListener;
use jobsd::handlers::{BuiltinConfig, HandlerRegistry};
use jobsd::store::{Backend, EventQuery, EventRow, Store};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::{self, assert_error, wait_for, Replica, TestApp, TestDb};

const SECRET: &str = "tok-events-secret-4242";

fn once_now(job_id: &str) -> Value {
    json!({"job_id": job_id, "handler": "log", "kwargs": {"message": job_id},
           "when": Utc::now().to_rfc3339()})
}

async fn events(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/events?{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until `query` finds an event of `event_type`; returns them all.
async fn wait_event(app: &TestApp, query: &str, event_type: &str) -> Vec<Value> {
    wait_for(
        &format!("{event_type} in {query}"),
        Duration::from_secs(15),
        || async {
            let got = events(app, query).await;
            types(&got).iter().any(|t| t == event_type).then_some(got)
        },
    )
    .await
}

#[tokio::test]
async fn pages_show_each_transition_with_the_run_or_job_secrets_masked() {
    let app = TestApp::start().await;
    let (status, body) = app.post("/api/v1/jobs", once_now("tick")).await;
    assert_eq!(status, 201, "{body}");
    let got = wait_event(&app, "job_id=tick", "job.completed").await;
    let kinds = types(&got);
    for expected in [
        "job.created",
        "run.queued",
        "run.running",
        "run.succeeded",
        "job.completed",
    ] {
        assert_eq!(
            kinds.iter().filter(|t| *t == expected).count(),
            1,
            "{kinds:?}"
        );
    }
    let at = |t: &str| kinds.iter().position(|k| k == t).unwrap();
    assert!(at("run.queued") < at("run.running") && at("run.running") < at("run.succeeded"));
    let succeeded = &got[at("run.succeeded")];
    let run_id = succeeded["run_id"].as_str().unwrap();
    assert_eq!(succeeded["job_id"], "tick");
    assert_eq!(succeeded["data"]["from"], "running");
    assert_eq!(succeeded["data"]["attempt"], 1);
    assert_eq!(succeeded["data"]["run"]["run_id"], run_id);
    assert_eq!(succeeded["data"]["run"]["state"], "succeeded");
    assert_eq!(
        succeeded["data"]["run"]["result"],
        json!({"message": "tick"})
    );
    assert!(succeeded["instance"].is_string());
    assert_eq!(got[at("job.created")]["data"]["job"]["job_id"], "tick");

    // A job's secrets are masked in its events too.
    let (status, body) = app
        .post(
            "/api/v1/jobs",
            json!({"job_id": "secretive", "handler": "http", "state": "paused",
                   "kwargs": {"url": "http://127.0.0.1:9/x", "secret_headers": {"X-Token": SECRET}}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, page) = app
        .get("/api/v1/events?type=job.created&job_id=secretive")
        .await;
    let created = wait_event(&app, "type=job.created&job_id=secretive", "job.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(
        created[0]["data"]["job"]["kwargs"]["secret_headers"]["X-Token"],
        "***"
    );
    assert!(!page.to_string().contains(SECRET));

    // Filters: by type and group; by run.
    let only_failed = events(&app, "type=run.failed").await;
    assert!(only_failed.is_empty(), "{only_failed:?}");
    let jobs = events(&app, "type=job.").await;
    assert!(
        types(&jobs).iter().all(|t| t.starts_with("job.")),
        "{jobs:?}"
    );
    let of_run = events(&app, &format!("run_id={run_id}")).await;
    assert_eq!(
        types(&of_run),
        ["run.queued", "run.running", "run.succeeded"]
    );

    // Pages of two, each from the last one's cursor, cover everything once,
    // ascending or descending.
    let every = events(&app, "limit=1000").await;
    for order in ["asc", "desc"] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = app
                .get(&format!("/api/v1/events?limit=2&order={order}{cursor}"))
                .await;
            assert_eq!(status, 200, "{page}");
            let batch = page["events"].as_array().cloned().unwrap_or_default();
            if batch.is_empty() {
                // An empty page gives back the cursor it was asked with.
                assert_eq!(
                    format!("&cursor={}", page["next_cursor"].as_str().unwrap()),
                    cursor
                );
                break;
            }
            assert_eq!(page["next_cursor"], batch.last().unwrap()["event_id"]);
            cursor = format!("&cursor={}", page["next_cursor"].as_str().unwrap());
            seen.extend(batch);
        }
        let ids = |v: &[Value]| v.iter().map(|e| e["event_id"].clone()).collect::<Vec<_>>();
        let mut expected = ids(&every);
        if order == "desc" {
            expected.reverse();
        }
        assert_eq!(ids(&seen), expected, "{order}");
    }
}

#[tokio::test]
async fn bad_filters_and_bodies_get_a_400_naming_the_problem() {
    let app = TestApp::start().await;
    for (query, needle) in [
        (
            "type=run.exploded",
            "type: \"run.exploded\" is not an event type",
        ),
        ("type=alerts.", "is not an event type"),
        ("cursor=abc", "cursor: \"abc\" is not an event cursor"),
        ("cursor=1-2", "is not an event cursor"),
        ("limit=0", "limit: must be between 1 and 1000"),
        ("limit=1001", "limit: must be between 1 and 1000"),
        ("limit=many", "invalid query string"),
        ("order=sideways", "order: \"sideways\" is not an order"),
        ("run_id=nope", "run_id: \"nope\" is not a run id"),
        ("ticket=x", "only GET /api/v1/events/stream takes a ticket"),
    ] {
        let response = app.get(&format!("/api/v1/events?{query}")).await;
        assert_error(&response, 400, needle);
    }
    for (query, needle) in [
        ("type=nope", "is not an event type"),
        ("limit=5", "a stream takes no limit or order"),
    ] {
        let response = app.get(&format!("/api/v1/events/stream?{query}")).await;
        assert_error(&response, 400, needle);
    }
    let bad_last_id = app
        .client
        .get(app.url("/api/v1/events/stream"))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_last_id.status(), 400);
    assert!(bad_last_id.text().await.unwrap().contains("Last-Event-ID"));
    for (body, needle) in [
        (json!({"type": "run.nope"}), "is not an event type"),
        (json!({"jobs": "x"}), "unknown field"),
        (json!([1, 2]), "invalid type"),
        (json!({"run_id": "x"}), "is not a run id"),
        (json!({"job_id": "a\u{0}b"}), "must not contain a NUL"),
        (json!({"job_id": ""}), "must be 1 to 200 characters"),
        (
            json!({"job_id": "x".repeat(201)}),
            "must be 1 to 200 characters",
        ),
        (json!({"type": 7}), "invalid type"),
    ] {
        let response = app.post("/api/v1/events/tickets", body).await;
        assert_error(&response, 400, needle);
    }
    let not_json = app
        .client
        .post(app.url("/api/v1/events/tickets"))
        .header("content-type", "application/json")
        .body("{\"type\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let oversized = app
        .client
        .post(app.url("/api/v1/events/tickets"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"job_id\": \"{}\"}}",
            "x".repeat(2 * 1024 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    // None of these made a ticket: each refusal changed nothing.
    let count = match app.store.as_postgres() {
        Some(pg) => sqlx::query_scalar::<_, i64>("SELECT count(*) FROM event_tickets")
            .fetch_one(pg.pool())
            .await
            .unwrap(),
        None => {
            let file = sqlx::SqlitePool::connect(&app.db.url).await.unwrap();
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM event_tickets")
                .fetch_one(&file)
                .await
                .unwrap()
        }
    };
    assert_eq!(count, 0);
}

/// One Server-Sent Event, as a client parses it.
#[derive(Debug, Clone)]
struct Sse {
    id: String,
    event: String,
    data: Value,
}

/// A client of the stream: its events as they come, parsed from the bytes.
struct SseClient {
    events: tokio::sync::mpsc::UnboundedReceiver<Sse>,
    task: tokio::task::JoinHandle<()>,
}

impl SseClient {
    async fn open(response: reqwest::Response) -> SseClient {
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let (sender, events) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut response = response;
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let (mut id, mut event, mut data) =
                        (String::new(), String::new(), String::new());
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            id = v.trim().to_string();
                        } else if let Some(v) = line.strip_prefix("event:") {
                            event = v.trim().to_string();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim());
                        }
                    }
                    if !data.is_empty() {
                        let data = serde_json::from_str(&data).expect("data is JSON");
                        if sender.send(Sse { id, event, data }).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        SseClient { events, task }
    }

    /// Events until one of `event_type` (included).
    async fn until(&mut self, event_type: &str) -> Vec<Sse> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {event_type} within 15 s; got {got:#?}"))
                .expect("the stream stays open");
            let done = next.event == event_type;
            got.push(next);
            if done {
                return got;
            }
        }
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn open_stream(
    client: &reqwest::Client,
    url: String,
    last_event_id: Option<&str>,
) -> SseClient {
    let mut request = client.get(url);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    SseClient::open(request.send().await.unwrap()).await
}

#[tokio::test]
async fn the_stream_sends_events_as_they_commit_and_resumes_after_last_event_id() {
    let app = TestApp::start().await;
    // Events before the stream opened are not sent: it starts at "now".
    app.post("/api/v1/jobs", once_now("before")).await;
    wait_event(&app, "job_id=before", "job.completed").await;
    let mut stream = open_stream(
        &app.client,
        app.url("/api/v1/events/stream?type=run."),
        None,
    )
    .await;
    let (status, body) = app.post("/api/v1/jobs", once_now("live")).await;
    assert_eq!(status, 201, "{body}");
    let got = stream.until("run.succeeded").await;
    assert_eq!(
        got.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["run.queued", "run.running", "run.succeeded"],
        "{got:#?}"
    );
    for e in &got {
        assert_eq!(e.data["type"], e.event);
        assert_eq!(e.data["event_id"], e.id);
        assert_eq!(e.data["job_id"], "live");
    }
    // The page API agrees with the stream, event for event.
    let page = events(&app, "type=run.&job_id=live").await;
    assert_eq!(
        page.iter()
            .map(|e| e["event_id"].clone())
            .collect::<Vec<_>>(),
        got.iter().map(|e| json!(e.id)).collect::<Vec<_>>()
    );
    drop(stream);

    // Meanwhile (disconnected), more happens; a reconnect with the last id
    // it saw gets the rest, nothing before it, nothing twice.
    app.post("/api/v1/jobs", once_now("while-away")).await;
    wait_event(&app, "job_id=while-away", "run.succeeded").await;
    let mut resumed = open_stream(
        &app.client,
        app.url("/api/v1/events/stream?type=run."),
        Some(&got[0].id),
    )
    .await;
    let mut rest = resumed.until("run.succeeded").await;
    rest.extend(resumed.until("run.succeeded").await);
    let ids: Vec<&str> = rest.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids[..2],
        [got[1].id.as_str(), got[2].id.as_str()],
        "{rest:#?}"
    );
    assert_eq!(rest.len(), 5, "{rest:#?}");
    assert!(rest[2..].iter().all(|e| e.data["job_id"] == "while-away"));
}

#[tokio::test]
async fn with_auth_on_the_stream_takes_a_read_token_or_a_ticket_for_its_filters() {
    let app = TestApp::start_with(&["--auth", "on"]).await;
    let read = jobsd::auth::issue(&app.store, "reader", Scope::Read, Utc::now(), None)
        .await
        .unwrap()
        .secret;
    let write = jobsd::auth::issue(&app.store, "writer", Scope::Write, Utc::now(), None)
        .await
        .unwrap()
        .secret;
    let stream_url = app.url("/api/v1/events/stream?type=job.");
    let no_credential = app.client.get(&stream_url).send().await.unwrap();
    assert_eq!(no_credential.status(), 401);
    assert!(no_credential.text().await.unwrap().contains("ticket"));
    let no_ticket = app
        .client
        .post(app.url("/api/v1/events/tickets"))
        .json(&json!({"type": "job."}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_ticket.status(), 401);

    // A token in the header opens it.
    let with_token = app
        .client
        .get(&stream_url)
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    let mut by_token = SseClient::open(with_token).await;

    // A ticket (made with the read token) opens this stream, and only it.
    let made = app
        .client
        .post(app.url("/api/v1/events/tickets"))
        .bearer_auth(&read)
        .json(&json!({"type": "job."}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    let ticket = made["ticket"].as_str().unwrap().to_string();
    assert!(ticket.starts_with("jobsd_ticket_"), "{made}");
    let expires = made["expires_at"]
        .as_str()
        .unwrap()
        .parse::<chrono::DateTime<Utc>>()
        .unwrap();
    let ttl = expires - Utc::now();
    assert!(
        ttl > chrono::Duration::minutes(9) && ttl <= chrono::Duration::minutes(10),
        "{made}"
    );
    let url = app.url(made["url"].as_str().unwrap());
    assert!(url.contains("type=job.") && url.contains(&ticket), "{url}");
    let mut by_ticket = open_stream(&app.client, url.clone(), None).await;
    // Reconnects of that stream open with it again.
    let again = app.client.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 200);
    drop(again);
    for other in [
        app.url(&format!("/api/v1/events/stream?type=run.&ticket={ticket}")),
        app.url(&format!("/api/v1/events/stream?ticket={ticket}")),
    ] {
        let refused = app.client.get(other).send().await.unwrap();
        assert_eq!(refused.status(), 401);
        assert!(refused.text().await.unwrap().contains("is for the stream"));
    }
    let forged = app
        .client
        .get(app.url(
            "/api/v1/events/stream?type=job.&ticket=jobsd_ticket_0123456789abcdef0123456789abcdef",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    // Neither a ticket nor the stream's route opens anything else.
    let page = app
        .client
        .get(app.url(&format!("/api/v1/events?ticket={ticket}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 401);

    let created = app
        .client
        .post(app.url("/api/v1/jobs"))
        .bearer_auth(&write)
        .json(
            &json!({"job_id": "seen", "handler": "log", "kwargs": {"message": "x"},
                      "periodically": "1 day", "state": "paused"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    for stream in [&mut by_token, &mut by_ticket] {
        let got = stream.until("job.created").await;
        assert_eq!(got.last().unwrap().data["job_id"], "seen");
    }

    // Revoking the token that made it ends the ticket.
    let reader_row = jobsd::auth::revoke(&app.store, &read[..14], Utc::now())
        .await
        .unwrap();
    assert_eq!(reader_row.name, "reader");
    let refused = app.client.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("revoked"));
}

/// Collects what an in-process listener is given; panics on `job.paused`.
#[derive(Default)]
struct Collector(Mutex<Vec<EventRow>>);

impl EventListener for Collector {
    fn on_event(&self, event: &EventRow) {
        if event.event_type == "job.paused" {
            panic!("a listener that panics");
        }
        self.0.lock().unwrap().push(event.clone());
    }
}

#[tokio::test]
async fn an_in_process_listener_gets_every_event_and_survives_its_own_panic() {
    let db = TestDb::new();
    let config = support::serve_config(&db, &[]);
    let builtins = BuiltinConfig::from_flags(false, &config.guards).unwrap();
    let collector = Arc::new(Collector::default());
    let shutdown = CancellationToken::new();
    let running = jobsd::app::start_with_listeners(
        config,
        HandlerRegistry::with_builtins(builtins),
        vec![collector.clone()],
        shutdown.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.address);
    let client = reqwest::Client::new();
    let paused = json!({"job_id": "p", "handler": "log", "kwargs": {"message": "x"},
                        "periodically": "1 day", "state": "paused"});
    for body in [paused, once_now("l")] {
        let status = client
            .post(format!("{base}/api/v1/jobs"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 201);
    }
    // `p` was created paused: job.created, never job.paused; pause it by
    // PATCH after, which panics the listener once.
    wait_for(
        "the listener sees l succeed",
        Duration::from_secs(15),
        || async {
            let seen = collector.0.lock().unwrap();
            seen.iter()
                .any(|e| e.event_type == "run.succeeded" && e.job_id.as_deref() == Some("l"))
                .then_some(())
        },
    )
    .await;
    let resume = client
        .patch(format!("{base}/api/v1/jobs/p"))
        .json(&json!({"state": "running"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resume.status(), 200);
    let pause = client
        .patch(format!("{base}/api/v1/jobs/p"))
        .json(&json!({"state": "paused"}))
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status(), 200);
    client
        .delete(format!("{base}/api/v1/jobs/p"))
        .send()
        .await
        .unwrap();
    wait_for(
        "the listener sees p deleted",
        Duration::from_secs(15),
        || async {
            let seen = collector.0.lock().unwrap();
            seen.iter()
                .any(|e| e.event_type == "job.deleted")
                .then_some(())
        },
    )
    .await;
    let seen: Vec<(String, Option<String>)> = collector
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.event_type.clone(), e.job_id.clone()))
        .collect();
    let of_p: Vec<&str> = seen
        .iter()
        .filter(|(_, job)| job.as_deref() == Some("p"))
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(
        of_p,
        ["job.created", "job.resumed", "job.deleted"],
        "{seen:?}"
    );
    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn events_of_another_replica_arrive_on_the_stream() {
    if support::backend() != Backend::Postgres {
        return; // replicas need PostgreSQL
    }
    let db = TestDb::postgres();
    let a = Replica::spawn(&db, "events-a", &[]).await;
    let b = Replica::spawn(&db, "events-b", &[]).await;
    let client = reqwest::Client::new();
    let mut stream = open_stream(
        &client,
        format!("{}/api/v1/events/stream?job_id=far", a.base),
        None,
    )
    .await;
    let (status, body) = b
        .post(
            "/api/v1/jobs",
            json!({"job_id": "far", "handler": "log", "kwargs": {"message": "x"},
                   "periodically": "1 day", "state": "paused"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let got = stream.until("job.created").await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].data["data"]["job"]["job_id"], "far");
}

/// PostgreSQL: a transaction that began writing first but commits last
/// must not have its events skipped by a reader that already saw a later
/// transaction's. The horizon holds the later events back until it ends.
#[tokio::test]
async fn a_cursor_never_skips_the_events_of_a_transaction_that_commits_late() {
    let db = TestDb::postgres();
    let store = Store::connect(&db.url, 4, Duration::from_secs(10))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let pool = store.as_postgres().unwrap().pool().clone();
    // Events written as the store's statements write them (one row per
    // statement), without the statements: the cursor is what is tested.
    const PAUSED: &str = "SELECT events_write(jsonb_build_array(jsonb_build_object(\
        't', 'job.paused', 'at', now(), 'j', $1::text, 'f', 'running')))";
    for job_id in ["slow", "fast"] {
        sqlx::query(PAUSED)
            .bind(job_id)
            .execute(&pool)
            .await
            .unwrap();
    }
    let all = EventQuery {
        limit: 100,
        ..EventQuery::default()
    };
    let first = wait_for("both jobs' events", Duration::from_secs(10), || async {
        let got = store.events_page(&all).await.unwrap().events;
        (got.len() == 2).then_some(got)
    })
    .await;
    let cursor = first.last().unwrap().position;
    let after = EventQuery {
        after: Some(cursor),
        ..all.clone()
    };

    // `slow` begins writing first (its transaction id is the smaller)...
    let mut slow = pool.begin().await.unwrap();
    sqlx::query(PAUSED)
        .bind("slow")
        .execute(&mut *slow)
        .await
        .unwrap();
    // ...`fast` writes after it and commits first.
    sqlx::query(PAUSED)
        .bind("fast")
        .execute(&pool)
        .await
        .unwrap();
    support::assert_stays(
        "fast's event held back while slow is open",
        Duration::from_millis(500),
        || async { store.events_page(&after).await.unwrap().events.is_empty() },
    )
    .await;
    slow.commit().await.unwrap();
    let got = wait_for("both pauses", Duration::from_secs(10), || async {
        let got = store.events_page(&after).await.unwrap().events;
        (got.len() == 2).then_some(got)
    })
    .await;
    let jobs: Vec<_> = got.iter().map(|e| e.job_id.clone().unwrap()).collect();
    assert_eq!(jobs, ["slow", "fast"], "{got:#?}");
    assert!(got.iter().all(|e| e.event_type == "job.paused"));
}

/// `--no-events` (for measuring their cost): on PostgreSQL this process's
/// writes record none; the embedded store refuses it at start.
#[tokio::test]
async fn no_events_records_none_on_postgres_and_is_refused_on_sqlite() {
    if support::backend() == Backend::Sqlite {
        let db = TestDb::new();
        let config = support::serve_config(&db, &["--no-events"]);
        let builtins = BuiltinConfig::from_flags(false, &config.guards).unwrap();
        let refused = jobsd::app::start(
            config,
            HandlerRegistry::with_builtins(builtins),
            CancellationToken::new(),
        )
        .await
        .err()
        .expect("refused");
        assert!(refused.to_string().contains("--no-events"), "{refused:#}");
        return;
    }
    let app = TestApp::start_with(&["--no-events"]).await;
    let (status, body) = app.post("/api/v1/jobs", once_now("quiet")).await;
    assert_eq!(status, 201, "{body}");
    wait_for("the run", Duration::from_secs(15), || async {
        let (_, runs) = app.get("/api/v1/jobs/quiet/runs").await;
        (runs["runs"][0]["state"] == "succeeded").then_some(())
    })
    .await;
    // Another process's writes still record: the switch is per process.
    let other = Store::connect(&app.db.url, 2, Duration::from_secs(10))
        .await
        .unwrap();
    other.service_set_paused(true).await.unwrap();
    let got = wait_for(
        "the other session's event",
        Duration::from_secs(10),
        || async {
            let got = events(&app, "").await;
            (!got.is_empty()).then_some(got)
        },
    )
    .await;
    assert_eq!(types(&got), ["service.paused"], "{got:?}");
}
