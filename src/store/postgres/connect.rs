//! Connecting: create the database when it does not exist, and turn every
//! failure into one line an operator can act on (password hidden).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use super::PgStore;
use crate::store::connect::ConnectError;

const START_HINT: &str = "Start PostgreSQL (e.g. `pg_ctlcluster 15 main start`, or `docker compose up -d postgres`) or point --database-url / DATABASE_URL at a running server";

impl PgStore {
    /// Connects to `url`, creating the database first if it does not exist.
    /// Gives up after `timeout` with a [`ConnectError`].
    pub async fn connect(
        url: &str,
        max_connections: u32,
        timeout: Duration,
        events: bool,
    ) -> Result<PgStore, ConnectError> {
        let error = |reason: String, hint| ConnectError::new(url, reason, hint);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(error(
                "invalid database URL (it must start with postgres://)".into(),
                "Use the form postgres://user:password@host:5432/dbname",
            ));
        }
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| {
                error(
                    format!("invalid database URL ({e})"),
                    "Use the form postgres://user:password@host:5432/dbname",
                )
            })?
            .log_statements(tracing::log::LevelFilter::Trace);
        // Read by the event triggers (migrations/postgres/0010_events.sql).
        let options = if events {
            options
        } else {
            options.options([("jobsd.events", "off")])
        };
        // Connections are opened ahead (in the background, half the pool)
        // so a burst right after start-up does not wait for them.
        let pool_options = || {
            PgPoolOptions::new()
                .max_connections(max_connections)
                .min_connections(max_connections / 2)
                .acquire_timeout(timeout)
        };
        match pool_options().connect_with(options.clone()).await {
            Ok(pool) => Ok(PgStore::from_pool(pool)),
            Err(e) if is_missing_database(&e) => {
                create_database(&options, timeout)
                    .await
                    .map_err(|e| error(describe(&e), START_HINT))?;
                let pool = pool_options()
                    .connect_with(options)
                    .await
                    .map_err(|e| error(describe(&e), START_HINT))?;
                Ok(PgStore::from_pool(pool))
            }
            Err(e) => Err(error(describe(&e), START_HINT)),
        }
    }
}

fn is_missing_database(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000"))
}

fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::PoolTimedOut => {
            "timed out connecting (is the server running and reachable?)".into()
        }
        sqlx::Error::Io(io) => format!("{io}"),
        other => other.to_string(),
    }
}

/// Creates the database named in `options` through the `postgres` database.
/// Another replica creating it at the same moment is not an error.
async fn create_database(options: &PgConnectOptions, timeout: Duration) -> Result<(), sqlx::Error> {
    let name = options.get_database().unwrap_or("postgres").to_string();
    let admin = options.clone().database("postgres");
    let mut conn = tokio::time::timeout(timeout, admin.connect())
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    let statement = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    let result = sqlx::query(&statement).execute(&mut conn).await;
    let _ = conn.close().await;
    match result {
        Ok(_) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04") | Some("23505")) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}
