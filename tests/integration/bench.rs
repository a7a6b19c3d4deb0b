//! The benchmark harness must not rot: a tiny `jobsd bench` runs against
//! the test PostgreSQL, reports its figures, and drops its database; and
//! on the embedded store, in files it removes. (Not a timed test: no
//! figure is checked against a target.)
//!
//! Each test names its store itself, whatever JOBSD_TEST_BACKEND says: the
//! PostgreSQL ones create and drop databases on the test server, the SQLite
//! ones use a temporary directory of their own. So they all run in the
//! default run, and the sqlite profile leaves them out.

use serde_json::Value;
use sqlx::Connection;

use crate::support::admin_url;

/// Runs `jobsd bench` on the test PostgreSQL with `args`; returns
/// (success, stdout, stderr).
async fn bench(args: &[&str]) -> (bool, String, String) {
    bench_on(&admin_url(), args).await
}

/// Runs `jobsd bench --database-url url` with `args`.
async fn bench_on(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobsd"))
        .arg("bench")
        .args(["--database-url", url])
        .args(args)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("jobsd bench starts");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every database the bench announced on stderr for `scenario` (at least
/// `count`) no longer exists.
async fn assert_dropped_all(stderr: &str, scenario: &str, count: usize) {
    let prefix = format!("bench: {scenario}: database ");
    let names: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    assert!(
        names.len() >= count,
        "the bench names its {count} database(s): {stderr}"
    );
    let mut conn = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    for name in names {
        assert!(name.starts_with("jobsd_bench_"), "{name}");
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(left, 0, "{name} is dropped");
    }
}

/// The database the bench announced on stderr no longer exists.
async fn assert_dropped(stderr: &str, scenario: &str) {
    assert_dropped_all(stderr, scenario, 1).await;
}

/// The report's line of `figure` in `scenario`.
fn figure_line<'a>(stdout: &'a str, scenario: &str, figure: &str) -> &'a str {
    let start = format!("| {scenario} | {figure} |");
    stdout
        .lines()
        .find(|l| l.starts_with(&start))
        .unwrap_or_else(|| panic!("{scenario}: {figure:?} is printed:\n{stdout}"))
}

