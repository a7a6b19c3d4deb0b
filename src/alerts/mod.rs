//! Alerts (issue #13 §3): `alert.failing`, `alert.recovered`,
//! `alert.missed`, `alert.overrun` and `alert.dead_man`, each an event.
//!
//! Built so far: the rules ([`rules`]), pure and unit tested: what raises
//! an alert, once per episode, throttled to one per kind and job per
//! `alert_interval`, and what closes it (a success, or a change of the
//! job). Not built yet: the job fields and service defaults, the store of
//! each job's [`rules::AlertState`], and the evaluator, which follows the
//! event feed from a stored cursor (held by one replica at a time under a
//! lease, advanced in the transaction that writes the alerts) and checks
//! the clock-driven kinds (dead man, `max_duration`) in the same loop.

pub mod rules;
