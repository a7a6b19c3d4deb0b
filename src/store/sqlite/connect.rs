//! Opening the embedded store: the file (created when missing) in WAL mode,
//! one writer connection and a pool of readers, and the lock that keeps a
//! second `jobsd serve` off the same file.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{broadcast, watch};

use super::SqliteStore;
use crate::store::connect::ConnectError;

/// How the embedded store syncs commits to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Synchronous {
    /// Sync at checkpoints (WAL): a killed process loses nothing it
    /// acknowledged; a power loss may lose the last transactions.
    #[default]
    Normal,
    /// Sync every commit: survives a power loss, at a cost per write.
    Full,
}

/// Settings of the embedded store.
#[derive(Debug, Clone, Default)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
}

/// Makes the writer bump `commits` whenever it commits a transaction that
/// wrote to `events` (SQLite's update and commit hooks). The commit hook
/// runs just before the commit completes, so a woken reader may not see
/// the events yet; readers re-read shortly after a wake for that reason.
async fn watch_event_commits(conn: &mut sqlx::SqliteConnection, commits: watch::Sender<u64>) {
    let wrote_events = Arc::new(AtomicBool::new(false));
    let Ok(mut handle) = conn.lock_handle().await else {
        tracing::warn!("cannot watch the writer's commits: event streams will poll");
        return;
    };
    let on_update = wrote_events.clone();
    handle.set_update_hook(move |change| {
        if change.table == "events" {
            on_update.store(true, Ordering::Relaxed);
        }
    });
    let on_commit = wrote_events.clone();
    handle.set_commit_hook(move || {
        if on_commit.swap(false, Ordering::Relaxed) {
            commits.send_modify(|n| *n = n.wrapping_add(1));
        }
        true
    });
    handle.set_rollback_hook(move || wrote_events.store(false, Ordering::Relaxed));
}

/// How long a connection waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer's page cache, in KiB (SQLite's `-N` form). SQLite's default
/// of 2 MiB keeps a busy queue's pages of runs and their indexes in the
/// kernel's cache instead, and the writer, which every write waits for,
/// spends a fifth of its time copying them back (`pread`). Pages are
/// allocated as they are touched, so an idle store stays small.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// The file a `sqlite:` URL names: `sqlite://PATH` or `sqlite:PATH`
/// (`sqlite:///abs/path` is absolute); query parameters are not taken.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let rest = rest.split('?').next().unwrap_or_default();
    (!rest.is_empty()).then(|| PathBuf::from(rest))
}

const PATH_HINT: &str = "Use --database-url sqlite://PATH with a writable directory, or postgres://user:password@host:5432/jobsd";

impl SqliteStore {
    /// Opens (creating it if missing) the database file `url` names.
    pub async fn open(
        url: &str,
        max_connections: u32,
        timeout: Duration,
        options: &SqliteOptions,
    ) -> Result<SqliteStore, ConnectError> {
        let error = |reason: String| ConnectError::new(url, reason, PATH_HINT);
        let path = sqlite_path(url).ok_or_else(|| error("no file named in the URL".into()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(error(format!(
                    "the directory {} does not exist",
                    dir.display()
                )));
            }
        }
        let synchronous = match options.synchronous {
            Synchronous::Normal => SqliteSynchronous::Normal,
            Synchronous::Full => SqliteSynchronous::Full,
        };
        let base = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| error(e.to_string()))?
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(false);
        let event_commits = watch::Sender::new(0u64);
        let hooks = event_commits.clone();
        let writer = SqlitePoolOptions::new()
            .after_connect(move |conn, _| {
                let commits = hooks.clone();
                Box::pin(async move {
                    watch_event_commits(conn, commits).await;
                    Ok(())
                })
            })
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(timeout.max(BUSY_TIMEOUT * 2))
            // The writer is never idle for long; keep its statement cache.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    // Room for every statement it runs, in all their shapes.
                    .statement_cache_capacity(512)
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}")),
            )
            .await
            .map_err(|e| error(describe(&e, &path)))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(timeout)
            .connect_with(base.read_only(true))
            .await
            .map_err(|e| error(describe(&e, &path)))?;
        let store = SqliteStore {
            writer,
            readers,
            wake: broadcast::channel(1024).0,
            event_commits,
            path,
        };
        store.check_is_jobsd().await.map_err(error)?;
        Ok(store)
    }

    /// Refuses a file that is an SQLite database of something else (tables,
    /// but not jobsd's migrations), or not a database at all.
    async fn check_is_jobsd(&self) -> Result<(), String> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(&self.readers)
        .await
        .map_err(|e| describe(&e, &self.path))?;
        if !tables.is_empty() && !tables.iter().any(|t| t == "_sqlx_migrations") {
            return Err(format!(
                "{} is an SQLite database of something else (it has tables, none of them jobsd's); choose another file",
                self.path.display()
            ));
        }
        Ok(())
    }

    /// Takes the lock only a serving process holds, so that a second
    /// `jobsd serve` on the same file refuses to start. Short commands
    /// (`jobsd migrate`, a backup) do not take it.
    pub fn lock_for_serving(&self) -> Result<ServeLock, String> {
        ServeLock::take(&self.path)
    }
}

fn describe(e: &sqlx::Error, path: &Path) -> String {
    let text = e.to_string();
    if text.contains("file is not a database") {
        format!(
            "{} is not an SQLite database (nor a jobsd store)",
            path.display()
        )
    } else if text.contains("unable to open database file") || text.contains("readonly") {
        format!("cannot create or write {} ({text})", path.display())
    } else {
        text
    }
}

/// The lock a serving process holds on `<file>.lock` for its whole life
/// (released when the process ends, however it ends).
#[derive(Debug)]
pub struct ServeLock {
    _file: std::fs::File,
}

impl ServeLock {
    fn take(db: &Path) -> Result<ServeLock, String> {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot create the lock file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(ServeLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(format!(
                "another jobsd is already serving {}. The embedded store serves one replica; \
                 run replicas on PostgreSQL (--database-url postgres://...)",
                db.display()
            )),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite://./jobsd.db"),
            Some("./jobsd.db".into())
        );
        assert_eq!(
            sqlite_path("sqlite:///var/lib/j.db"),
            Some("/var/lib/j.db".into())
        );
        assert_eq!(sqlite_path("sqlite:j.db?mode=rwc"), Some("j.db".into()));
        assert_eq!(sqlite_path("sqlite://"), None);
        assert_eq!(sqlite_path("postgres://x"), None);
    }
}
