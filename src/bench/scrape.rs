//! A Prometheus-like scraper of `GET /metrics` beside a scenario
//! (`--scrape-metrics-per-second`): to show what scraping costs the
//! measured work. One scrape at a time (as Prometheus scrapes a target);
//! a tick that finds the previous scrape still running is skipped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// What the scraper did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Scraped {
    /// Scrapes answered 200 with the metrics.
    pub ok: u64,
    /// Scrapes refused, failed or without the metrics.
    pub failed: u64,
    /// The slowest answered scrape.
    pub slowest: Duration,
    /// How long it scraped.
    pub over: Duration,
}

impl Scraped {
    pub(crate) fn per_second(&self) -> f64 {
        self.ok as f64 / self.over.as_secs_f64().max(1e-9)
    }
}

pub(crate) struct Scraper {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Scraped>,
}

impl Scraper {
    /// Scrapes `{base}/metrics` `per_second` times a second until stopped.
    pub(crate) fn start(base: &str, per_second: u32) -> anyhow::Result<Scraper> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building an HTTP client")?;
        let url = format!("{base}/metrics");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let every = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        let task = tokio::spawn(async move {
            let began = Instant::now();
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut slowest = Duration::ZERO;
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            while !stopped.load(Ordering::Acquire) {
                ticks.tick().await;
                let sent = Instant::now();
                let answered = match http.get(&url).send().await {
                    Ok(resp) if resp.status().is_success() => resp
                        .text()
                        .await
                        .map(|body| body.contains("jobsd_runs_queued"))
                        .unwrap_or(false),
                    _ => false,
                };
                if answered {
                    ok += 1;
                    slowest = slowest.max(sent.elapsed());
                } else {
                    failed += 1;
                }
            }
            Scraped {
                ok,
                failed,
                slowest,
                over: began.elapsed(),
            }
        });
        Ok(Scraper { stop, task })
    }

    /// Stops after the scrape under way, and says what it did.
    pub(crate) async fn stop(self) -> Scraped {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap_or_default()
    }
}
