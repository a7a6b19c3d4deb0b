//! Alerts (issue #13 §3; README "Alerts"): `alert.failing`,
//! `alert.recovered`, `alert.missed`, `alert.overrun` and `alert.dead_man`,
//! each an event (so webhooks deliver them) and shown on the job as
//! `alerts_open`.
//!
//! - [`rules`]: what raises, throttles and closes an alert; pure.
//! - [`settings`]: a job's `alerts` field and the service's defaults.
//! - [`config`]: the `--alert-*` flags.
//! - [`evaluator`]: the feed that follows the events on every replica and
//!   checks the clock, raising each alert once.

pub mod config;
pub mod evaluator;
pub mod rules;
pub mod settings;

pub use evaluator::Evaluator;
