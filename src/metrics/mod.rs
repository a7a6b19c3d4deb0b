//! Prometheus metrics: `GET /metrics` in the OpenMetrics text format
//! (`prometheus-client`), README "Metrics".
//!
//! Two kinds:
//! - Counters and histograms of what THIS replica did, incremented where it
//!   happens: run outcomes and retries (the workers), schedule lag (a
//!   worker starting a run), missed times (the scheduler firing, a claim
//!   finding a run too late), expired leases (the supervisor), API
//!   requests (a layer in front of every route). Prometheus sums them
//!   across replicas (`sum without (instance) (...)`).
//! - Gauges of the whole service read from the database
//!   ([`gauges::DbGauges`]): at most every 5 s, by one scrape at a time,
//!   served from a cache in between. The pool's connections are read at
//!   every scrape (from sqlx, no round trip).
//!
//! The run path stays cheap: a run looks up its handler's counters and
//! histogram by name in a map (a read lock, no allocation; the first run
//! of a handler creates them), and no lock is held across an await.

mod gauges;
pub mod http;
pub mod labels;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::domain::{RunState, Trigger};
use crate::store::{RunRow, Store};
pub use labels::MissedReason;

/// Buckets of run durations, in seconds: 5 ms to an hour.
const RUN_DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Buckets of schedule lag, in seconds: 1 ms to 5 minutes (so that a p99
/// around the 1 s alert threshold is resolved).
const LAG_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Buckets of API latency, in seconds: 1 ms to 10 s.
const HTTP_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

fn run_duration_histogram() -> Histogram {
    Histogram::new(RUN_DURATION_BUCKETS.iter().copied())
}

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS.iter().copied())
}

