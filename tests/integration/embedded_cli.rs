//! The embedded store from the command line, with the real binary: the
//! default `./jobsd.db`, the serve lock, `jobsd migrate` beside a serving
//! process, `jobsd backup`, bad URLs and files, and `jobsd copy` (SQLite to
//! PostgreSQL and back, and PostgreSQL to PostgreSQL).
//!
//! Each test names the stores it uses (an SQLite file in a directory of its
//! own, a fresh PostgreSQL database), whatever `JOBSD_TEST_BACKEND` says:
//! these are the tests of moving between the two, and of the embedded
//! store's own commands.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use jobsd::store::{JobFilter, JobRow, RunFilter, RunRow, Store};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::admin_url;

/// A directory of its own for one test, removed afterwards.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("jobsd-embedded-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `sqlite://` URL of a file in it.
    fn url(&self, name: &str) -> String {
        format!("sqlite://{}", self.join(name).display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh PostgreSQL database (created by whoever connects first), dropped
/// at the end of the test.
struct PgDb {
    name: String,
    url: String,
}

impl PgDb {
    fn new() -> PgDb {
        let name = format!("jobsd_test_{}", uuid::Uuid::new_v4().simple());
        let mut url = reqwest::Url::parse(&admin_url()).expect("JOBSD_TEST_DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        PgDb {
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A thread with its own runtime: drop runs inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url()).await
                {
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

/// `jobsd` run in `dir`, with no `DATABASE_URL` from the environment.
fn jobsd(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobsd"));
    cmd.current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("JOBSD_SQLITE_SYNCHRONOUS")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs a short command to its end (within 60 s).
async fn run(dir: &Path, args: &[&str]) -> Output {
    tokio::time::timeout(Duration::from_secs(60), jobsd(dir).args(args).output())
        .await
        .unwrap_or_else(|_| panic!("jobsd {args:?} ends in time"))
        .unwrap()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failed command: exit 1, one line on stderr mentioning each of
/// `needles`, no panic.
#[track_caller]
fn assert_one_line_failure(out: &Output, needles: &[&str]) {
    let stderr = stderr_of(out);
    assert_eq!(out.status.code(), Some(1), "exit 1: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("jobsd: "), "{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} in: {stderr}");
    }
}

/// A `jobsd serve` child, with the log lines it wrote up to listening.
struct Served {
    child: Child,
    base: String,
    startup_log: Vec<String>,
}

impl Served {
    /// Starts `jobsd serve` in `dir` with `args` (a free port and no default
    /// jobs unless given) and waits until it listens.
    async fn start(dir: &Path, args: &[&str]) -> Served {
        let mut cmd = jobsd(dir);
        cmd.arg("serve");
        if !args.contains(&"--bind") {
            cmd.args(["--bind", "127.0.0.1:0"]);
        }
        if !args.contains(&"--default-jobs-dir") {
            cmd.args(["--default-jobs-dir", "/nonexistent-jobsd-test-dir"]);
        }
        let mut child = cmd
            .args(["--poll-interval", "1s", "--shutdown-grace", "2s"])
            .args(args)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut startup_log = Vec::new();
        let address = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let address = line
                    .split("address=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_string);
                startup_log.push(line);
                if address.is_some() {
                    return address;
                }
            }
            None
        })
        .await
        .expect("jobsd listens in time")
        .unwrap_or_else(|| panic!("jobsd logs its address: {startup_log:#?}"));
        // Keep draining its log so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Served {
            child,
            base: format!("http://{address}/api/v1"),
            startup_log,
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running");
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(mut self) {
        self.signal("TERM");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("stops in time")
            .unwrap();
        assert!(status.success(), "exit status {status}");
    }

    /// SIGKILL, then waits for the process to be gone.
    async fn kill(mut self) {
        self.signal("KILL");
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = reqwest::Client::new();
        let mut req = client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

/// Creates a job of every kind through the API, lets the due ones run, and
/// returns their ids: an interval job with a manual run besides, a paused
/// one, a one-shot job in the future, one due at once (which runs), and one
/// whose run is still running (handed back to the queue when the service
/// stops).
async fn seed_jobs(app: &Served) -> Vec<&'static str> {
    let specs = [
        json!({"job_id": "every", "handler": "log", "kwargs": {"message": "every"},
               "periodically": "1h", "tags": ["a", "b"], "description": "hourly", "keep_runs": 4}),
        json!({"job_id": "paused", "handler": "log", "kwargs": {"message": "paused"},
               "cron": "30 2 * * *", "timezone": "Europe/Berlin", "state": "paused"}),
        json!({"job_id": "later", "handler": "log", "kwargs": {"message": "later"},
               "when": "2030-01-01T00:00:00Z", "max_retries": 2}),
        json!({"job_id": "now", "handler": "log", "kwargs": {"message": "now"}}),
        json!({"job_id": "sleeper", "handler": "sleep", "kwargs": {"seconds": 600}}),
    ];
    for spec in specs {
        let (status, body) = app.post("/jobs", spec).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = app.post("/jobs/every/run", json!({})).await;
    assert!(
        status == 201 || status == 202 || status == 200,
        "{status} {body}"
    );
    for (job, state) in [
        ("now", "succeeded"),
        ("every", "succeeded"),
        ("sleeper", "running"),
    ] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = app.get(&format!("/jobs/{job}/runs")).await;
            if body["runs"][0]["state"] == state {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the run of {job} is {state}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    vec!["every", "later", "now", "paused", "sleeper"]
}

async fn open(url: &str) -> Store {
    let store = Store::connect(url, 2, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store.migrate().await.unwrap();
    store
}

async fn jobs_of(store: &Store) -> Vec<JobRow> {
    let (jobs, _) = store
        .job_list(&JobFilter {
            limit: 1000,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    jobs
}

async fn runs_of(store: &Store) -> Vec<RunRow> {
    let (runs, _) = store
        .run_list(&RunFilter {
            limit: 1000,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    runs
}

fn ids(jobs: &[JobRow]) -> BTreeSet<String> {
    jobs.iter().map(|j| j.job_id.clone()).collect()
}

/// The copied jobs are the source's, field by field (the row version and
/// the newest run's summary aside).
fn assert_same_jobs(source: &[JobRow], target: &[JobRow]) {
    assert_eq!(ids(source), ids(target));
    for s in source {
        let t = target.iter().find(|t| t.job_id == s.job_id).unwrap();
        let view = |j: &JobRow| {
            format!(
                "{} {} {} {:?} {:?} {:?} {} {} {:?} {} {} {:?} {:?} {} {} {} {:?} {:?} {:?} {} {:?} {:?} {} {}",
                j.job_id,
                j.handler,
                j.kwargs,
                j.schedule_kind,
                j.interval_ms,
                j.cron,
                j.timezone,
                j.start_at,
                j.misfire_grace_ms,
                j.coalesce,
                j.max_instances,
                j.lock_key,
                j.timeout_ms,
                j.max_retries,
                j.retry_backoff_ms,
                j.state,
                j.next_run_at,
                j.description,
                j.tags,
                j.source,
                j.failed_run_id,
                j.keep_runs,
                j.created_at,
                j.updated_at,
            )
        };
        assert_eq!(view(s), view(t), "job {}", s.job_id);
        if s.job_id == "every" {
            assert_eq!(t.keep_runs, Some(4), "keep_runs is copied");
        }
    }
    let order = |jobs: &[JobRow]| jobs.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>();
    assert_eq!(order(source), order(target), "listing order");
}

fn run_ids(runs: &[RunRow]) -> BTreeSet<String> {
    runs.iter().map(|r| r.run_id.to_string()).collect()
}

fn assert_same_runs(source: &[RunRow], target: &[RunRow]) {
    assert_eq!(run_ids(source), run_ids(target));
    for s in source {
        let t = target.iter().find(|t| t.run_id == s.run_id).unwrap();
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            serde_json::to_value(t).unwrap()
        );
    }
}

#[tokio::test]
async fn with_no_database_url_serves_the_file_jobsd_db_and_says_so_once() {
    let dir = TempDir::new();
    let app = Served::start(dir.path(), &[]).await;
    assert!(dir.join("jobsd.db").is_file(), "./jobsd.db is created");
    let said: Vec<&String> = app
        .startup_log
        .iter()
        .filter(|l| l.contains("embedded store"))
        .collect();
    assert_eq!(said.len(), 1, "one line: {:#?}", app.startup_log);
    let line = said[0];
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("single replica"), "{line}");
    assert!(line.contains("./jobsd.db"), "{line}");
    assert!(line.contains("--database-url postgres://"), "{line}");
    assert!(line.contains("DATABASE_URL"), "{line}");
    let (status, _) = app.get("/readiness").await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_second_serve_on_the_file_refuses_while_migrate_works() {
    let dir = TempDir::new();
    let first = Served::start(dir.path(), &[]).await;

    let out = run(dir.path(), &["serve", "--bind", "127.0.0.1:0"]).await;
    assert_one_line_failure(
        &out,
        &["already serving ./jobsd.db", "one replica", "PostgreSQL"],
    );
    // The same with the file named, and for the default command.
    let url = dir.url("jobsd.db");
    let out = run(
        dir.path(),
        &["--database-url", &url, "--bind", "127.0.0.1:0"],
    )
    .await;
    assert_one_line_failure(&out, &["already serving"]);

    // Short commands open the file while it is served.
    let out = run(dir.path(), &["migrate"]).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("migrations applied"));
    let (status, _) = first.get("/readiness").await;
    assert_eq!(status, 200);

    // The lock goes with the process, however it ends.
    first.kill().await;
    let second = Served::start(dir.path(), &[]).await;
    second.stop().await;
    let third = Served::start(dir.path(), &["--sqlite-synchronous", "full"]).await;
    third.stop().await;
}

#[tokio::test]
async fn bad_urls_and_files_are_one_line_and_exit_1() {
    let dir = TempDir::new();
    let serve = |url: String| {
        let dir = dir.path().to_path_buf();
        async move {
            run(
                &dir,
                &["serve", "--database-url", &url, "--bind", "127.0.0.1:0"],
            )
            .await
        }
    };
    let out = serve("mysql://localhost/jobsd".into()).await;
    assert_one_line_failure(
        &out,
        &[
            "unknown database URL scheme",
            "postgres://, postgresql:// or sqlite://",
        ],
    );

    // A directory that cannot be written (even by root).
    let out = serve("sqlite:///proc/self/jobsd.db".into()).await;
    assert_one_line_failure(&out, &["cannot create or write /proc/self/jobsd.db"]);
    let out = serve(dir.url("missing/jobsd.db")).await;
    assert_one_line_failure(&out, &["does not exist"]);

    // A file that is not a database, and a database of something else.
    std::fs::write(
        dir.join("notes.txt"),
        "not a database, but long enough to look at\n".repeat(50),
    )
    .unwrap();
    let out = serve(dir.url("notes.txt")).await;
    assert_one_line_failure(&out, &["not an SQLite database"]);
    let out = run(
        dir.path(),
        &["migrate", "--database-url", &dir.url("notes.txt")],
    )
    .await;
    assert_one_line_failure(&out, &["not an SQLite database"]);
    {
        let other = dir.join("other.db");
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&other)
            .create_if_missing(true);
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&opts)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let out = serve(dir.url("other.db")).await;
    assert_one_line_failure(&out, &["something else"]);
}

#[tokio::test]
async fn backup_of_a_served_store_is_a_store_with_the_same_jobs() {
    let dir = TempDir::new();
    let app = Served::start(dir.path(), &[]).await;
    let created = seed_jobs(&app).await;

    let out = run(dir.path(), &["backup", "copy.db"]).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(dir.join("copy.db").is_file());
    // Never over a file.
    let out = run(dir.path(), &["backup", "copy.db"]).await;
    assert_one_line_failure(&out, &["copy.db exists already"]);

    // The backup is a store of its own, with the same jobs and runs (the
    // sleeper's run as it was then: running).
    let source = open(&dir.url("jobsd.db")).await;
    let backup = open(&dir.url("copy.db")).await;
    let jobs = jobs_of(&backup).await;
    assert_eq!(
        ids(&jobs),
        created
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
    assert_same_jobs(&jobs_of(&source).await, &jobs);
    let runs = runs_of(&backup).await;
    assert_eq!(run_ids(&runs_of(&source).await), run_ids(&runs));
    assert!(runs
        .iter()
        .any(|r| r.job_id == "sleeper" && r.state.as_str() == "running"));
    drop((source, backup));
    app.stop().await;
    let served = Served::start(dir.path(), &["--database-url", &dir.url("copy.db")]).await;
    let (status, body) = served.get("/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(body["jobs_count"], created.len());
    served.stop().await;
}

#[tokio::test]
async fn backup_refuses_what_it_cannot_copy() {
    let dir = TempDir::new();
    let out = run(
        dir.path(),
        &[
            "backup",
            "x.db",
            "--database-url",
            "postgres://postgres@127.0.0.1:5432/jobsd",
        ],
    )
    .await;
    assert_one_line_failure(&out, &["PostgreSQL", "pg_dump"]);
    let out = run(dir.path(), &["backup", "x.db"]).await;
    assert_one_line_failure(&out, &["no embedded store at ./jobsd.db"]);
    assert!(!dir.join("jobsd.db").exists(), "backup creates no store");
    let out = run(dir.path(), &["migrate"]).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = run(dir.path(), &["backup", "missing/x.db"]).await;
    assert_one_line_failure(&out, &["missing does not exist"]);
    let out = run(
        dir.path(),
        &["backup", "x.db", "--database-url", "mysql://x"],
    )
    .await;
    assert_one_line_failure(&out, &["unknown database URL scheme"]);
}

/// Copies `from` into `to` and returns the command's output.
async fn copy(dir: &Path, from: &str, to: &str, history: bool) -> Output {
    let mut args = vec!["copy", "--from", from, "--to", to];
    if history {
        args.push("--with-history");
    }
    run(dir, &args).await
}

/// Checks a copy without history: every job, the runs still to do, and the
/// scheduled run of each one-shot job that has fired (no manual run).
async fn assert_copied_without_history(source: &Store, target: &Store) {
    assert_same_jobs(&jobs_of(source).await, &jobs_of(target).await);
    let expected: Vec<RunRow> = runs_of(source)
        .await
        .into_iter()
        .filter(|r| r.state.is_active() || (r.job_id == "now" && r.trigger.as_str() != "manual"))
        .collect();
    assert!(
        expected.iter().any(|r| r.job_id == "now"),
        "the one-shot job's run is among those copied"
    );
    assert!(
        expected
            .iter()
            .any(|r| r.job_id == "sleeper" && r.state.as_str() == "queued"),
        "the run handed back is among those copied: {expected:#?}"
    );
    assert!(!expected.iter().any(|r| r.trigger.as_str() == "manual"));
    assert_same_runs(&expected, &runs_of(target).await);
    let now = target.job_get("now").await.unwrap();
    assert!(now.has_fired, "the fired one-shot job stays fired");
}

#[tokio::test]
async fn copy_from_sqlite_to_postgres_moves_jobs_and_history() {
    let dir = TempDir::new();
    let app = Served::start(dir.path(), &[]).await;
    seed_jobs(&app).await;
    let from = dir.url("jobsd.db");
    let plain = PgDb::new();
    let full = PgDb::new();

    // Not from a store being served.
    let out = copy(dir.path(), &from, &plain.url, false).await;
    assert_one_line_failure(&out, &["is being served", "stop it first"]);
    app.stop().await;

    let out = copy(dir.path(), &from, &plain.url, false).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("copied 5 jobs"),
        "{}",
        stderr_of(&out)
    );
    let source = open(&from).await;
    let target = open(&plain.url).await;
    assert_copied_without_history(&source, &target).await;

    let out = copy(dir.path(), &from, &full.url, true).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let target_full = open(&full.url).await;
    assert_same_jobs(&jobs_of(&source).await, &jobs_of(&target_full).await);
    assert_same_runs(&runs_of(&source).await, &runs_of(&target_full).await);

    // Again into the same target: every id is taken, nothing is copied.
    let before = runs_of(&target).await.len();
    let out = copy(dir.path(), &from, &plain.url, true).await;
    assert_one_line_failure(
        &out,
        &[
            "already has 5 of the jobs",
            "\"every\"",
            "nothing was copied",
        ],
    );
    assert_eq!(runs_of(&target).await.len(), before);
}

/// The same command between two PostgreSQL databases (and, as both sides
/// are PostgreSQL, it needs nothing of the embedded store).
#[tokio::test]
async fn copy_between_postgres_databases() {
    let dir = TempDir::new();
    let source_db = PgDb::new();
    let app = Served::start(dir.path(), &["--database-url", &source_db.url]).await;
    seed_jobs(&app).await;
    app.stop().await;
    let plain = PgDb::new();
    let full = PgDb::new();

    let out = copy(dir.path(), &source_db.url, &plain.url, false).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let source = open(&source_db.url).await;
    let target = open(&plain.url).await;
    assert_copied_without_history(&source, &target).await;

    let out = copy(dir.path(), &source_db.url, &full.url, true).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("copied 5 jobs"),
        "{}",
        stderr_of(&out)
    );
    let target_full = open(&full.url).await;
    assert_same_jobs(&jobs_of(&source).await, &jobs_of(&target_full).await);
    assert_same_runs(&runs_of(&source).await, &runs_of(&target_full).await);

    // A target holding one of the ids gets nothing.
    let clash = PgDb::new();
    let store = open(&clash.url).await;
    let mut job = target.job_get("later").await.unwrap().definition();
    job.job_id = "paused".into();
    store.job_insert(&job, "test").await.unwrap();
    let out = copy(dir.path(), &source_db.url, &clash.url, true).await;
    assert_one_line_failure(
        &out,
        &[
            "already has 1 of the jobs to copy (\"paused\")",
            "nothing was copied",
        ],
    );
    assert_eq!(jobs_of(&store).await.len(), 1);

    let out = copy(dir.path(), &source_db.url, &source_db.url, false).await;
    assert_one_line_failure(&out, &["the same store"]);
}

/// And back: PostgreSQL into a new embedded store, with the history.
#[tokio::test]
async fn copy_from_postgres_to_sqlite_keeps_everything() {
    let dir = TempDir::new();
    let source_db = PgDb::new();
    let app = Served::start(dir.path(), &["--database-url", &source_db.url]).await;
    seed_jobs(&app).await;
    app.stop().await;

    let to = dir.url("moved.db");
    let out = copy(dir.path(), &source_db.url, &to, true).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let source = open(&source_db.url).await;
    let target = open(&to).await;
    assert_same_jobs(&jobs_of(&source).await, &jobs_of(&target).await);
    assert_same_runs(&runs_of(&source).await, &runs_of(&target).await);
    drop(target);

    // The copy serves, and the run handed back on the source runs there.
    let served = Served::start(dir.path(), &["--database-url", &to]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = served.get("/jobs/sleeper/runs").await;
        if body["runs"][0]["state"] == "running" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    served.stop().await;
}
