//! Default jobs from YAML files (SPEC §8): the start-up upsert and its rules
//! across restarts, bad files (log, `jobsd validate`), live reload, removed
//! files, replicas loading at once, and the repo's own `default_jobs/`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobsd::default_jobs::{Loader, ScanReport};
use jobsd::domain::JobState;
use jobsd::handlers::{BuiltinConfig, HandlerRegistry};
use jobsd::store::notify::{self, FireHint};
use jobsd::store::{FileUpsert, Store};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{serve_config, wait_for, TestApp, TestDb};

/// A directory of default-job files of one test, removed afterwards.
struct JobsDir {
    path: PathBuf,
}

impl JobsDir {
    fn new() -> JobsDir {
        let dir = Self::unborn();
        std::fs::create_dir_all(&dir.path).unwrap();
        dir
    }

    /// A unique path with no directory there (yet).
    fn unborn() -> JobsDir {
        let name = format!("jobsd-default-jobs-{}", uuid::Uuid::new_v4().simple());
        JobsDir {
            path: std::env::temp_dir().join(name),
        }
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("temp paths are UTF-8")
    }

    /// Writes a file whole (write then rename, as deployment tools do), so
    /// a watcher never sees it half-written.
    fn write(&self, name: &str, text: &str) {
        let tmp = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path.join(name)).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.path.join(name)).unwrap();
    }

    /// The `source` a job from this file records: its absolute path.
    fn source(&self, name: &str) -> String {
        std::fs::canonicalize(&self.path)
            .unwrap()
            .join(name)
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for JobsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn registry(command_enabled: bool) -> Arc<HandlerRegistry> {
    Arc::new(HandlerRegistry::with_builtins(BuiltinConfig {
        command_enabled,
        ..BuiltinConfig::default()
    }))
}

async fn start(dir: &JobsDir) -> TestApp {
    TestApp::start_with(&["--default-jobs-dir", dir.arg()]).await
}

/// Stops `app` and starts a new service on its database, as a restart does.
async fn restart(app: TestApp, dir: &JobsDir) -> TestApp {
    let db = app.stop().await;
    TestApp::start_on(db, &["--default-jobs-dir", dir.arg()]).await
}

/// One scan of `dir` by a fresh loader (a replica starting up).
async fn scan(store: &Store, dir: &JobsDir) -> ScanReport {
    Loader::new(store.clone(), registry(false), &dir.path)
        .scan()
        .await
}

async fn job(app: &TestApp, job_id: &str) -> Value {
    let (status, body) = app.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(status, 200, "GET {job_id}: {body}");
    body["job"].clone()
}

async fn job_exists(app: &TestApp, job_id: &str) -> bool {
    app.get(&format!("/api/v1/jobs/{job_id}")).await.0 == 200
}

async fn job_count(app: &TestApp) -> i64 {
    let (_, body) = app.get("/api/v1/jobs").await;
    body["jobs_count"].as_i64().expect("jobs_count")
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad time {v}: {e}"))
}

#[tokio::test]
async fn start_up_loads_each_file_once_and_records_its_source() {
    let dir = JobsDir::new();
    dir.write(
        "report.yaml",
        "job_id: report\nhandler: http\nkwargs:\n  url: http://127.0.0.1:9/report\n  method: POST\n\
         cron: '30 2 * * *'\ntimezone: Europe/Berlin\nmax_retries: 3\ndescription: nightly\ntags: [a, b]\n",
    );
    dir.write(
        "heartbeat.yml",
        "job_id: heartbeat\nhandler: log\nperiodically: 1 hour\nmessage: alive\n",
    );
    // Not default-job files: another extension, a hidden name, a subdirectory.
    dir.write("notes.txt", "job_id: notes\nhandler: log\nmessage: x\n");
    std::fs::write(dir.path.join(".hidden.yaml"), "job_id: [broken").unwrap();
    std::fs::create_dir(dir.path.join("sub")).unwrap();
    std::fs::write(
        dir.path.join("sub/nested.yaml"),
        "job_id: nested\nhandler: log\nmessage: x\n",
    )
    .unwrap();

    let app = start(&dir).await;
    assert_eq!(job_count(&app).await, 2);
    let report = job(&app, "report").await;
    assert_eq!(report["handler"], "http");
    assert_eq!(
        report["kwargs"],
        json!({"url": "http://127.0.0.1:9/report", "method": "POST"})
    );
    assert_eq!(report["cron"], "30 2 * * *");
    assert_eq!(report["timezone"], "Europe/Berlin");
    assert_eq!(report["max_retries"], 3);
    assert_eq!(report["description"], "nightly");
    assert_eq!(report["tags"], json!(["a", "b"]));
    assert_eq!(report["state"], "running");
    assert!(report["next_run_at"].is_string());
    assert_eq!(report["source"], dir.source("report.yaml"));
    let heartbeat = job(&app, "heartbeat").await;
    assert_eq!(heartbeat["kwargs"], json!({"message": "alive"}));
    assert_eq!(heartbeat["periodically"], "1:00:00");
    assert_eq!(heartbeat["source"], dir.source("heartbeat.yml"));

    // Restarts (and a second replica's load) never duplicate.
    let app = restart(app, &dir).await;
    let again = scan(&app.store, &dir).await;
    assert!(
        again.problems.is_empty() && again.errors.is_empty(),
        "{again:?}"
    );
    assert_eq!(job_count(&app).await, 2);
    assert_eq!(
        job(&app, "report").await["created_at"],
        report["created_at"]
    );
}

/// The original service's format: handler kwargs at the top level.
#[tokio::test]
async fn the_original_format_with_top_level_kwargs_loads() {
    let dir = JobsDir::new();
    dir.write(
        "legacy.yaml",
        "handler: log\njob_id: legacy\nperiodically: 1 day\nmisfire_grace_time: 365 days\n\
         state: paused\nmessage: from the old service\nlevel: warn\n",
    );
    let app = start(&dir).await;
    let legacy = job(&app, "legacy").await;
    assert_eq!(legacy["handler"], "log");
    assert_eq!(legacy["periodically"], "1 day, 0:00:00");
    assert_eq!(legacy["misfire_grace_time"], "365 days, 0:00:00");
    assert_eq!(legacy["state"], "paused");
    assert_eq!(legacy["next_run_at"], Value::Null);
    assert_eq!(
        legacy["kwargs"],
        json!({"message": "from the old service", "level": "warn"})
    );
}

#[tokio::test]
async fn a_restart_keeps_next_run_at_and_writes_nothing() {
    let dir = JobsDir::new();
    dir.write(
        "every.yaml",
        "job_id: every\nhandler: log\nperiodically: 1 hour\nmessage: x\n",
    );
    dir.write(
        "phased.yaml",
        "job_id: phased\nhandler: log\nperiodically: 10m\nwhen: 2020-01-01 00:03\nmessage: x\n",
    );
    dir.write(
        "nightly.yaml",
        "job_id: nightly\nhandler: log\ncron: 0 3 * * *\ntimezone: America/New_York\nmessage: x\n",
    );
    dir.write(
        "once.yaml",
        "job_id: once\nhandler: log\nwhen: 2099-01-01 12:00\nmessage: x\n",
    );
    let ids = ["every", "phased", "nightly", "once"];
    let app = start(&dir).await;
    let mut before = Vec::new();
    for id in ids {
        before.push(job(&app, id).await);
    }
    assert_eq!(time(&before[1]["next_run_at"]).timestamp() % 600, 180);

    let app = restart(app, &dir).await;
    for (id, old) in ids.iter().zip(&before) {
        let new = job(&app, id).await;
        assert_eq!(new["next_run_at"], old["next_run_at"], "{id}");
        assert_eq!(new["when"], old["when"], "{id}");
        assert_eq!(
            new["updated_at"], old["updated_at"],
            "{id}: nothing rewritten"
        );
    }
}

#[tokio::test]
async fn a_changed_schedule_recomputes_next_run_at() {
    let dir = JobsDir::new();
    let file =
        |every: &str| format!("job_id: j\nhandler: log\nperiodically: {every}\nmessage: x\n");
    dir.write("j.yaml", &file("1 hour"));
    let app = start(&dir).await;
    let first = time(&job(&app, "j").await["next_run_at"]);

    dir.write("j.yaml", &file("3 hours"));
    let app = restart(app, &dir).await;
    let j = job(&app, "j").await;
    assert_eq!(j["periodically"], "3:00:00");
    let second = time(&j["next_run_at"]);
    assert!(
        second - first > chrono::Duration::minutes(110),
        "{first} then {second}"
    );
    assert!(second - Utc::now() <= chrono::Duration::hours(3));
}

#[tokio::test]
async fn kwargs_and_policies_are_updated_and_timing_is_kept() {
    let dir = JobsDir::new();
    dir.write(
        "j.yaml",
        "job_id: j\nhandler: log\nperiodically: 1 hour\nmessage: first\n",
    );
    let app = start(&dir).await;
    let before = job(&app, "j").await;

    dir.write(
        "j.yaml",
        "job_id: j\nhandler: log\nperiodically: 60m\nmessage: second\nlevel: warn\nmax_retries: 3\n\
         timeout: 30s\nmax_instances: 2\nlock_key: reports\ndescription: changed\ntags: [t]\n",
    );
    let app = restart(app, &dir).await;
    let after = job(&app, "j").await;
    assert_eq!(
        after["kwargs"],
        json!({"message": "second", "level": "warn"})
    );
    assert_eq!(after["max_retries"], 3);
    assert_eq!(after["timeout"], "0:00:30");
    assert_eq!(after["max_instances"], 2);
    assert_eq!(after["lock_key"], "reports");
    assert_eq!(after["description"], "changed");
    assert_eq!(after["tags"], json!(["t"]));
    // "60m" is the same schedule as "1 hour".
    assert_eq!(after["next_run_at"], before["next_run_at"]);
    assert_eq!(after["created_at"], before["created_at"]);
}

/// The rule: a pause or resume through the API stands across restarts until
/// the file's own `state` changes; then the file wins.
#[tokio::test]
async fn api_pause_and_resume_survive_restarts_until_the_file_state_changes() {
    let dir = JobsDir::new();
    let file = |state: &str, message: &str| {
        format!(
            "job_id: j\nhandler: log\nperiodically: 1 hour\nstate: {state}\nmessage: {message}\n"
        )
    };
    dir.write("j.yaml", &file("running", "a"));
    let app = start(&dir).await;
    let next = job(&app, "j").await["next_run_at"].clone();

    // Paused through the API: a restart keeps it paused.
    assert_eq!(app.put("/api/v1/jobs/j?state=paused").await.0, 200);
    let app = restart(app, &dir).await;
    assert_eq!(job(&app, "j").await["state"], "paused");
    assert_eq!(
        app.store.job_file_state("j").await.unwrap(),
        Some(JobState::Running)
    );

    // Other edits of the file apply, and the pause still stands.
    dir.write("j.yaml", &file("running", "b"));
    let app = restart(app, &dir).await;
    let j = job(&app, "j").await;
    assert_eq!(j["state"], "paused");
    assert_eq!(j["kwargs"]["message"], "b");

    // The file's state changes: the file wins.
    dir.write("j.yaml", &file("paused", "b"));
    let app = restart(app, &dir).await;
    assert_eq!(job(&app, "j").await["state"], "paused");
    dir.write("j.yaml", &file("running", "b"));
    let app = restart(app, &dir).await;
    let j = job(&app, "j").await;
    assert_eq!(j["state"], "running");
    assert!(j["next_run_at"].is_string());

    // The reverse: a file that says paused, resumed through the API.
    dir.write("j.yaml", &file("paused", "b"));
    let app = restart(app, &dir).await;
    assert_eq!(job(&app, "j").await["state"], "paused");
    assert_eq!(app.put("/api/v1/jobs/j?state=running").await.0, 200);
    let resumed = job(&app, "j").await;
    let app = restart(app, &dir).await;
    let j = job(&app, "j").await;
    assert_eq!(j["state"], "running");
    assert_eq!(j["next_run_at"], resumed["next_run_at"]);
    assert!(time(&j["next_run_at"]) > time(&next) - chrono::Duration::hours(1));
}

/// Bad files of every kind next to a good one: `(file, field)` of each problem.
fn write_bad_files(dir: &JobsDir) -> Vec<(&'static str, &'static str)> {
    let files: [(&str, &str, &str); 13] = [
        (
            "broken.yaml",
            "job_id: broken\nhandler: log\nmessage: [unclosed\n",
            "yaml",
        ),
        ("empty.yaml", "", "file"),
        ("no-id.yaml", "handler: log\nmessage: hi\n", "job_id"),
        (
            "no-handler.yaml",
            "job_id: no-handler\nmessage: hi\n",
            "handler",
        ),
        (
            "unknown-handler.yaml",
            "job_id: unknown-handler\nhandler: teleport\n",
            "handler",
        ),
        (
            "bad-kwargs.yaml",
            "job_id: bad-kwargs\nhandler: log\nmessage: 5\n",
            "kwargs/message",
        ),
        (
            "bad-duration.yaml",
            "job_id: bad-duration\nhandler: log\nmessage: x\nperiodically: 5 parsecs\n",
            "periodically",
        ),
        (
            "bad-cron.yaml",
            "job_id: bad-cron\nhandler: log\nmessage: x\ncron: 61 * * * *\n",
            "cron",
        ),
        (
            "bad-zone.yaml",
            "job_id: bad-zone\nhandler: log\nmessage: x\ncron: 0 3 * * *\ntimezone: Mars/Olympus\n",
            "timezone",
        ),
        (
            "bad-type.yaml",
            "job_id: bad-type\nhandler: log\nmessage: x\nmax_instances: lots\n",
            "max_instances",
        ),
        (
            "command.yaml",
            "job_id: command\nhandler: command\nprogram: df\n",
            "handler",
        ),
        (
            "twin-a.yaml",
            "job_id: twin\nhandler: log\nmessage: a\n",
            "job_id",
        ),
        (
            "twin-b.yml",
            "job_id: twin\nhandler: log\nmessage: b\n",
            "job_id",
        ),
    ];
    for (name, text, _) in files {
        dir.write(name, text);
    }
    dir.write("good.yaml", "job_id: good\nhandler: log\nmessage: fine\n");
    files
        .iter()
        .map(|(name, _, field)| (*name, *field))
        .collect()
}

const BAD_IDS: [&str; 11] = [
    "broken",
    "no-handler",
    "unknown-handler",
    "bad-kwargs",
    "bad-duration",
    "bad-cron",
    "bad-zone",
    "bad-type",
    "command",
    "twin",
    "empty",
];

#[tokio::test]
async fn bad_files_are_skipped_named_and_the_others_load() {
    let dir = JobsDir::new();
    let expected = write_bad_files(&dir);
    let app = start(&dir).await;
    // Only the good file is stored; nothing of a bad one.
    assert_eq!(job_count(&app).await, 1);
    assert_eq!(job(&app, "good").await["kwargs"]["message"], "fine");
    for id in BAD_IDS {
        assert!(!job_exists(&app, id).await, "{id} was stored");
    }

    // What the service logs: every problem with its file and field.
    let report = scan(&app.store, &dir).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.files, 14);
    for (file, field) in &expected {
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.file.ends_with(file) && p.field == *field),
            "no problem for {file} / {field} in {:#?}",
            report.problems
        );
    }
    let twin = report
        .problems
        .iter()
        .find(|p| p.file.ends_with("twin-a.yaml"))
        .expect("twin-a");
    assert!(twin.message.contains("twin-b.yml"), "{}", twin.message);
    let zone = report
        .problems
        .iter()
        .find(|p| p.file.ends_with("bad-zone.yaml"))
        .expect("bad-zone");
    assert!(zone.message.contains("Mars/Olympus"), "{}", zone.message);
    assert_eq!(job_count(&app).await, 1);
}

