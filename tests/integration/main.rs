//! Integration tests: a real jobsd against a real database, one fresh
//! database per test: PostgreSQL, or the embedded SQLite store with
//! `JOBSD_TEST_BACKEND=sqlite` (see `support::backend`). The store
//! conformance suite (`conformance`) runs on both in every run.

mod alerts;
mod audit;
mod auth;
mod bad_input;
mod batches;
mod batches_replicas;
mod bench;
mod callbacks;
mod conformance;
mod default_jobs;
mod embedded_cli;
mod embedded_crash;
mod events;
mod guards;
mod idempotency;
mod jobs_api;
mod logs;
mod metrics;
mod plans;
mod replicas;
mod retention;
mod robustness;
mod runs;
mod scheduling;
mod secrets;
mod service_api;
mod sqlite_plans;
mod startup;
mod stats_api;
mod support;
mod webhooks;
