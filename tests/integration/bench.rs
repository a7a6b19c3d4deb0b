//! The benchmark harness must not rot: a tiny `jobsd bench` runs against
//! the test PostgreSQL, reports its figures, and drops its database.
//! (Not a timed test: no figure is checked against a target.)
//!
//! PostgreSQL only: the bench creates and drops PostgreSQL databases on the test server.

use serde_json::Value;
use sqlx::Connection;

use crate::support::admin_url;

/// Runs `jobsd bench` with `args`; returns (success, stdout, stderr).
async fn bench(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobsd"))
        .arg("bench")
        .args(["--database-url", &admin_url()])
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
