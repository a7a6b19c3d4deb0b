//! The events outbox (`events`, written by triggers; see the migrations)
//! and stream tickets, as the stores read and write them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::event_types::TypeFilter;

/// Where an event is in the order every reader sees: the writing
/// transaction, the row within it, the event within the row (PostgreSQL
/// writes one row per statement; the embedded store one per event, with
/// `tx` and `ord` always 0). Its text form is the API's cursor
/// (`crate::events::cursor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventPosition {
    pub tx: i64,
    pub seq: i64,
    pub ord: i64,
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
    /// The event's own data, for events that carry it (a batch's
    /// summary); None for run and job events, whose data is assembled
    /// from the run or job when read.
    pub data: Option<serde_json::Value>,
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

impl EventQuery {
    /// Whether `event` passes the query's filters (its position aside).
    pub fn matches(&self, event: &EventRow) -> bool {
        self.types.matches(&event.event_type)
            && self
                .job_id
                .as_ref()
                .is_none_or(|j| event.job_id.as_ref() == Some(j))
            && self.run_id.is_none_or(|r| event.run_id == Some(r))
    }

    /// Whether `position` comes after the query's cursor, in its order.
    pub fn is_beyond_cursor(&self, position: EventPosition) -> bool {
        match self.after {
            None => true,
            Some(after) if self.descending => position < after,
            Some(after) => position > after,
        }
    }
}

/// One page of events, and how far the read got: the position of the last
/// event it looked at, matching or not (`None`: it found none), from which
/// the next page goes on. A page may hold fewer than its limit while more
/// follow, when a read stops at its bound of events looked at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventPage {
    pub events: Vec<EventRow>,
    pub scanned_to: Option<EventPosition>,
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
