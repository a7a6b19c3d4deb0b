//! The `--alert-*` flags of `jobsd serve`: the service's defaults for jobs
//! that do not set their own `alerts`, and how often the clock is checked.

use std::time::Duration;

use clap::Args;

use super::settings::AlertDefaults;
use crate::config::parse_flag_duration;

/// Alert settings (README "Alerts").
#[derive(Debug, Clone, Args)]
pub struct AlertConfig {
    /// Raise `alert.failing` after this many failed runs of a job in a row
    /// (final failures, after their retries); `0`: never. A job's
    /// `alerts.failures_before_alert` replaces it.
    #[arg(long, env = "JOBSD_FAILURES_BEFORE_ALERT", default_value_t = 3)]
    pub failures_before_alert: u32,

    /// Raise `alert.dead_man` for a job with no successful run for this
    /// long (none by default; a job's `alerts.expect_success_within`
    /// replaces it).
    #[arg(long, env = "JOBSD_EXPECT_SUCCESS_WITHIN", value_parser = parse_flag_duration)]
    pub expect_success_within: Option<Duration>,

    /// Raise `alert.overrun` for a run running longer than this (none by
    /// default; a job's `alerts.max_duration` replaces it).
    #[arg(long, env = "JOBSD_MAX_DURATION", value_parser = parse_flag_duration)]
    pub max_duration: Option<Duration>,

    /// At most one alert per job and kind in this long.
    #[arg(long, env = "JOBSD_ALERT_INTERVAL", default_value = "1h", value_parser = parse_flag_duration)]
    pub alert_interval: Duration,

    /// How often one replica checks the clock-driven alerts (dead man,
    /// `max_duration`).
    #[arg(long, env = "JOBSD_ALERT_CHECK_INTERVAL", default_value = "10s", value_parser = parse_flag_duration)]
    pub alert_check_interval: Duration,
}

impl AlertConfig {
    pub fn defaults(&self) -> AlertDefaults {
        let chrono = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        AlertDefaults {
            failures_before_alert: self.failures_before_alert,
            expect_success_within: self
                .expect_success_within
                .filter(|d| !d.is_zero())
                .map(chrono),
            max_duration: self.max_duration.filter(|d| !d.is_zero()).map(chrono),
            alert_interval: chrono(self.alert_interval),
        }
    }
}