/// The run states a run's end is counted in (`jobsd_runs_total{state}`),
/// created for every handler at its first run so that each series exists
/// from 0.
const ENDS: [RunState; 4] = [
    RunState::Succeeded,
    RunState::Failed,
    RunState::TimedOut,
    RunState::Cancelled,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    handler: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabel {
    handler: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabel {
    trigger: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The series of `jobsd_batch_rows_total`, each from 0.
pub const BATCH_ROW_ENDS: [&str; 4] = ["success", "failed", "aborted", "retried"];

/// The results of `jobsd_webhook_deliveries_total`, each from 0.
const WEBHOOK_RESULTS: [&str; 4] = ["delivered", "failed", "gave_up", "disabled"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// `{state}`, for jobs by state and pool connections.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

impl StateLabel {
    fn new(state: &'static str) -> StateLabel {
        StateLabel { state }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRouteLabels {
    method: &'static str,
    route: String,
}

/// One handler's series, looked up once per run.
pub struct HandlerMetrics {
    handler: String,
    /// One counter per state of [`ENDS`], in its order.
    ends: Vec<Counter>,
    duration: Histogram,
    runs: Family<RunLabels, Counter>,
}

impl HandlerMetrics {
    /// Counts a run of this handler that ended in `state`, and observes
    /// how long it ran when known.
    pub fn ended(&self, state: RunState, ran: Option<Duration>) {
        match ENDS.iter().position(|s| *s == state) {
            Some(i) => {
                self.ends[i].inc();
            }
            None => {
                self.runs
                    .get_or_create(&RunLabels {
                        handler: self.handler.clone(),
                        state: state.as_str(),
                    })
                    .inc();
            }
        }
        if let Some(ran) = ran {
            self.duration.observe(ran.as_secs_f64());
        }
    }
}

struct Inner {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    run_duration: Family<HandlerLabel, Histogram, fn() -> Histogram>,
    /// By handler name: created at a handler's first run.
    handlers: RwLock<HashMap<String, Arc<HandlerMetrics>>>,
    /// One per [`Trigger::ALL`], in its order.
    lag: Vec<Histogram>,
    /// One per [`MissedReason::ALL`], in its order.
    missed: Vec<Counter>,
    lease_expiries: Counter,
    retries: Counter,
    webhook_deliveries: Family<ResultLabel, Counter>,
    alerts: Family<KindLabel, Counter>,
    batches_created: Counter,
    batch_rows: Family<StateLabel, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpRouteLabels, Histogram, fn() -> Histogram>,
    pool_idle: Gauge,
    pool_in_use: Gauge,
    db: gauges::DbGauges,
}

/// The registry and every series; cheap to clone (one per replica, shared
/// by the API, the workers, the scheduler and the supervisor).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = <Registry>::default();
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "jobsd_runs",
            "Runs that reached a final state, recorded by this replica (its workers' outcomes, \
             the runs its supervisor ended after their lease expired, API cancels and overrides)",
            runs.clone(),
        );
        let run_duration =
            Family::<HandlerLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                run_duration_histogram,
            );
        registry.register(
            "jobsd_run_duration_seconds",
            "How long runs executed on this replica ran, from start to finish, by handler",
            run_duration.clone(),
        );
        let lag_family =
            Family::<TriggerLabel, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(LAG_BUCKETS.iter().copied())
            });
        registry.register(
            "jobsd_schedule_lag_seconds",
            "started_at - scheduled_for of first attempts started on this replica: schedule to \
             start latency, by trigger",
            lag_family.clone(),
        );
        let lag = Trigger::ALL
            .iter()
            .map(|t| {
                lag_family
                    .get_or_create(&TriggerLabel {
                        trigger: t.as_str(),
                    })
                    .clone()
            })
            .collect();
        let missed_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "jobsd_missed",
            "Scheduled times recorded as missed by this replica, by reason",
            missed_family.clone(),
        );
        let missed = MissedReason::ALL
            .iter()
            .map(|r| {
                missed_family
                    .get_or_create(&ReasonLabel { reason: r.as_str() })
                    .clone()
            })
            .collect();
        let lease_expiries = Counter::default();
        registry.register(
            "jobsd_lease_expiries",
            "Running runs whose lease expired (their replica died or lost the database), \
             rescued by this replica",
            lease_expiries.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "jobsd_retries",
            "Runs queued again for another attempt by this replica: after a failure or a \
             timeout, or after their lease expired",
            retries.clone(),
        );
        let webhook_deliveries = Family::<ResultLabel, Counter>::default();
        registry.register(
            "jobsd_webhook_deliveries",
            "Webhook delivery attempts recorded by this replica, by result: delivered (a 2xx \
             answer), failed (retried later), gave_up (the last attempt failed), disabled (the \
             attempt disabled its webhook: a 410 answer, or 5 days of failures)",
            webhook_deliveries.clone(),
        );
        for result in WEBHOOK_RESULTS {
            let _ = webhook_deliveries.get_or_create(&ResultLabel { result });
        }
        let alerts = Family::<KindLabel, Counter>::default();
        registry.register(
            "jobsd_alerts",
            "Alerts raised by this replica's alert feed, by kind (failing, recovered, missed, \
             overrun, dead_man); each alert is raised by one replica",
            alerts.clone(),
        );
        for kind in crate::alerts::rules::AlertKind::ALL {
            let _ = alerts.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        let batches_created = Counter::default();
        registry.register(
            "jobsd_batches_created",
            "Batches submitted through this replica",
            batches_created.clone(),
        );
        let batch_rows = Family::<StateLabel, Counter>::default();
        registry.register(
            "jobsd_batch_rows",
            "Batch row attempts ended by this replica's workers, by what followed: success, \
             failed, aborted (cancelled by an abort), retried (queued again after a failure or \
             a timeout)",
            batch_rows.clone(),
        );
        for state in BATCH_ROW_ENDS {
            let _ = batch_rows.get_or_create(&StateLabel::new(state));
        }
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "jobsd_http_requests",
            "HTTP requests answered by this replica, by method, route template and status",
            http_requests.clone(),
        );
        let http_duration =
            Family::<HttpRouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                http_histogram,
            );
        registry.register(
            "jobsd_http_request_duration_seconds",
            "Time to answer HTTP requests on this replica (until the response head), by method \
             and route template",
            http_duration.clone(),
        );
        let pool = Family::<StateLabel, Gauge>::default();
        registry.register(
            "jobsd_db_pool_connections",
            "This replica's open database connections, idle or in use",
            pool.clone(),
        );
        let pool_idle = pool.get_or_create(&StateLabel::new("idle")).clone();
        let pool_in_use = pool.get_or_create(&StateLabel::new("in_use")).clone();
        let build = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "jobsd_build_info",
            "This replica's jobsd version (always 1)",
            build.clone(),
        );
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let db = gauges::DbGauges::register(&mut registry);
        Metrics {
            inner: Arc::new(Inner {
                registry,
                runs,
                run_duration,
                handlers: RwLock::default(),
                lag,
                missed,
                lease_expiries,
                retries,
                webhook_deliveries,
                alerts,
                batches_created,
                batch_rows,
                http_requests,
                http_duration,
                pool_idle,
                pool_in_use,
                db,
            }),
        }
    }

    /// `handler`'s series (created at its first use).
    pub fn handler(&self, handler: &str) -> Arc<HandlerMetrics> {
        if let Ok(handlers) = self.inner.handlers.read() {
            if let Some(found) = handlers.get(handler) {
                return found.clone();
            }
        }
        let created = Arc::new(HandlerMetrics {
            handler: handler.to_string(),
            ends: ENDS
                .iter()
                .map(|state| {
                    self.inner
                        .runs
                        .get_or_create(&RunLabels {
                            handler: handler.to_string(),
                            state: state.as_str(),
                        })
                        .clone()
                })
                .collect(),
            duration: self
                .inner
                .run_duration
                .get_or_create(&HandlerLabel {
                    handler: handler.to_string(),
                })
                .clone(),
            runs: self.inner.runs.clone(),
        });
        match self.inner.handlers.write() {
            Ok(mut handlers) => handlers
                .entry(handler.to_string())
                .or_insert(created)
                .clone(),
            Err(_) => created,
        }
    }

    /// A run that reached `state` without a duration known here (ended
    /// through the API, or by the supervisor after its lease expired).
    pub fn run_ended(&self, handler: &str, state: RunState) {
        if !state.is_active() {
            self.handler(handler).ended(state, None);
        }
    }

    /// A run starting here: its first attempt's schedule lag, by trigger
    /// (a retry's start is its backoff, not lag).
    pub fn run_started(&self, run: &RunRow) {
        if run.attempt != 1 {
            return;
        }
        let Some(started) = run.started_at else {
            return;
        };
        let Some(i) = Trigger::ALL.iter().position(|t| *t == run.trigger) else {
            return;
        };
        // Never negative (the two times may come from two clocks).
        let lag = (started - run.scheduled_for)
            .to_std()
            .unwrap_or(Duration::ZERO);
        self.inner.lag[i].observe(lag.as_secs_f64());
    }

    /// `count` scheduled times recorded as missed for `reason`.
    pub fn missed(&self, reason: MissedReason, count: u64) {
        if let Some(i) = MissedReason::ALL.iter().position(|r| *r == reason) {
            self.inner.missed[i].inc_by(count);
        }
    }

    /// Runs rescued after their lease expired.
    pub fn lease_expired(&self, count: u64) {
        self.inner.lease_expiries.inc_by(count);
    }

    /// A run queued again for another attempt.
    pub fn retried(&self) {
        self.inner.retries.inc();
    }

    /// A recorded webhook delivery attempt, by its result (one of
    /// `WEBHOOK_RESULTS`).
    /// A batch submitted here.
    pub fn batch_created(&self) {
        self.inner.batches_created.inc();
    }

    /// A batch row's attempt ended here (one of [`BATCH_ROW_ENDS`]).
    pub fn batch_row_ended(&self, end: &'static str) {
        self.inner
            .batch_rows
            .get_or_create(&StateLabel::new(end))
            .inc();
    }

    pub fn webhook_delivery(&self, result: &'static str) {
        self.inner
            .webhook_deliveries
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// An alert raised (and written) by this replica.
    pub fn alert_raised(&self, kind: crate::alerts::rules::AlertKind) {
        self.inner
            .alerts
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// An answered HTTP request.
    pub fn http_request(&self, method: &'static str, route: &str, status: u16, took: Duration) {
        self.inner
            .http_requests
            .get_or_create(&HttpLabels {
                method,
                route: route.to_string(),
                status,
            })
            .inc();
        self.inner
            .http_duration
            .get_or_create(&HttpRouteLabels {
                method,
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The scrape: the database gauges refreshed when stale (see
    /// [`gauges`]), the pool read, everything encoded.
    pub async fn render(&self, store: &Store, alive_ms: i64) -> String {
        self.inner.db.refresh_if_stale(store, alive_ms).await;
        let pool = store.pool_connections();
        self.inner.pool_idle.set(i64::from(pool.idle));
        self.inner.pool_in_use.set(i64::from(pool.in_use));
        self.encode()
    }

    /// Every series in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry) {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    #[test]
    fn a_handlers_series_exist_from_its_first_run_and_count_its_ends() {
        let metrics = Metrics::new();
        let log = metrics.handler("log");
        log.ended(RunState::Succeeded, Some(Duration::from_millis(30)));
        log.ended(RunState::Succeeded, None);
        metrics.run_ended("log", RunState::Missed);
        metrics.run_ended("log", RunState::Running); // not an end: ignored
        assert!(Arc::ptr_eq(&log, &metrics.handler("log")), "looked up once");
        let text = metrics.encode();
        assert_eq!(
            line_of(
                &text,
                "jobsd_runs_total{handler=\"log\",state=\"succeeded\"}"
            ),
            Some("jobsd_runs_total{handler=\"log\",state=\"succeeded\"} 2")
        );
        assert_eq!(
            line_of(&text, "jobsd_runs_total{handler=\"log\",state=\"failed\"}"),
            Some("jobsd_runs_total{handler=\"log\",state=\"failed\"} 0")
        );
        assert!(line_of(
            &text,
            "jobsd_runs_total{handler=\"log\",state=\"missed\"} 1"
        )
        .is_some());
        assert!(line_of(&text, "jobsd_runs_total{handler=\"log\",state=\"running\"}").is_none());
        assert_eq!(
            line_of(&text, "jobsd_run_duration_seconds_count{handler=\"log\"}"),
            Some("jobsd_run_duration_seconds_count{handler=\"log\"} 1")
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn fixed_series_exist_before_anything_happens() {
        let text = Metrics::new().encode();
        for start in [
            "jobsd_missed_total{reason=\"misfire_grace\"} 0",
            "jobsd_lease_expiries_total 0",
            "jobsd_retries_total 0",
            "jobsd_schedule_lag_seconds_count{trigger=\"schedule\"} 0",
            "jobsd_build_info{version=\"",
            "jobsd_db_pool_connections{state=\"idle\"}",
            "jobsd_jobs{state=\"paused\"} 0",
            "jobsd_runs_queued 0",
            "jobsd_instances_alive 0",
        ] {
            assert!(line_of(&text, start).is_some(), "{start} in\n{text}");
        }
    }
}
