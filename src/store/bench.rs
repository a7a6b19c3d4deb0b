//! The benchmark's throw-away databases, on whichever backend
//! `--database-url` names ([`Backend::of_url`]): databases on a PostgreSQL
//! server, or files beside the one a `sqlite://` URL names. The benchmark
//! (`src/bench/`) speaks HTTP to its replicas and goes through
//! [`BenchServer`] for everything else (naming, analysing and removing its
//! databases, the facts of its report), so its scenarios hold nothing
//! specific to a backend. Each backend's part is in its own `bench.rs`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::ValueEnum;

use super::{postgres::bench as pg, sqlite::bench as lite};
use super::{redact_url, Backend, SqliteOptions, Synchronous, SCHEMES};
pub use lite::SqliteFacts;
pub use pg::PostgresFacts;

/// Every database (or file) the benchmark makes, and may remove, starts
/// with this.
pub const BENCH_DATABASE_PREFIX: &str = "jobsd_bench_";

/// Why the embedded store leaves out scenarios with several replicas.
pub const NEEDS_A_SERVER: &str = "needs PostgreSQL: replicas share a server database";

/// Where the benchmark makes its databases.
#[derive(Debug, Clone)]
pub enum BenchServer {
    /// A PostgreSQL server (the database in its URL is not used).
    Postgres { url: String },
    /// The embedded store: files in `dir`, opened by each replica with
    /// `options` (`--sqlite-synchronous` of `--serve-arg`, if given).
    Sqlite {
        dir: PathBuf,
        options: SqliteOptions,
    },
}

/// The database facts of the report.
#[derive(Debug, Clone)]
pub enum ServerFacts {
    Postgres(PostgresFacts),
    Sqlite(SqliteFacts),
}

impl BenchServer {
    /// The server (or directory) `url` names. An SQLite file is opened
    /// with `synchronous` (`--sqlite-synchronous` of the benchmark), unless
    /// `serve_args`, the extra flags every replica gets, say otherwise.
    pub fn of_url(
        url: &str,
        synchronous: Synchronous,
        serve_args: &[String],
    ) -> anyhow::Result<BenchServer> {
        match Backend::of_url(url) {
            Some(Backend::Postgres) => Ok(BenchServer::Postgres {
                url: url.to_string(),
            }),
            Some(Backend::Sqlite) => {
                let dir = lite::bench_directory(url).ok_or_else(|| {
                    anyhow!("--database-url {url}: no file named (use sqlite://DIR/name.db)")
                })?;
                if !dir.is_dir() {
                    anyhow::bail!(
                        "--database-url {url}: the directory {} does not exist",
                        dir.display()
                    );
                }
                Ok(BenchServer::Sqlite {
                    dir,
                    options: sqlite_options(synchronous, serve_args),
                })
            }
            None => Err(anyhow!(
                "--database-url {}: unknown scheme (use {SCHEMES})",
                redact_url(url)
            )),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            BenchServer::Postgres { .. } => Backend::Postgres,
            BenchServer::Sqlite { .. } => Backend::Sqlite,
        }
    }

    /// The backend's name, for the report.
    pub fn name(&self) -> &'static str {
        match self {
            BenchServer::Postgres { .. } => "PostgreSQL",
            BenchServer::Sqlite { .. } => "SQLite",
        }
    }

    /// True when the database runs inside each replica, with no server
    /// processes of its own: a replica's CPU is then all the service uses.
    pub fn embedded(&self) -> bool {
        matches!(self, BenchServer::Sqlite { .. })
    }

    /// Whether several replicas can share one database here; the reason
    /// when they cannot.
    pub fn several_replicas(&self) -> Result<(), &'static str> {
        match self {
            BenchServer::Postgres { .. } => Ok(()),
            BenchServer::Sqlite { .. } => Err(NEEDS_A_SERVER),
        }
    }

    /// The flags a replica needs to open its store as described by
    /// [`BenchServer::facts`] (before the user's `--serve-arg`s).
    pub fn replica_flags(&self) -> Vec<String> {
        match self {
            BenchServer::Postgres { .. } => Vec::new(),
            BenchServer::Sqlite { options, .. } => vec![
                "--sqlite-synchronous".to_string(),
                options
                    .synchronous
                    .to_possible_value()
                    .map_or_else(|| "normal".to_string(), |v| v.get_name().to_string()),
            ],
        }
    }

    /// The URL a replica serves benchmark database `name` with.
    pub fn database_url(&self, name: &str) -> anyhow::Result<String> {
        match self {
            BenchServer::Postgres { url } => pg::bench_database_url(url, name)
                .map_err(|e| anyhow!("--database-url {}: {e}", redact_url(url))),
            BenchServer::Sqlite { dir, .. } => Ok(lite::bench_database_url(dir, name)),
        }
    }

    /// Database `name` as the operator finds it: `database <name>` on a
    /// server, `file <path>` on SQLite.
    pub fn describe_database(&self, name: &str) -> String {
        match self {
            BenchServer::Postgres { .. } => format!("database {name}"),
            BenchServer::Sqlite { dir, .. } => {
                format!("file {}", lite::bench_database_path(dir, name).display())
            }
        }
    }

    /// The version and settings for the report. On SQLite it opens (and
    /// removes) the benchmark file `probe` as a replica would open it; a
    /// server is asked through its maintenance database.
    pub async fn facts(&self, probe: &str, timeout: Duration) -> anyhow::Result<ServerFacts> {
        match self {
            BenchServer::Postgres { url } => pg::bench_server_facts(url)
                .await
                .map(ServerFacts::Postgres)
                .with_context(|| format!("cannot reach PostgreSQL at {}", redact_url(url))),
            BenchServer::Sqlite { dir, options } => {
                lite::bench_server_facts(dir, probe, options, timeout)
                    .await
                    .map(ServerFacts::Sqlite)
                    .with_context(|| format!("cannot make an SQLite file in {}", dir.display()))
            }
        }
    }

    /// Removes benchmark database `name` (`DROP DATABASE … WITH (FORCE)`,
    /// or the file and its `-wal`, `-shm` and `.lock`). Refuses names
    /// without [`BENCH_DATABASE_PREFIX`].
    pub async fn remove(&self, name: &str) -> anyhow::Result<()> {
        match self {
            BenchServer::Postgres { url } => Ok(pg::bench_database_drop(url, name).await?),
            BenchServer::Sqlite { dir, .. } => {
                lite::bench_database_remove(dir, name)?;
                // A replica killed a moment ago (Ctrl-C kills without
                // waiting) may still have been opening a connection.
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(lite::bench_database_remove(dir, name)?)
            }
        }
    }

    /// `ANALYZE` of benchmark database `name` (refused without the prefix).
    pub async fn analyze(&self, name: &str) -> anyhow::Result<()> {
        let url = self.database_url(name)?;
        match self {
            BenchServer::Postgres { .. } => Ok(pg::bench_database_analyze(&url).await?),
            BenchServer::Sqlite { .. } => Ok(lite::bench_database_analyze(&url).await?),
        }
    }
}

