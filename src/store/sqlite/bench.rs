//! What the benchmark (`jobsd bench`) needs of the embedded store: name,
//! analyse and remove the throw-away files it makes, and read the
//! settings its replicas open them with, for its report. The benchmark
//! reaches these through [`crate::store::bench`], which picks the backend
//! by URL scheme.
//!
//! `--database-url sqlite://DIR/name.db` names a directory: every scenario
//! (and phase) gets a new file `DIR/jobsd_bench_<random>_<scenario>.db`
//! there (created by its replica, as `serve` creates a missing file), and
//! the file named in the URL is never opened. [`bench_database_remove`]
//! and [`bench_database_analyze`] refuse any file whose name does not
//! start with [`BENCH_DATABASE_PREFIX`], so a benchmark cannot touch a real
//! `jobsd` store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::connect::sqlite_path;
use super::{SqliteOptions, SqliteStore};
pub use crate::store::bench::BENCH_DATABASE_PREFIX;

/// How long `ANALYZE` waits for the replica's write lock.
const ANALYZE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// What SQLite and a serving jobsd keep beside a database file: the
/// write-ahead log, its shared-memory index, a rollback journal (never in
/// WAL mode, but removed if one is there) and the serve lock.
const COMPANIONS: [&str; 4] = ["-wal", "-shm", "-journal", ".lock"];

/// The embedded store as the benchmark's replicas open it.
#[derive(Debug, Clone, Serialize)]
pub struct SqliteFacts {
    /// `select sqlite_version()`: the library linked into jobsd.
    pub sqlite_version: String,
    /// `PRAGMA journal_mode` of a file opened as `jobsd serve` opens it.
    pub journal_mode: String,
    /// `PRAGMA synchronous` of that connection (`OFF`, `NORMAL`, `FULL`,
    /// `EXTRA`).
    pub synchronous: String,
    /// `PRAGMA busy_timeout`, in milliseconds.
    pub busy_timeout_ms: i64,
    /// Where the benchmark's files are made.
    pub directory: String,
}

/// The directory of the file `url` names, where the benchmark makes its
/// files (`.` for a bare file name). None when the URL names no file.
pub fn bench_directory(url: &str) -> Option<PathBuf> {
    let path = sqlite_path(url)?;
    Some(match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    })
}

/// The file of benchmark database `name` in `dir`.
pub fn bench_database_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.db"))
}

/// The `sqlite://` URL of benchmark database `name` in `dir`.
pub fn bench_database_url(dir: &Path, name: &str) -> String {
    format!("sqlite://{}", bench_database_path(dir, name).display())
}

/// Refuses a name without the benchmark prefix, or one that is not a
/// plain file name.
fn bench_database_check(name: &str, doing: &str) -> Result<(), String> {
    if !name.starts_with(BENCH_DATABASE_PREFIX) {
        return Err(format!(
            "refusing to {doing} {name:?}: not a benchmark database ({BENCH_DATABASE_PREFIX}*)"
        ));
    }
    if name.contains(['/', '\\']) || name.contains("..") {
        return Err(format!(
            "refusing to {doing} {name:?}: not a plain file name"
        ));
    }
    Ok(())
}

/// Removes benchmark database `name` from `dir`: its file and the
/// [`COMPANIONS`] beside it. Missing files are fine; the first other
/// failure is returned after trying every file. Refuses names without the
/// benchmark prefix.
pub fn bench_database_remove(dir: &Path, name: &str) -> std::io::Result<()> {
    bench_database_check(name, "remove").map_err(std::io::Error::other)?;
    let file = bench_database_path(dir, name);
    let mut paths = vec![file.clone()];
    for suffix in COMPANIONS {
        let mut companion = file.clone().into_os_string();
        companion.push(suffix);
        paths.push(PathBuf::from(companion));
    }
    let mut first_error = None;
    for path in paths {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                first_error.get_or_insert(std::io::Error::new(
                    e.kind(),
                    format!("removing {}: {e}", path.display()),
                ));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Updates the planner statistics of every table of the benchmark database
/// `url` names (`ANALYZE`, as an operator or `PRAGMA optimize` would),
/// waiting for the serving replica's write lock if it holds it. Its
/// connections see the new statistics at their next statement (ANALYZE
/// changes the schema, which makes them reload it). Refuses files without
/// the benchmark prefix.
pub async fn bench_database_analyze(url: &str) -> Result<(), sqlx::Error> {
    let path = sqlite_path(url)
        .ok_or_else(|| sqlx::Error::Configuration(format!("no file in {url:?}").into()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    bench_database_check(&name, "analyse").map_err(sqlx::Error::Protocol)?;
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(ANALYZE_BUSY_TIMEOUT)
        .log_statements(tracing::log::LevelFilter::Trace)
        .connect()
        .await?;
    let result = sqlx::query("ANALYZE").execute(&mut conn).await;
    let _ = conn.close().await;
    result.map(|_| ())
}

/// SQLite's version and the settings a replica opens its file with: opens
/// the benchmark file `probe` in `dir` exactly as `jobsd serve` opens its
/// store (with `options`), reads them, and removes the file again.
pub async fn bench_server_facts(
    dir: &Path,
    probe: &str,
    options: &SqliteOptions,
    timeout: Duration,
) -> anyhow::Result<SqliteFacts> {
    bench_database_check(probe, "open").map_err(anyhow::Error::msg)?;
    let url = bench_database_url(dir, probe);
    let store = SqliteStore::open(&url, 2, timeout, options).await?;
    let facts = read_facts(&store, dir).await;
    store.writer.close().await;
    store.readers.close().await;
    let removed = bench_database_remove(dir, probe);
    let facts = facts?;
    removed?;
    Ok(facts)
}

async fn read_facts(store: &SqliteStore, dir: &Path) -> Result<SqliteFacts, sqlx::Error> {
    let sqlite_version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&store.writer)
        .await?;
    let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.writer)
        .await?;
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&store.writer)
        .await?;
    let busy_timeout_ms: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&store.writer)
        .await?;
    Ok(SqliteFacts {
        sqlite_version,
        journal_mode,
        synchronous: synchronous_name(synchronous),
        busy_timeout_ms,
        directory: dir.display().to_string(),
    })
}

