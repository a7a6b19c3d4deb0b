//! jobsd: a job-scheduling service on PostgreSQL, or on an embedded SQLite
//! file (one replica).
//!
//! The binary (`src/main.rs`) is a thin CLI over this library. Embedders
//! build a [`handlers::HandlerRegistry`] with their own handlers and call
//! [`app::serve`].

pub mod alerts;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod batches;
pub mod bench;
pub mod callbacks;
pub mod config;
pub mod default_jobs;
pub mod domain;
pub mod events;
pub mod guard;
pub mod handlers;
pub mod idempotency;
pub mod job_spec;
pub mod logging;
pub mod maintenance;
pub mod metrics;
pub mod redact;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod store;
pub mod webhooks;
pub mod worker;