/// How a replica opens its SQLite file: with `synchronous`, or the last
/// `--sqlite-synchronous` of `serve_args`.
fn sqlite_options(synchronous: Synchronous, serve_args: &[String]) -> SqliteOptions {
    let mut options = SqliteOptions { synchronous };
    let mut args = serve_args.iter();
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--sqlite-synchronous") {
            Some(rest) if rest.starts_with('=') => Some(rest[1..].to_string()),
            Some("") => args.next().cloned(),
            _ => None,
        };
        if let Some(synchronous) = value.and_then(|v| Synchronous::from_str(&v, true).ok()) {
            options.synchronous = synchronous;
        }
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    const NORMAL: Synchronous = Synchronous::Normal;

    #[test]
    fn picks_the_backend_by_scheme() {
        let pg =
            BenchServer::of_url("postgres://postgres@localhost:5432/jobsd", NORMAL, &[]).unwrap();
        assert_eq!(pg.backend(), Backend::Postgres);
        assert!(pg.several_replicas().is_ok());
        assert!(!pg.embedded());
        assert_eq!(
            pg.database_url("jobsd_bench_x").unwrap(),
            "postgres://postgres@localhost:5432/jobsd_bench_x"
        );
        assert_eq!(
            pg.describe_database("jobsd_bench_x"),
            "database jobsd_bench_x"
        );

        let dir = std::env::temp_dir();
        let url = format!("sqlite://{}/whatever.db", dir.display());
        let lite = BenchServer::of_url(&url, NORMAL, &[]).unwrap();
        assert_eq!(lite.backend(), Backend::Sqlite);
        assert!(lite.embedded());
        assert_eq!(lite.several_replicas(), Err(NEEDS_A_SERVER));
        assert_eq!(lite.replica_flags(), ["--sqlite-synchronous", "normal"]);
        assert!(pg.replica_flags().is_empty());
        assert_eq!(
            lite.database_url("jobsd_bench_x_lag").unwrap(),
            format!("sqlite://{}", dir.join("jobsd_bench_x_lag.db").display())
        );
        assert_eq!(
            lite.describe_database("jobsd_bench_x_lag"),
            format!("file {}", dir.join("jobsd_bench_x_lag.db").display())
        );

        let err = BenchServer::of_url("sqlite:///no/such/dir/x.db", NORMAL, &[]).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = BenchServer::of_url("mysql://x", NORMAL, &[]).unwrap_err();
        assert!(err.to_string().contains("sqlite://"), "{err}");
    }

    #[test]
    fn reads_the_replicas_synchronous_setting() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let full = Synchronous::Full;
        assert_eq!(sqlite_options(NORMAL, &[]).synchronous, NORMAL);
        assert_eq!(sqlite_options(full, &[]).synchronous, full);
        assert_eq!(
            sqlite_options(NORMAL, &args(&["--sqlite-synchronous=full"])).synchronous,
            full
        );
        assert_eq!(
            sqlite_options(
                NORMAL,
                &args(&["--workers=5", "--sqlite-synchronous", "FULL"])
            )
            .synchronous,
            full
        );
        assert_eq!(
            sqlite_options(full, &args(&["--sqlite-synchronous=normal"])).synchronous,
            NORMAL
        );
        assert_eq!(
            sqlite_options(NORMAL, &args(&["--sqlite-synchronous-x=full"])).synchronous,
            NORMAL
        );
    }
}