/// The name of a `PRAGMA synchronous` value.
fn synchronous_name(value: i64) -> String {
    match value {
        0 => "OFF".to_string(),
        1 => "NORMAL".to_string(),
        2 => "FULL".to_string(),
        3 => "EXTRA".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "jobsd-bench-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn names_the_bench_files_beside_the_given_one() {
        assert_eq!(
            bench_directory("sqlite:///tmp/b/jobsd.db"),
            Some(PathBuf::from("/tmp/b"))
        );
        assert_eq!(
            bench_directory("sqlite://jobsd.db"),
            Some(PathBuf::from("."))
        );
        assert_eq!(bench_directory("sqlite://"), None);
        assert_eq!(
            bench_database_url(Path::new("/tmp/b"), "jobsd_bench_x_drain"),
            "sqlite:///tmp/b/jobsd_bench_x_drain.db"
        );
        assert_eq!(
            bench_database_url(Path::new("."), "jobsd_bench_x_drain"),
            "sqlite://./jobsd_bench_x_drain.db"
        );
    }

    #[tokio::test]
    async fn refuses_to_remove_or_analyse_a_non_benchmark_file() {
        let dir = scratch_dir();
        let real = dir.join("jobsd.db");
        std::fs::write(&real, b"x").unwrap();
        let err = bench_database_remove(&dir, "jobsd").expect_err("refused");
        assert!(
            err.to_string().contains("not a benchmark database"),
            "{err}"
        );
        let err = bench_database_remove(&dir, "jobsd_bench_/../jobsd").expect_err("refused");
        assert!(err.to_string().contains("not a plain file name"), "{err}");
        let err = bench_database_analyze(&format!("sqlite://{}", real.display()))
            .await
            .expect_err("refused");
        assert!(
            err.to_string().contains("not a benchmark database"),
            "{err}"
        );
        assert!(real.exists(), "left alone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn removes_a_bench_file_with_its_companions() {
        let dir = scratch_dir();
        let name = "jobsd_bench_t_drain";
        for suffix in ["", "-wal", "-shm", ".lock"] {
            std::fs::write(dir.join(format!("{name}.db{suffix}")), b"x").unwrap();
        }
        let other = dir.join("jobsd_bench_t_lag.db");
        std::fs::write(&other, b"x").unwrap();
        bench_database_remove(&dir, name).unwrap();
        bench_database_remove(&dir, name).expect("nothing left is fine");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("jobsd_bench_t_lag.db")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn reads_the_settings_a_replica_opens_with_and_analyses() {
        let dir = scratch_dir();
        let facts = bench_server_facts(
            &dir,
            "jobsd_bench_t_facts",
            &SqliteOptions::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(facts.sqlite_version.starts_with('3'), "{facts:?}");
        assert_eq!(facts.journal_mode, "wal");
        assert_eq!(facts.synchronous, "NORMAL");
        assert!(facts.busy_timeout_ms > 0, "{facts:?}");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "the probe is removed"
        );

        let url = bench_database_url(&dir, "jobsd_bench_t_burst_warm");
        let store = SqliteStore::open(&url, 2, Duration::from_secs(5), &SqliteOptions::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        bench_database_analyze(&url).await.unwrap();
        let stats: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
                .fetch_one(&store.readers)
                .await
                .unwrap();
        assert_eq!(stats, 1, "ANALYZE wrote its statistics");
        store.writer.close().await;
        store.readers.close().await;
        bench_database_remove(&dir, "jobsd_bench_t_burst_warm").unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
