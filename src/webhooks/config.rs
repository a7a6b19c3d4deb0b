//! The `--webhook-*` flags of `jobsd serve`.

use std::time::Duration;

use clap::Args;

use crate::config::parse_flag_duration;

/// Webhook delivery settings (README "Webhooks").
#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// The waits before the 2nd, 3rd, ... attempts of a failed delivery
    /// (each moved by up to 10 % either way); after the last, it gives up.
    /// The default is the Standard Webhooks schedule; shorter ones are for
    /// tests.
    #[arg(
        long,
        env = "JOBSD_WEBHOOK_RETRY_DELAYS",
        value_delimiter = ',',
        value_parser = parse_flag_duration,
        default_value = "5s,5m,30m,2h,5h,10h,10h"
    )]
    pub webhook_retry_delays: Vec<Duration>,

    /// How long one delivery attempt may take, answer included.
    #[arg(long, env = "JOBSD_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = parse_flag_duration)]
    pub webhook_timeout: Duration,
}