#[tokio::test]
async fn bench_drain_prints_its_figures_beside_the_targets() {
    let (ok, stdout, stderr) =
        bench(&["--scenario", "drain", "--jobs", "50", "--drain-rounds", "2"]).await;
    assert!(ok, "exits 0\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("| drain | end to end, 50 jobs |"))
        .unwrap_or_else(|| panic!("the drain figure is printed:\n{stdout}"));
    assert!(
        line.contains("runs/s") && line.contains("≥ 20,000 runs/s"),
        "{line}"
    );
    assert!(line.contains("median of 2 round(s) of 50 jobs"), "{line}");
    assert!(stderr.contains("round 2 of 2"), "{stderr}");
    assert!(stdout.contains("| drain | workers alone |"), "{stdout}");
    assert!(stdout.contains("PostgreSQL "), "machine facts: {stdout}");
    assert_dropped(&stderr, "drain").await;
}

#[tokio::test]
async fn bench_json_report_is_machine_readable() {
    let (ok, stdout, stderr) = bench(&["--scenario", "drain", "--jobs", "20", "--json"]).await;
    assert!(ok, "exits 0\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    let figures = report["figures"].as_array().expect("figures");
    let end_to_end = figures
        .iter()
        .find(|f| f["name"] == "end to end, 20 jobs")
        .unwrap_or_else(|| panic!("drain figure in {report}"));
    assert!(end_to_end["value"].as_f64().unwrap() > 0.0, "{end_to_end}");
    assert_eq!(end_to_end["unit"], "runs/s");
    assert!(end_to_end["met"].is_boolean(), "{end_to_end}");
    assert!(report["machine"]["postgres"]["server_version"].is_string());
    assert_eq!(report["failures"], serde_json::json!([]));
    assert_dropped(&stderr, "drain").await;
}

#[tokio::test]
async fn bench_burst_runs_fresh_and_after_a_quiet_period() {
    let (ok, stdout, stderr) = bench(&[
        "--scenario",
        "burst",
        "--burst-jobs",
        "200",
        "--burst-quiet-jobs",
        "20",
        "--burst-quiet-duration",
        "1s",
    ])
    .await;
    assert!(ok, "exits 0\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for figure in ["fresh database, 200 jobs", "after a quiet period, 200 jobs"] {
        let line = figure_line(&stdout, "burst", figure);
        assert!(line.contains("runs/s"), "{line}");
        assert!(line.contains("due instant → last run finished"), "{line}");
    }
    let ratio = figure_line(&stdout, "burst", "after a quiet period ÷ fresh");
    assert!(ratio.contains("≥ 0.80 ×"), "{ratio}");
    for figure in [
        "p50 start lag, fresh",
        "p99 start lag, after a quiet period",
    ] {
        assert!(figure_line(&stdout, "burst", figure).contains(" ms |"));
    }
    assert!(stderr.contains("warm: ANALYZE"), "{stderr}");
    // Two databases: fresh and warm.
    assert!(stderr.contains("_burst_fresh"), "{stderr}");
    assert!(stderr.contains("_burst_warm"), "{stderr}");
    assert_dropped_all(&stderr, "burst", 2).await;
}

#[tokio::test]
async fn bench_steady_reports_fires_lag_missed_and_cpu() {
    let (ok, stdout, stderr) = bench(&[
        "--scenario",
        "steady",
        "--steady-jobs",
        "200",
        "--steady-interval",
        "1s",
        "--steady-duration",
        "2s",
    ])
    .await;
    assert!(ok, "exits 0\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let offered = figure_line(&stdout, "steady", "fires/s offered");
    assert!(offered.contains("| 200 fires/s |"), "{offered}");
    let achieved = figure_line(&stdout, "steady", "fires/s achieved");
    assert!(
        achieved.contains("times scheduled in the 2 s window"),
        "{achieved}"
    );
    let p99 = figure_line(&stdout, "steady", "p99 start lag");
    assert!(p99.contains("≤ 100.00 ms"), "{p99}");
    figure_line(&stdout, "steady", "p50 start lag");
    figure_line(&stdout, "steady", "max start lag");
    let missed = figure_line(&stdout, "steady", "missed runs");
    assert!(missed.contains("≤ 0 runs"), "{missed}");
    assert!(figure_line(&stdout, "steady", "CPU, jobsd").contains(" % |"));
    // PostgreSQL's CPU needs its processes in this host's /proc.
    assert!(
        stdout.contains("| steady | CPU, PostgreSQL |")
            || stderr.contains("PostgreSQL's CPU not measured"),
        "{stdout}\n{stderr}"
    );
    assert_dropped(&stderr, "steady").await;
}

/// A new empty directory for an embedded-store bench, and its
/// `sqlite://DIR/jobsd.db` URL (the file itself is never made).
fn sqlite_dir() -> (std::path::PathBuf, String) {
    let dir =
        std::env::temp_dir().join(format!("jobsd-bench-it-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/jobsd.db", dir.display());
    (dir, url)
}

/// Every file the bench announced on stderr for `scenario` (at least
/// `count`) is gone, with its companions, and nothing is left in `dir`.
fn assert_removed_all(stderr: &str, scenario: &str, count: usize, dir: &std::path::Path) {
    let prefix = format!("bench: {scenario}: file ");
    let files: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    assert!(
        files.len() >= count,
        "the bench names its {count} file(s): {stderr}"
    );
    for file in files {
        let path = std::path::Path::new(file);
        assert_eq!(path.parent(), Some(dir), "{file} is beside the URL's file");
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            name.starts_with("jobsd_bench_") && name.ends_with(".db"),
            "{name}"
        );
        assert!(!path.exists(), "{file} is removed");
    }
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "nothing is left in {dir:?}: {left:?}");
}

#[tokio::test]
async fn bench_drain_on_sqlite_compares_with_postgres_and_leaves_failover_out() {
    let (dir, url) = sqlite_dir();
    let (ok, stdout, stderr) = bench_on(
        &url,
        &[
            "--scenario",
            "drain,failover",
            "--jobs",
            "50",
            "--drain-rounds",
            "2",
            "--baseline-database-url",
            &admin_url(),
        ],
    )
    .await;
    assert!(ok, "exits 0\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let line = figure_line(&stdout, "drain", "end to end, 50 jobs");
    assert!(line.contains("median of 2 round(s) of 50 jobs"), "{line}");
    assert!(
        line.contains("target on an embedded store") && !line.contains("≥ 20,000"),
        "{line}"
    );
    figure_line(&stdout, "drain", "end to end on PostgreSQL, 50 jobs");
    let ratio = figure_line(&stdout, "drain", "end to end ÷ PostgreSQL's");
    assert!(ratio.contains("≥ 0.50 ×"), "{ratio}");
    assert!(stdout.contains("- SQLite 3."), "machine facts: {stdout}");
    assert!(
        stdout.contains("journal_mode wal, synchronous NORMAL"),
        "{stdout}"
    );
    assert!(stdout.contains("(the drain's baseline)"), "{stdout}");
    assert!(
        stdout.contains("--sqlite-synchronous normal"),
        "the replicas' flags: {stdout}"
    );
    assert!(
        stdout.contains("- failover: needs PostgreSQL: replicas share a server database"),
        "{stdout}"
    );
    assert!(
        stderr.contains("bench: failover: left out: needs PostgreSQL"),
        "{stderr}"
    );
    assert!(!stdout.contains("| failover |"), "{stdout}");
    assert_removed_all(&stderr, "drain", 1, &dir);
    // The baseline's database on the server is dropped too.
    assert_dropped(&stderr, "drain").await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bench_burst_and_steady_on_sqlite_analyse_and_report_one_process() {
    let (dir, url) = sqlite_dir();
    let (ok, stdout, stderr) = bench_on(
        &url,
        &[
            "--scenario",
            "burst,steady",
            "--burst-jobs",
            "200",
            "--burst-quiet-jobs",
            "20",
            "--burst-quiet-duration",
            "1s",
            "--steady-jobs",
            "100",
            "--steady-duration",
            "2s",
            "--json",
        ],
    )
    .await;
    assert!(ok, "exits 0\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    let lite = &report["machine"]["sqlite"];
    assert!(
        lite["sqlite_version"].as_str().unwrap().starts_with('3'),
        "{lite}"
    );
    assert_eq!(lite["journal_mode"], "wal");
    assert!(report["machine"]["postgres"].is_null(), "{report}");
    let figures = report["figures"].as_array().expect("figures");
    let named = |scenario: &str, name: &str| {
        figures
            .iter()
            .find(|f| f["scenario"] == scenario && f["name"] == name)
            .unwrap_or_else(|| panic!("{scenario}: {name} in {report}"))
    };
    assert!(
        named("burst", "after a quiet period, 200 jobs")["value"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let cpu = named("steady", "CPU, jobsd");
    assert!(
        cpu["note"].as_str().unwrap().contains("no database server"),
        "{cpu}"
    );
    assert!(
        !figures.iter().any(|f| f["name"] == "CPU, PostgreSQL"),
        "no server to measure: {report}"
    );
    assert!(stderr.contains("warm: ANALYZE"), "{stderr}");
    assert_eq!(report["failures"], serde_json::json!([]));
    assert_removed_all(&stderr, "burst", 2, &dir);
    assert_removed_all(&stderr, "steady", 1, &dir);
    std::fs::remove_dir_all(&dir).unwrap();
}
