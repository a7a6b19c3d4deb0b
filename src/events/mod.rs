//! Events (SPEC §11, issue #13 §1): what happened, for the application to
//! learn of without polling runs.
//!
//! - **Stored as an outbox.** Each change's events are written in the
//!   transaction that makes it: an event exists if and only if its change
//!   committed. On PostgreSQL the statements that move runs and change
//!   jobs write their events themselves (`events_cte` in the PostgreSQL
//!   store), and a trigger those of the service state; on the embedded
//!   store triggers write them all (see the migrations).
//! - **Compact.** An event is its type, time, ids and transition
//!   (`from_state`, `reason`, `attempt`); the API adds `data`, the run or
//!   job as it shows them now, when it reads (`crate::api` events).
//! - **One order, one cursor.** [`cursor`] encodes a position every reader
//!   agrees on and that later commits never land behind (the PostgreSQL
//!   migration explains the horizon that makes this so).
//! - **Read as they come.** [`feed::EventHub`] wakes this process's readers
//!   on one payload-free notification per transaction (PostgreSQL) or the
//!   writer's commit hook (SQLite); readers read the table.
//! - **Pruned** with the retention of runs (`crate::retention`).

pub mod cursor;
pub mod feed;
pub mod listener;
pub mod tickets;

pub use crate::domain::event_types as types;

pub use feed::{EventHub, EventReader};
pub use listener::EventListener;