fn jobsd() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobsd"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("JOBSD_DEFAULT_JOBS_DIR")
        .env_remove("JOBSD_ENABLE_COMMAND_HANDLER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn validate_lists_every_problem_and_exits_non_zero() {
    let dir = JobsDir::new();
    let expected = write_bad_files(&dir);
    let out = jobsd()
        .args(["validate", dir.arg()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (file, field) in &expected {
        let prefix = format!("{}: {field}: ", dir.path.join(file).display());
        assert!(
            stdout.lines().any(|l| l.starts_with(&prefix)),
            "no line starting {prefix:?} in\n{stdout}"
        );
    }
    assert!(!stdout.contains("good.yaml"), "{stdout}");
    assert!(stderr.contains("problem(s) in 13 of 14"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A clean directory, named by the environment like `serve` does.
    let good = JobsDir::new();
    good.write("a.yaml", "job_id: a\nhandler: log\nmessage: x\n");
    let out = jobsd()
        .arg("validate")
        .env("JOBSD_DEFAULT_JOBS_DIR", good.arg())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 default-job file(s), all valid"));

    // The command handler counts as enabled with the same flag as `serve`.
    good.write("cmd.yaml", "job_id: cmd\nhandler: command\nprogram: df\n");
    let out = jobsd()
        .args(["validate", good.arg()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = jobsd()
        .args(["validate", good.arg(), "--enable-command-handler"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // A directory that is not there is a failure, not "nothing to check".
    let out = jobsd()
        .args(["validate", "/nonexistent-jobsd-dir"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no directory at /nonexistent-jobsd-dir"));
}

/// The real binary's log names the file, the field and the reason, and the
/// service starts anyway.
#[tokio::test]
async fn the_log_names_file_field_and_reason() {
    let dir = JobsDir::new();
    dir.write(
        "bad-duration.yaml",
        "job_id: bad-duration\nhandler: log\nmessage: x\nperiodically: 5 parsecs\n",
    );
    dir.write("good.yaml", "job_id: good\nhandler: log\nmessage: x\n");
    let db = TestDb::new();
    let mut child = jobsd()
        .args(["serve", "--database-url", &db.url, "--bind", "127.0.0.1:0"])
        .args(["--default-jobs-dir", dir.arg()])
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut skipped = None;
    let listening = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("default job file skipped") {
                skipped = Some(line.clone());
            }
            if line.contains("jobsd listening") {
                return true;
            }
        }
        false
    })
    .await
    .expect("jobsd starts in time");
    assert!(listening, "jobsd did not start");
    let line = skipped.expect("a log line for the bad file");
    assert!(line.contains("bad-duration.yaml"), "{line}");
    assert!(line.contains("field=periodically"), "{line}");
    assert!(line.contains("parsecs"), "{line}");
    assert!(line.contains("ERROR"), "{line}");
}

/// A file that turns bad keeps its last good job; fixed, it applies again.
#[tokio::test]
async fn a_bad_edit_keeps_the_last_good_job() {
    let app = TestApp::start().await;
    let dir = JobsDir::new();
    let mut loader = Loader::new(app.store.clone(), registry(false), &dir.path);
    dir.write(
        "j.yaml",
        "job_id: j\nhandler: log\nperiodically: 1 hour\nmessage: good\n",
    );
    let report = loader.scan().await;
    assert_eq!(report.applied[0].outcome, FileUpsert::Inserted);
    let before = job(&app, "j").await;

    dir.write(
        "j.yaml",
        "job_id: j\nhandler: log\nperiodically: 1 fortnight\nmessage: bad\n",
    );
    let report = loader.scan().await;
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].field, "periodically");
    assert!(report.applied.is_empty());
    let kept = job(&app, "j").await;
    assert_eq!(kept["kwargs"]["message"], "good");
    assert_eq!(kept["state"], "running");
    assert_eq!(kept["updated_at"], before["updated_at"]);

    dir.write(
        "j.yaml",
        "job_id: j\nhandler: log\nperiodically: 1 hour\nmessage: fixed\n",
    );
    let report = loader.scan().await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.applied[0].outcome, FileUpsert::Updated);
    let fixed = job(&app, "j").await;
    assert_eq!(fixed["kwargs"]["message"], "fixed");
    assert_eq!(fixed["next_run_at"], before["next_run_at"]);

    // An unchanged file is not applied again by the same loader.
    assert!(loader.scan().await.applied.is_empty());
}

#[tokio::test]
async fn the_same_job_id_in_two_files_loads_neither_until_one_goes() {
    let app = TestApp::start().await;
    let dir = JobsDir::new();
    let mut loader = Loader::new(app.store.clone(), registry(false), &dir.path);
    dir.write("a.yaml", "job_id: twin\nhandler: log\nmessage: a\n");
    dir.write("b.yaml", "job_id: twin\nhandler: log\nmessage: b\n");
    let report = loader.scan().await;
    let files: BTreeSet<String> = report
        .problems
        .iter()
        .map(|p| {
            assert_eq!(p.field, "job_id");
            p.file.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    assert_eq!(files, BTreeSet::from(["a.yaml".into(), "b.yaml".into()]));
    assert!(!job_exists(&app, "twin").await);

    dir.remove("b.yaml");
    let report = loader.scan().await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let twin = job(&app, "twin").await;
    assert_eq!(twin["kwargs"]["message"], "a");
    assert_eq!(twin["source"], dir.source("a.yaml"));
}

/// Two replicas loading the same directory at the same moment: each job is
/// inserted (or updated) exactly once, and neither sees an error.
// PostgreSQL only: two replicas loading one directory (the embedded store has one loader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_loading_at_once_neither_duplicate_nor_fail() {
    let app = TestApp::start_on(TestDb::postgres(), &[]).await;
    let config = serve_config(&app.db, &[]);
    let a = jobsd::app::open_store(&config.database).await.unwrap();
    let b = jobsd::app::open_store(&config.database).await.unwrap();
    let dir = JobsDir::new();
    let mut loader_a = Loader::new(a, registry(false), &dir.path);
    let mut loader_b = Loader::new(b, registry(false), &dir.path);
    const JOBS: usize = 12;
    for round in 0..3 {
        for i in 0..JOBS {
            dir.write(
                &format!("job-{i}.yaml"),
                &format!(
                    "job_id: job-{i}\nhandler: log\nperiodically: {}m\nmessage: round {round}\n",
                    i + 1
                ),
            );
        }
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move {
                let r = loader_a.scan().await;
                (loader_a, r)
            }),
            tokio::spawn(async move {
                let r = loader_b.scan().await;
                (loader_b, r)
            })
        );
        let (la, ra) = ra.unwrap();
        let (lb, rb) = rb.unwrap();
        (loader_a, loader_b) = (la, lb);
        for r in [&ra, &rb] {
            assert!(r.errors.is_empty() && r.problems.is_empty(), "{r:?}");
            assert_eq!(r.applied.len(), JOBS);
        }
        let writes = if round == 0 {
            FileUpsert::Inserted
        } else {
            FileUpsert::Updated
        };
        for i in 0..JOBS {
            let id = format!("job-{i}");
            let outcomes: Vec<&FileUpsert> = [&ra, &rb]
                .iter()
                .flat_map(|r| r.applied.iter().filter(|x| x.job_id == id))
                .map(|x| &x.outcome)
                .collect();
            assert_eq!(outcomes.len(), 2, "{id}");
            assert_eq!(
                outcomes.iter().filter(|o| ***o == writes).count(),
                1,
                "{id} in round {round}: {outcomes:?}"
            );
            assert!(
                outcomes.contains(&&FileUpsert::Unchanged),
                "{id}: {outcomes:?}"
            );
        }
        assert_eq!(job_count(&app).await, JOBS as i64);
        assert_eq!(
            job(&app, "job-3").await["kwargs"]["message"],
            format!("round {round}")
        );
    }
}

/// Live reload through the file watcher alone (the periodic rescan is off).
#[tokio::test]
async fn files_added_and_changed_while_running_are_applied() {
    let dir = JobsDir::new();
    let app = TestApp::start_with(&[
        "--default-jobs-dir",
        dir.arg(),
        "--default-jobs-rescan",
        "0",
    ])
    .await;
    assert_eq!(job_count(&app).await, 0);

    dir.write(
        "live.yaml",
        "job_id: live\nhandler: log\nperiodically: 1 hour\nmessage: one\n",
    );
    let added = wait_for("the added file's job", Duration::from_secs(10), || async {
        let (status, body) = app.get("/api/v1/jobs/live").await;
        (status == 200).then(|| body["job"].clone())
    })
    .await;
    assert_eq!(added["source"], dir.source("live.yaml"));

    dir.write(
        "live.yaml",
        "job_id: live\nhandler: log\nperiodically: 1 hour\nmessage: two\n",
    );
    let changed = wait_for("the changed kwargs", Duration::from_secs(10), || async {
        let j = job(&app, "live").await;
        (j["kwargs"]["message"] == "two").then_some(j)
    })
    .await;
    assert_eq!(changed["next_run_at"], added["next_run_at"]);

    dir.write(
        "live.yaml",
        "job_id: live\nhandler: log\nperiodically: 2 hours\nmessage: two\n",
    );
    let rescheduled = wait_for("the changed schedule", Duration::from_secs(10), || async {
        let j = job(&app, "live").await;
        (j["periodically"] == "2:00:00").then_some(j)
    })
    .await;
    assert_ne!(rescheduled["next_run_at"], added["next_run_at"]);
}

/// The periodic rescan finds what the watcher cannot: here a directory that
/// did not exist when the service started.
#[tokio::test]
async fn the_rescan_picks_up_a_directory_created_later() {
    let dir = JobsDir::unborn();
    let app = TestApp::start_with(&[
        "--default-jobs-dir",
        dir.arg(),
        "--default-jobs-rescan",
        "500ms",
    ])
    .await;
    assert_eq!(job_count(&app).await, 0);
    std::fs::create_dir_all(&dir.path).unwrap();
    dir.write(
        "late.yaml",
        "job_id: late\nhandler: log\nmessage: x\nwhen: 2099-01-01\n",
    );
    wait_for(
        "the job of the new directory",
        Duration::from_secs(10),
        || async { job_exists(&app, "late").await.then_some(()) },
    )
    .await;
}

/// The rule: a removed file's job is paused once (not deleted); resuming it
/// through the API sticks; a file that comes back applies its state again.
#[tokio::test]
async fn a_removed_file_pauses_its_job_once() {
    let dir = JobsDir::new();
    let text = "job_id: gone\nhandler: log\nperiodically: 1 hour\nmessage: x\n";
    dir.write("gone.yaml", text);
    dir.write(
        "stays.yaml",
        "job_id: stays\nhandler: log\nperiodically: 1 hour\nmessage: x\n",
    );
    let app = TestApp::start_with(&[
        "--default-jobs-dir",
        dir.arg(),
        "--default-jobs-rescan",
        "0",
    ])
    .await;
    assert_eq!(job(&app, "gone").await["state"], "running");

    dir.remove("gone.yaml");
    let paused = wait_for(
        "the removed file's job paused",
        Duration::from_secs(10),
        || async {
            let j = job(&app, "gone").await;
            (j["state"] == "paused").then_some(j)
        },
    )
    .await;
    assert_eq!(paused["next_run_at"], Value::Null);
    assert_eq!(paused["source"], dir.source("gone.yaml"));
    assert_eq!(app.store.job_file_state("gone").await.unwrap(), None);
    assert_eq!(job(&app, "stays").await["state"], "running");

    // The file comes back: its state (running) applies again.
    dir.write("gone.yaml", text);
    wait_for(
        "the returned file's job running",
        Duration::from_secs(10),
        || async { (job(&app, "gone").await["state"] == "running").then_some(()) },
    )
    .await;

    // Removed again, then resumed through the API: a restart leaves it running.
    dir.remove("gone.yaml");
    wait_for("paused again", Duration::from_secs(10), || async {
        (job(&app, "gone").await["state"] == "paused").then_some(())
    })
    .await;
    assert_eq!(app.put("/api/v1/jobs/gone?state=running").await.0, 200);
    let app = restart(app, &dir).await;
    assert_eq!(job(&app, "gone").await["state"], "running");
    assert_eq!(job(&app, "stays").await["state"], "running");
}

#[tokio::test]
async fn a_file_removed_while_the_service_was_down_pauses_its_job_at_start_up() {
    let dir = JobsDir::new();
    dir.write(
        "gone.yaml",
        "job_id: gone\nhandler: log\nperiodically: 1 hour\nmessage: x\n",
    );
    let app = start(&dir).await;
    assert_eq!(job(&app, "gone").await["state"], "running");
    dir.remove("gone.yaml");
    let app = restart(app, &dir).await;
    assert_eq!(job(&app, "gone").await["state"], "paused");
}

#[tokio::test]
async fn a_missing_directory_loads_nothing_and_pauses_nothing() {
    let dir = JobsDir::new();
    dir.write(
        "a.yaml",
        "job_id: a\nhandler: log\nperiodically: 1 hour\nmessage: x\n",
    );
    let app = start(&dir).await;
    std::fs::remove_dir_all(&dir.path).unwrap();
    let report = scan(&app.store, &dir).await;
    assert!(report.dir_error.is_some());
    assert!(report.released.is_empty() && report.applied.is_empty());
    assert_eq!(job(&app, "a").await["state"], "running");
    // And a service starts without one.
    let app = restart(app, &dir).await;
    assert_eq!(job(&app, "a").await["state"], "running");
}

/// A file that comes to define another job_id lets go of its old job.
#[tokio::test]
async fn a_file_with_a_new_job_id_pauses_its_old_job() {
    let app = TestApp::start().await;
    let dir = JobsDir::new();
    let mut loader = Loader::new(app.store.clone(), registry(false), &dir.path);
    dir.write(
        "f.yaml",
        "job_id: old\nhandler: log\nperiodically: 1 hour\nmessage: x\n",
    );
    loader.scan().await;
    dir.write(
        "f.yaml",
        "job_id: new\nhandler: log\nperiodically: 1 hour\nmessage: x\n",
    );
    let report = loader.scan().await;
    assert_eq!(report.released, ["old"]);
    assert_eq!(job(&app, "old").await["state"], "paused");
    assert_eq!(job(&app, "new").await["state"], "running");
}

/// A file takes over a job created through the API with its job_id; it
/// never takes over a failure record.
#[tokio::test]
async fn a_file_takes_over_an_api_job_but_never_a_failure_record() {
    let app = TestApp::start().await;
    let (status, _) = app
        .post(
            "/api/v1/jobs",
            json!({"job_id": "shared", "handler": "log", "kwargs": {"message": "api"}}),
        )
        .await;
    assert_eq!(status, 201);
    let record = crate::support::failure_record("failure-1", json!({"exc_str": "boom"}));
    app.store.job_insert(&record, "test").await.unwrap();

    let dir = JobsDir::new();
    dir.write(
        "shared.yaml",
        "job_id: shared\nhandler: log\nmessage: file\n",
    );
    dir.write(
        "failure.yaml",
        "job_id: failure-1\nhandler: log\nmessage: file\n",
    );
    let report = scan(&app.store, &dir).await;
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].field, "job_id");
    assert!(report.problems[0].message.contains("failure record"));
    let shared = job(&app, "shared").await;
    assert_eq!(shared["source"], dir.source("shared.yaml"));
    assert_eq!(shared["kwargs"]["message"], "file");
    let failure = job(&app, "failure-1").await;
    assert_eq!(failure["handler"], "ErrorHandler");
    assert_eq!(failure["source"], "api");
}

#[tokio::test]
async fn an_upsert_notifies_every_replica() {
    let app = TestApp::start().await;
    let mut listener = Some(app.store.listen().await.unwrap());
    let dir = JobsDir::new();
    dir.write("n.yaml", "job_id: n\nhandler: log\nmessage: x\n");
    scan(&app.store, &dir).await;
    let notice = tokio::time::timeout(Duration::from_secs(10), notify::next(&mut listener))
        .await
        .expect("a notice in time");
    assert_eq!(notice.jobs, Some(FireHint::Recheck), "{notice:?}");
}

/// The repo's `default_jobs/`: valid, one example per built-in handler, each
/// explained by a comment. The `command` example lives in a subdirectory
/// (not loaded) because that handler is off by default.
#[tokio::test]
async fn the_repos_default_jobs_all_load() {
    let app = TestApp::start().await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("default_jobs");
    let mut handlers = BTreeSet::new();
    for (dir, command_enabled) in [
        (root.clone(), false),
        (root.join("examples-disabled"), true),
    ] {
        let report = Loader::new(app.store.clone(), registry(command_enabled), &dir)
            .scan()
            .await;
        assert!(report.dir_error.is_none(), "{report:?}");
        assert!(
            report.problems.is_empty() && report.errors.is_empty(),
            "{report:?}"
        );
        assert!(report.files > 0);
        assert_eq!(report.applied.len(), report.files);
        for applied in &report.applied {
            let text = std::fs::read_to_string(&applied.file).unwrap();
            assert!(
                text.starts_with("# "),
                "{}: explain it in a comment",
                applied.file.display()
            );
            handlers.insert(
                job(&app, &applied.job_id).await["handler"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    let builtins: BTreeSet<String> = registry(true)
        .iter()
        .filter(|h| !h.inert())
        .map(|h| h.name().to_string())
        .collect();
    assert_eq!(handlers, builtins);
    // The http example calls no one unless an operator turns it on.
    let http = job(&app, "liveness-check").await;
    assert_eq!(http["state"], "paused");
}
