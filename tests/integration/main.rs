//! Integration tests: a real jobsd against a real PostgreSQL, one fresh
//! database per test.

mod bad_input;
mod bench;
mod default_jobs;
mod jobs_api;
mod plans;
mod replicas;
mod robustness;
mod runs;
mod scheduling;
mod service_api;
mod startup;
mod support;
