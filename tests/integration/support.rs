//! Test support: a fresh database per test (PostgreSQL, or an embedded
//! SQLite file, as `JOBSD_TEST_BACKEND` says), and a real jobsd
//! (in-process, or as a real child process) serving on a free port.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use jobsd::config::ServeConfig;
use jobsd::handlers::{BuiltinConfig, HandlerRegistry};
use jobsd::store::{Backend, Store};
use serde_json::Value;
use sqlx::{ConnectOptions, Connection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The backend the tests that start jobsd run on: `JOBSD_TEST_BACKEND` is
/// `postgres` (the default) or `sqlite`. The conformance suite ignores it
/// and runs every test on both.
pub fn backend() -> Backend {
    match std::env::var("JOBSD_TEST_BACKEND") {
        Err(std::env::VarError::NotPresent) => Backend::Postgres,
        Ok(name) => match name.as_str() {
            "" | "postgres" => Backend::Postgres,
            "sqlite" => Backend::Sqlite,
            other => panic!("JOBSD_TEST_BACKEND={other:?}: use postgres or sqlite"),
        },
        Err(e) => panic!("JOBSD_TEST_BACKEND: {e}"),
    }
}

/// Server URL of the PostgreSQL the tests use (any database on it).
pub fn admin_url() -> String {
    std::env::var("JOBSD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

fn url_for(database: &str) -> String {
    let admin = admin_url();
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b.to_string(), format!("?{q}")),
        None => (admin.clone(), String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{database}{query}", &base[..host_end])
}

/// A database that exists for one test and is removed after it: a
/// PostgreSQL database (dropped), or an SQLite file in a directory of its
/// own (removed, with its `-wal`, `-shm` and `.lock` files).
pub struct TestDb {
    /// The PostgreSQL database's name, or the SQLite file's directory name.
    /// Empty once handed on to a restarted app ([`TestDb::take`]).
    pub name: String,
    pub url: String,
    /// The SQLite file's directory; `None` on PostgreSQL.
    dir: Option<PathBuf>,
}

impl TestDb {
    /// A name only; jobsd itself creates the database on start.
    pub fn unique_name() -> String {
        format!("jobsd_test_{}", uuid::Uuid::new_v4().simple())
    }

    /// A fresh database on the backend [`backend`] selects.
    pub fn new() -> TestDb {
        Self::on(backend())
    }

    /// A fresh database on `backend`. On PostgreSQL only a name is reserved:
    /// whoever connects first creates the database (jobsd does on start).
    /// On SQLite the directory is made; jobsd creates the file in it.
    pub fn on(backend: Backend) -> TestDb {
        match backend {
            Backend::Postgres => {
                let name = Self::unique_name();
                TestDb {
                    url: url_for(&name),
                    name,
                    dir: None,
                }
            }
            Backend::Sqlite => {
                let name = format!("jobsd-test-{}", uuid::Uuid::new_v4());
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
                TestDb {
                    url: format!("sqlite://{}", dir.join("jobsd.db").display()),
                    name,
                    dir: Some(dir),
                }
            }
        }
    }

    /// A fresh PostgreSQL database, whatever `JOBSD_TEST_BACKEND` says: for
    /// the tests that exist for PostgreSQL only.
    pub fn postgres() -> TestDb {
        Self::on(Backend::Postgres)
    }

    /// Hands the database on (to an app restarted on it): the returned
    /// value removes it when dropped, this one no longer does.
    pub fn take(&mut self) -> TestDb {
        let taken = TestDb {
            name: self.name.clone(),
            url: self.url.clone(),
            dir: self.dir.clone(),
        };
        self.name.clear();
        taken
    }

    /// Whether the database exists yet (jobsd creates it on start).
    pub async fn exists(&self) -> bool {
        match &self.dir {
            Some(dir) => dir.join("jobsd.db").is_file(),
            None => {
                let mut conn = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&self.name)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return; // moved on to a restarted app
        }
        if let Some(dir) = &self.dir {
            // The file, its -wal and -shm files and the serving lock.
            let _ = std::fs::remove_dir_all(dir);
            return;
        }
        let name = self.name.clone();
        // Drop runs inside a runtime; a plain thread with its own runtime avoids blocking it.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

/// Runs one statement on `store`'s database, as written for its backend,
/// on a connection of its own, and returns how many rows it changed: for
/// setting up what no API does (a lease taken over, a heartbeat an hour
/// old). Values are written into the SQL; on SQLite, times are INTEGER
/// microseconds since the epoch ([`micros`]) and UUIDs hyphenated TEXT
/// (`migrations/sqlite/0001_init.sql`).
pub async fn execute_sql(store: &Store, postgres: &str, sqlite: &str) -> u64 {
    match store {
        Store::Postgres(pg) => sqlx::query(postgres)
            .execute(pg.pool())
            .await
            .unwrap_or_else(|e| panic!("{postgres}: {e}"))
            .rows_affected(),
        Store::Sqlite(lite) => {
            let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(lite.path())
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10))
                .connect()
                .await
                .unwrap_or_else(|e| panic!("opening {}: {e}", lite.path().display()));
            let done = sqlx::query(sqlite)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sqlite}: {e}"));
            let _ = conn.close().await;
            done.rows_affected()
        }
    }
}

/// A time as the embedded store keeps it: microseconds since the epoch.
pub fn micros(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_micros()
}

/// Hands the running run `run_id` to `instance` with a lease of an hour,
/// as a replica's rescue and claim would.
pub async fn take_over_run(store: &Store, run_id: &str, instance: &str) {
    let lease = chrono::Utc::now() + chrono::Duration::hours(1);
    let changed = execute_sql(
        store,
        &format!(
            "UPDATE runs SET instance = '{instance}', lease_expires_at = now() + interval '1 hour' \
             WHERE run_id = '{run_id}'::uuid AND state = 'running'"
        ),
        &format!(
            "UPDATE runs SET instance = '{instance}', lease_expires_at = {} \
             WHERE run_id = '{run_id}' AND state = 'running'",
            micros(lease)
        ),
    )
    .await;
    assert_eq!(changed, 1, "run {run_id} is running");
}

/// Makes the last heartbeat of instance `name` `ago` old.
pub async fn age_heartbeat(store: &Store, name: &str, ago: Duration) {
    let ms = ago.as_millis();
    let at = chrono::Utc::now() - chrono::Duration::milliseconds(ms as i64);
    let changed = execute_sql(
        store,
        &format!(
            "UPDATE instances SET heartbeat_at = now() - {ms} * interval '1 millisecond' \
             WHERE name = '{name}'"
        ),
        &format!(
            "UPDATE instances SET heartbeat_at = {} WHERE name = '{name}'",
            micros(at)
        ),
    )
    .await;
    assert_eq!(changed, 1, "instance {name} is registered");
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    serve: ServeConfig,
}

/// A ServeConfig as the CLI would build it from these flags. Without a
/// `--default-jobs-dir` in `extra`, no default jobs are loaded (clap refuses
/// a flag given twice, so the default is added only when `extra` has none).
pub fn serve_config(db: &TestDb, extra: &[&str]) -> ServeConfig {
    let mut args = vec![
        "jobsd".to_string(),
        "--database-url".to_string(),
        db.url.clone(),
    ];
    // Test defaults, each unless the test passes that flag itself.
    let defaults = [
        ("--bind", "127.0.0.1:0"),
        ("--db-max-connections", "4"),
        ("--poll-interval", "1s"),
        ("--lease", "5s"),
        ("--cancel-grace", "1s"),
        ("--shutdown-grace", "5s"),
        ("--default-jobs-dir", "/nonexistent-jobsd-test-dir"),
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.push(flag.to_string());
            args.push(value.to_string());
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Flags::parse_from(args).serve
}

/// A jobsd served in-process against its own database.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Store,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Held so the database lives as long as the app (dropped last).
    #[allow(dead_code)]
    pub db: TestDb,
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> TestApp {
        let db = TestDb::new();
        Self::start_on(db, extra).await
    }

    pub async fn start_on(db: TestDb, extra: &[&str]) -> TestApp {
        Self::start_custom(db, extra, |_| {}).await
    }

    /// Starts with the built-ins plus whatever `register` adds.
    pub async fn start_custom(
        db: TestDb,
        extra: &[&str],
        register: impl FnOnce(&mut HandlerRegistry),
    ) -> TestApp {
        let config = serve_config(&db, extra);
        let builtins = BuiltinConfig::from_flags(config.enable_command_handler, &config.guards)
            .expect("the guard flags are valid");
        let mut registry = HandlerRegistry::with_builtins(builtins);
        register(&mut registry);
        let shutdown = CancellationToken::new();
        let running = jobsd::app::start(config, registry, shutdown.clone())
            .await
            .expect("jobsd starts");
        let address = running.address;
        let store = running.store.clone();
        let task = tokio::spawn(running.wait());
        TestApp {
            base: format!("http://{address}"),
            client: reqwest::Client::new(),
            store,
            shutdown,
            task: Some(task),
            db,
        }
    }

    /// Begins shutdown as SIGTERM does, without waiting for it to end
    /// (the workers drain meanwhile; [`TestApp::stop`] waits).
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Stops the service like SIGTERM would, waits until it has stopped, and
    /// hands back its database (to start again on it).
    pub async fn stop(mut self) -> TestDb {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(30), task).await;
            assert!(
                matches!(stopped, Ok(Ok(Ok(())))),
                "jobsd stops cleanly: {stopped:?}"
            );
        }
        self.db.take()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request and returns the status and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body read");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, None).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// Runs `job_id` once by hand and waits until the run ends in
    /// `state`; returns the run.
    pub async fn run_by_hand(&self, job_id: &str, state: &str) -> Value {
        let (status, body) = self
            .post(&format!("/api/v1/jobs/{job_id}/run"), serde_json::json!({}))
            .await;
        assert_eq!(status, 201, "{body}");
        let run_id = body["run"]["run_id"].as_str().unwrap().to_string();
        wait_for(
            &format!("run {run_id} {state}"),
            Duration::from_secs(20),
            || async {
                let (_, body) = self.get(&format!("/api/v1/runs/{run_id}")).await;
                (body["run"]["state"] == state).then(|| body["run"].clone())
            },
        )
        .await
    }

    /// `GET /metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One real `jobsd serve` child process.
/// The log of a `jobsd serve` child, line by line.
pub type ChildLog = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// The address a `jobsd serve` log line says it listens at, if it says so
/// (`address=…` in text, the `address` field in JSON).
pub fn address_in(line: &str) -> Option<String> {
    if let Ok(json) = serde_json::from_str::<Value>(line) {
        return json["fields"]["address"].as_str().map(str::to_string);
    }
    let rest = line.split("address=").nth(1)?;
    rest.split_whitespace().next().map(str::to_string)
}

/// Reads `log` until the child says where it listens (`address=`), within
/// 30 s; `name` names the child in the panic otherwise.
pub async fn listening_address(log: &mut ChildLog, name: &str) -> String {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = log.next_line().await {
            if let Some(address) = address_in(&line) {
                return Some(address);
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("{name} listens in time"))
    .unwrap_or_else(|| panic!("{name} logs its address"))
}

pub struct Replica {
    pub name: String,
    pub base: String,
    child: Child,
    client: reqwest::Client,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// The most recent log lines a [`Replica`] keeps.
const REPLICA_LOG_LINES: usize = 10_000;

impl Replica {
    /// Starts `jobsd serve` on `db` as instance `name` and waits until it
    /// listens. Test defaults (a 2 s lease, 1 s polls, a 500 ms cancel
    /// grace, 6 connections, no default jobs) apply unless `extra` gives
    /// that flag itself (clap refuses a flag given twice).
    pub async fn spawn(db: &TestDb, name: &str, extra: &[&str]) -> Replica {
        let defaults = [
            ("--default-jobs-dir", "/nonexistent"),
            ("--lease", "2s"),
            ("--poll-interval", "1s"),
            ("--cancel-grace", "500ms"),
            ("--db-max-connections", "6"),
        ];
        let mut args: Vec<&str> = Vec::new();
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_jobsd"))
            .args([
                "--database-url",
                &db.url,
                "--bind",
                "127.0.0.1:0",
                "--instance",
                name,
            ])
            .args(args)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("jobsd starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let address = listening_address(&mut lines, name).await;
        // Keep draining its log so the pipe never fills, keeping the last lines.
        let log: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = kept.lock().unwrap();
                if kept.len() == REPLICA_LOG_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        Replica {
            name: name.to_string(),
            base: format!("http://{address}"),
            child,
            client: reqwest::Client::new(),
            log,
        }
    }

    /// Its log lines since it listened (the last 10,000).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().iter().cloned().collect()
    }

    /// Sends a request; status 0 when it could not be sent.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, serde_json::json!({"error": e.to_string()})),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, None).await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// Sends `signal` (e.g. `TERM`, `KILL`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running");
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} exits in time", self.name))
            .unwrap()
    }
}

/// Polls `check` every 20 ms until it returns Some, or panics after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts an error response: the status, and that `error` mentions `needle`.
#[track_caller]
pub fn assert_error(response: &(u16, Value), status: u16, needle: &str) {
    let (got, body) = response;
    assert_eq!(*got, status, "status; body: {body}");
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field in {body}"));
    assert!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "error {message:?} should mention {needle:?}"
    );
}

/// Checks `check` every 50 ms for `window`, failing at once if it ever
/// returns false: for asserting that something does NOT happen.
pub async fn assert_stays<F, Fut>(what: &str, window: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < window {
        assert!(check().await, "expected {what} to hold for {window:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A failure record (an inert `ErrorHandler` job) as jobsd writes them, to
/// store directly in tests.
pub fn failure_record(job_id: &str, kwargs: serde_json::Value) -> jobsd::store::NewJob {
    jobsd::store::NewJob {
        job_id: job_id.into(),
        handler: "ErrorHandler".into(),
        kwargs,
        schedule_kind: jobsd::domain::ScheduleKind::Never,
        interval_ms: None,
        cron: None,
        timezone: "UTC".into(),
        start_at: chrono::Utc::now(),
        misfire_grace_ms: None,
        coalesce: true,
        max_instances: 1,
        lock_key: None,
        timeout_ms: None,
        max_retries: 0,
        retry_backoff_ms: 1000,
        state: jobsd::domain::JobState::Paused,
        next_run_at: None,
        description: None,
        tags: vec![],
        source: "api".into(),
        failed_run_id: None,
        keep_runs: None,
        notify: vec![],
        alerts: Default::default(),
    }
}
