//! The events outbox (`events`, written by triggers; see the migrations)
//! and stream tickets, as the stores read and write them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::event_types::TypeFilter;

/// Where an event is in the order every reader sees: the writing
/// transaction, then the sequence within it (the embedded store has one
/// writer, and its `tx` is always 0). Its text form is the API's cursor
/// (`crate::events::cursor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventPosition {
    pub tx: i64,
    pub seq: i64,
}

/// One stored event: a transition and its ids.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub position: EventPosition,
    pub event_type: String,
    pub at: DateTime<Utc>,
    pub job_id: Option<String>,
    pub run_id: Option<Uuid>,
    pub instance: Option<String>,
    /// The run's attempt after the change.
    pub attempt: Option<i32>,
    /// The state it left (a run's or a job's).
    pub from_state: Option<String>,
    /// Why (a run's history reason).
    pub reason: Option<String>,
}

/// Which events to read, and from where.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub types: TypeFilter,
    pub job_id: Option<String>,
    pub run_id: Option<Uuid>,
    /// Strictly after this position (before it, when `descending`).
    pub after: Option<EventPosition>,
    /// Newest first.
    pub descending: bool,
    pub limit: i64,
}

/// A stream ticket as stored: the SHA-256 of its secret is the key.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketRow {
    /// The token that made it (`None` with auth off).
    pub token_id: Option<Uuid>,
    /// The stream it is for: its filters, in their canonical form.
    pub query: String,
    pub expires_at: DateTime<Utc>,
    /// Whether its token has been revoked or has expired since.
    pub token_revoked: bool,
}

/// Wake-ups for the readers of one process: the next commit that wrote
/// events (on any replica, on PostgreSQL). A wake may come before the
/// events are visible (PostgreSQL's horizon, SQLite's commit hook), and one
/// may be lost (a reconnect): readers re-read after a wake and poll too.
pub enum EventWakes {
    Postgres(sqlx::postgres::PgListener),
    Sqlite(tokio::sync::watch::Receiver<u64>),
}

impl EventWakes {
    pub async fn next(&mut self) {
        match self {
            EventWakes::Postgres(listener) => {
                if let Err(e) = listener.recv().await {
                    tracing::warn!(error = %e, "the events listener failed; readers poll until it reconnects");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
            EventWakes::Sqlite(commits) => {
                if commits.changed().await.is_err() {
                    // The store is gone: nothing will wake us again.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}
