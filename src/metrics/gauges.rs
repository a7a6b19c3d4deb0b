//! The gauges read from the database: queue depth, running runs, the
//! oldest due run's age, jobs by state, replicas alive. A scrape reads them
//! from the store at most once per [`REFRESH_EVERY`], and only one scrape
//! at a time does: the others (and every scrape in between) serve the last
//! values read. The reads are those of `GET /api/v1/stats`
//! (`Store::stats`: counters and partial indexes, never run history) and
//! of `GET /api/v1/instances` (a table of a few rows).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::StateLabel;
use crate::domain::{JobState, RunState};
use crate::store::stats::{queue_wait, totals_by_state};
use crate::store::{Store, StoreResult};

/// How old the database gauges may get before a scrape reads them again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// How long a scrape waits for the store before serving the last values.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// When the store was last read, and whether a read is under way.
#[derive(Debug, Default)]
pub(super) struct Refresh {
    last: Option<Instant>,
    in_flight: bool,
}

impl Refresh {
    /// Whether the scrape at `now` reads the store: when no read is under
    /// way and none began within `every` (a failed read counts, so a
    /// database that is down is not asked at every scrape). When it does,
    /// the read is marked as under way until [`Refresh::end`].
    pub(super) fn begin(&mut self, now: Instant, every: Duration) -> bool {
        if self.in_flight {
            return false;
        }
        if let Some(last) = self.last {
            if now.saturating_duration_since(last) < every {
                return false;
            }
        }
        self.in_flight = true;
        self.last = Some(now);
        true
    }

    pub(super) fn end(&mut self) {
        self.in_flight = false;
    }
}

/// Ends the read when dropped, even when the scrape is abandoned midway.
struct EndOnDrop<'a>(&'a Mutex<Refresh>);

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(mut refresh) = self.0.lock() {
            refresh.end();
        }
    }
}

pub(super) struct DbGauges {
    queued: Gauge,
    running: Gauge,
    oldest_queued_age: Gauge<f64, AtomicU64>,
    jobs: Family<StateLabel, Gauge>,
    instances_alive: Gauge,
    refresh: Mutex<Refresh>,
}

impl DbGauges {
    pub(super) fn register(registry: &mut Registry) -> DbGauges {
        let gauges = DbGauges {
            queued: Gauge::default(),
            running: Gauge::default(),
            oldest_queued_age: Gauge::default(),
            jobs: Family::default(),
            instances_alive: Gauge::default(),
            refresh: Mutex::default(),
        };
        registry.register(
            "jobsd_runs_queued",
            "Queued runs due now, waiting for a worker (retries still in their backoff not \
             counted); from the database, at most 5 s old",
            gauges.queued.clone(),
        );
        registry.register(
            "jobsd_runs_running",
            "Runs executing on any replica; from the database, at most 5 s old",
            gauges.running.clone(),
        );
        registry.register(
            "jobsd_oldest_queued_run_age_seconds",
            "How long the queued run due longest has waited for a worker (0 when none is \
             due); from the database, at most 5 s old",
            gauges.oldest_queued_age.clone(),
        );
        registry.register(
            "jobsd_jobs",
            "Jobs by state; from the database, at most 5 s old",
            gauges.jobs.clone(),
        );
        registry.register(
            "jobsd_instances_alive",
            "Replicas whose heartbeat is within two leases; from the database, at most 5 s old",
            gauges.instances_alive.clone(),
        );
        for state in JobState::ALL {
            let _ = gauges.jobs.get_or_create(&StateLabel::new(state.as_str()));
        }
        gauges
    }

    /// Reads the store when the values are older than [`REFRESH_EVERY`]
    /// and no other scrape is reading it; otherwise returns at once.
    pub(super) async fn refresh_if_stale(&self, store: &Store, alive_ms: i64) {
        let go = self
            .refresh
            .lock()
            .map(|mut r| r.begin(Instant::now(), REFRESH_EVERY))
            .unwrap_or(false);
        if !go {
            return;
        }
        let _end = EndOnDrop(&self.refresh);
        match tokio::time::timeout(READ_TIMEOUT, self.read(store, alive_ms)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: reading the database gauges failed; serving the last values")
            }
            Err(_) => tracing::warn!(
                "metrics: the database gauges took over {READ_TIMEOUT:?}; serving the last values"
            ),
        }
    }

    async fn read(&self, store: &Store, alive_ms: i64) -> StoreResult<()> {
        let stats = store.stats().await?;
        let instances = store.instance_list(alive_ms).await?;
        let runs = totals_by_state(RunState::ALL, &stats.runs);
        let running = runs
            .iter()
            .find(|(s, _)| *s == RunState::Running)
            .map_or(0, |(_, n)| *n);
        self.queued.set(stats.due_queued);
        self.running.set(running);
        let age = queue_wait(stats.oldest_due_run_after, stats.now)
            .and_then(|wait| wait.to_std().ok())
            .map_or(0.0, |wait| wait.as_secs_f64());
        self.oldest_queued_age.set(age);
        for (state, n) in totals_by_state(JobState::ALL, &stats.jobs) {
            self.jobs
                .get_or_create(&StateLabel::new(state.as_str()))
                .set(n);
        }
        let alive = instances.iter().filter(|i| i.alive).count();
        self.instances_alive
            .set(i64::try_from(alive).unwrap_or(i64::MAX));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(5);

    #[test]
    fn the_first_scrape_reads_and_later_ones_wait_out_the_interval() {
        let t0 = Instant::now();
        let mut refresh = Refresh::default();
        assert!(refresh.begin(t0, EVERY), "nothing read yet");
        refresh.end();
        assert!(!refresh.begin(t0 + Duration::from_secs(1), EVERY));
        assert!(!refresh.begin(t0 + Duration::from_millis(4999), EVERY));
        assert!(refresh.begin(t0 + EVERY, EVERY), "5 s later");
    }

    #[test]
    fn concurrent_scrapes_never_read_at_once() {
        let t0 = Instant::now();
        let mut refresh = Refresh::default();
        assert!(refresh.begin(t0, EVERY));
        // A read that takes longer than the interval: still one at a time.
        assert!(!refresh.begin(t0 + Duration::from_secs(6), EVERY));
        assert!(!refresh.begin(t0 + Duration::from_secs(60), EVERY));
        refresh.end();
        assert!(refresh.begin(t0 + Duration::from_secs(60), EVERY));
    }

    #[test]
    fn a_failed_or_abandoned_read_still_waits_out_the_interval() {
        let t0 = Instant::now();
        let refresh = Mutex::new(Refresh::default());
        {
            assert!(refresh.lock().unwrap().begin(t0, EVERY));
            // The scrape is dropped midway: the guard ends the read.
            let _end = EndOnDrop(&refresh);
        }
        let mut refresh = refresh.into_inner().unwrap();
        assert!(!refresh.in_flight);
        assert!(!refresh.begin(t0 + Duration::from_secs(1), EVERY));
        assert!(refresh.begin(t0 + EVERY, EVERY));
    }
}
