//! Opening a store from its URL, and the one-line errors an operator sees
//! when that fails (passwords hidden).

use std::time::Duration;

use super::{PgStore, SqliteOptions, SqliteStore, Store};

/// Why the service could not reach its database, as one readable line.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the database at {url}: {reason}. {hint}")]
pub struct ConnectError {
    pub url: String,
    pub reason: String,
    hint: &'static str,
}

impl ConnectError {
    pub(crate) fn new(url: &str, reason: String, hint: &'static str) -> Self {
        ConnectError {
            url: redact_url(url),
            reason,
            hint,
        }
    }
}

/// The schemes a database URL may have.
pub const SCHEMES: &str = "postgres://, postgresql:// or sqlite://";

/// The backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else {
            None
        }
    }
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub sqlite: SqliteOptions,
    /// Whether this process's writes record events (`--no-events` turns
    /// them off, on PostgreSQL only, to measure what they cost).
    pub events: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sqlite: SqliteOptions::default(),
            events: true,
        }
    }
}

impl Store {
    /// Opens the store `url` names: PostgreSQL (creating the database if it
    /// does not exist) or the embedded SQLite file (created if missing).
    /// Gives up after `timeout` with a [`ConnectError`].
    pub async fn connect(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Store, ConnectError> {
        Self::connect_with(url, max_connections, timeout, &StoreOptions::default()).await
    }

    /// [`Store::connect`] with settings.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        timeout: Duration,
        options: &StoreOptions,
    ) -> Result<Store, ConnectError> {
        match Backend::of_url(url) {
            Some(Backend::Postgres) => Ok(Store::Postgres(
                PgStore::connect(url, max_connections, timeout, options.events).await?,
            )),
            Some(Backend::Sqlite) if !options.events => Err(ConnectError::new(
                url,
                "--no-events is a PostgreSQL measurement switch".into(),
                "Drop --no-events: the embedded store always writes events",
            )),
            Some(Backend::Sqlite) => Ok(Store::Sqlite(
                SqliteStore::open(url, max_connections, timeout, &options.sqlite).await?,
            )),
            None => Err(ConnectError::new(
                url,
                format!("unknown database URL scheme (use {SCHEMES})"),
                "e.g. postgres://user:password@host:5432/jobsd, or sqlite://./jobsd.db for the embedded store",
            )),
        }
    }
}

/// The URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{userinfo}@{host}{tail}")
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn hides_password() {
        assert_eq!(
            redact_url("postgres://bob:secret@db:5432/jobsd"),
            "postgres://bob:***@db:5432/jobsd"
        );
        assert_eq!(
            redact_url("postgres://postgres@localhost/jobsd"),
            "postgres://postgres@localhost/jobsd"
        );
        assert_eq!(
            redact_url("postgres://localhost/x"),
            "postgres://localhost/x"
        );
        assert_eq!(redact_url("p@ss:word"), "p@ss:word");
    }
}
