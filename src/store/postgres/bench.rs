//! The only SQL the benchmark (`jobsd bench`) needs on PostgreSQL: name,
//! drop and analyse the throw-away databases it makes (the burst
//! scenario's quiet period ends with `ANALYZE`), and read a few server
//! settings for its report. The benchmark reaches these through
//! [`crate::store::bench`], which picks the backend by URL scheme.
//!
//! Dropping and reading settings connect to the `postgres` maintenance
//! database of the server named by a URL (as database creation in
//! `connect.rs` does), never to the database in the URL; analysing connects
//! to the benchmark database the URL names. Both `bench_database_drop` and
//! `bench_database_analyze` refuse any name that does not start with
//! [`BENCH_DATABASE_PREFIX`], so a benchmark cannot touch a real `jobsd`
//! database.

use std::str::FromStr;

use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

pub use crate::store::bench::BENCH_DATABASE_PREFIX;

/// PostgreSQL settings that shape the benchmark's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PostgresFacts {
    pub server_version: String,
    pub shared_buffers: String,
    pub synchronous_commit: String,
    pub fsync: String,
    pub max_connections: String,
}

/// Refuses a database name without the benchmark prefix.
fn bench_database_check(name: &str, doing: &str) -> Result<(), sqlx::Error> {
    if name.starts_with(BENCH_DATABASE_PREFIX) {
        Ok(())
    } else {
        Err(sqlx::Error::Protocol(format!(
            "refusing to {doing} {name:?}: not a benchmark database ({BENCH_DATABASE_PREFIX}*)"
        )))
    }
}

/// `url` (a server's) naming database `name` instead of its own; query
/// parameters are kept.
pub fn bench_database_url(url: &str, name: &str) -> Result<String, String> {
    let mut parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}

async fn maintenance_connection(url: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnectOptions::from_str(url)?
        .database("postgres")
        .log_statements(tracing::log::LevelFilter::Trace)
        .connect()
        .await
}

/// Drops the benchmark database `name` on the server of `url`, closing its
/// remaining connections (`WITH (FORCE)`, PostgreSQL 13+). Refuses names
/// without the benchmark prefix.
pub async fn bench_database_drop(url: &str, name: &str) -> Result<(), sqlx::Error> {
    bench_database_check(name, "drop")?;
    let mut conn = maintenance_connection(url).await?;
    let statement = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    );
    let result = sqlx::query(&statement).execute(&mut conn).await;
    let _ = conn.close().await;
    result.map(|_| ())
}

/// Updates the planner statistics of every table of the benchmark database
/// `url` names (`ANALYZE`, as autovacuum or an operator would). Refuses
/// databases without the benchmark prefix.
pub async fn bench_database_analyze(url: &str) -> Result<(), sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    bench_database_check(options.get_database().unwrap_or_default(), "analyse")?;
    let mut conn = options
        .log_statements(tracing::log::LevelFilter::Trace)
        .connect()
        .await?;
    let result = sqlx::query("ANALYZE").execute(&mut conn).await;
    let _ = conn.close().await;
    result.map(|_| ())
}

/// The server's version and the settings that matter for throughput.
pub async fn bench_server_facts(url: &str) -> Result<PostgresFacts, sqlx::Error> {
    let mut conn = maintenance_connection(url).await?;
    let mut facts = Vec::with_capacity(5);
    for setting in [
        "server_version",
        "shared_buffers",
        "synchronous_commit",
        "fsync",
        "max_connections",
    ] {
        let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&mut conn)
            .await?;
        facts.push(value);
    }
    let _ = conn.close().await;
    let mut facts = facts.into_iter();
    let mut next = || facts.next().unwrap_or_default();
    Ok(PostgresFacts {
        server_version: next(),
        shared_buffers: next(),
        synchronous_commit: next(),
        fsync: next(),
        max_connections: next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_bench_database_on_the_same_server() {
        assert_eq!(
            bench_database_url("postgres://postgres@localhost:5432/jobsd", "jobsd_bench_x")
                .unwrap(),
            "postgres://postgres@localhost:5432/jobsd_bench_x"
        );
        assert_eq!(
            bench_database_url(
                "postgres://u:p@db/postgres?sslmode=disable",
                "jobsd_bench_x"
            )
            .unwrap(),
            "postgres://u:p@db/jobsd_bench_x?sslmode=disable"
        );
        assert!(bench_database_url("not a url", "x").is_err());
    }

    #[tokio::test]
    async fn refuses_to_drop_or_analyse_a_non_benchmark_database() {
        // Refused before any connection is attempted.
        let err = bench_database_drop("postgres://nobody@127.0.0.1:1/x", "jobsd")
            .await
            .expect_err("refused");
        assert!(
            err.to_string().contains("not a benchmark database"),
            "{err}"
        );
        let err = bench_database_analyze("postgres://nobody@127.0.0.1:1/jobsd")
            .await
            .expect_err("refused");
        assert!(
            err.to_string().contains("not a benchmark database"),
            "{err}"
        );
    }
}
