//! The scheduler: turns due jobs into runs.
//!
//! Driven by the database, not by in-memory timers: [`Scheduler::run_once`]
//! locks a batch of due jobs (`FOR UPDATE SKIP LOCKED`), plans their runs
//! with [`plan::plan_firing`], and inserts the runs and advances
//! `next_run_at` in the same transaction — so any number of replicas fire
//! each scheduled time once. The loop around it sleeps until the next due
//! time (by database time), wakes at once on a `jobs_changed` notification,
//! and polls at least every `poll_interval` in case one was lost.

pub mod plan;

use std::time::Duration;

use chrono::Duration as ChronoDuration;
use tokio_util::sync::CancellationToken;

use crate::domain::RunState;
use crate::job_spec::schedule_of;
use crate::metrics::Metrics;
use crate::store::notify::{self, FireHint};
use crate::store::{ClaimSlots, Store, StoreResult};
use crate::worker::WorkerPool;
use plan::{plan_firing, DuePolicy};

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// This replica's name, recorded in run history.
    pub instance: String,
    /// Jobs claimed per transaction.
    pub batch_size: i64,
    /// Longest sleep without a notification.
    pub poll_interval: Duration,
}

pub struct Scheduler {
    store: Store,
    config: SchedulerConfig,
    local_workers: Option<WorkerPool>,
    metrics: Metrics,
}

impl Scheduler {
    pub fn new(store: Store, config: SchedulerConfig) -> Self {
        Scheduler {
            store,
            config,
            local_workers: None,
            metrics: Metrics::new(),
        }
    }

    /// Counts the scheduled times it records as missed in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Hands due runs straight to this replica's workers: as many as they
    /// have free slots are inserted claimed and start at once (no claim
    /// round trip between due time and start); the rest are queued, and
    /// the workers of every replica woken.
    pub fn with_local_workers(mut self, workers: WorkerPool) -> Self {
        self.local_workers = Some(workers);
        self
    }

    /// Fires one batch of due jobs. Returns how many jobs it processed.
    pub async fn run_once(&self) -> StoreResult<usize> {
        let batch = self.store.due_jobs_claim(self.config.batch_size).await?;
        let mut runs = Vec::new();
        let mut advances = Vec::with_capacity(batch.jobs.len());
        for job in &batch.jobs {
            let schedule = schedule_of(
                job.schedule_kind,
                job.interval_ms,
                job.cron.as_deref(),
                &job.timezone,
                job.start_at,
            );
            let Some(schedule) = schedule else {
                // Not a firing job (e.g. an unparsable stored cron): park it
                // rather than spin on it.
                tracing::error!(job_id = %job.job_id, "job has no valid schedule; clearing next_run_at");
                advances.push(crate::store::JobAdvance {
                    job_id: job.job_id.clone(),
                    next_run_at: None,
                    complete: false,
                });
                continue;
            };
            let policy = DuePolicy {
                misfire_grace: job.misfire_grace_ms.map(ChronoDuration::milliseconds),
                coalesce: job.coalesce,
                free_slots: (i64::from(job.max_instances) - job.runs.taken()).max(0) as usize,
                may_wait: job.runs.running > 0 && job.runs.waiting == 0,
            };
            let plan = plan_firing(&job.job_id, &schedule, job.next_run_at, job.db_now, &policy);
            for run in &plan.runs {
                tracing::debug!(job_id = %job.job_id, scheduled_for = %run.scheduled_for, state = %run.state, "fired");
                if run.state == RunState::Missed {
                    tracing::warn!(job_id = %job.job_id, reason = %run.reason, "missed scheduled run");
                }
            }
            runs.extend(plan.runs);
            advances.push(plan.advance);
        }
        let count = batch.jobs.len();
        let queued = runs.iter().filter(|r| r.state == RunState::Queued).count();
        let waiting: Vec<String> = runs
            .iter()
            .filter(|r| r.state == RunState::Waiting)
            .map(|r| r.job_id.clone())
            .collect();
        let reservation = self.local_workers.as_ref().map(|w| w.reserve(queued));
        let claim = reservation
            .as_ref()
            .map_or_else(|| ClaimSlots::none(&self.config.instance), |r| r.claim());
        let claimed = batch.commit(&runs, &advances, &claim).await?;
        for (reason, count) in runs.iter().filter_map(crate::metrics::labels::missed_of) {
            self.metrics.missed(reason, count);
        }
        let left_queued = queued > claimed.len();
        if let Some(reservation) = reservation {
            reservation.start(claimed);
        }
        if let (true, Some(workers)) = (left_queued, &self.local_workers) {
            workers.waker().notify_one();
        }
        if !waiting.is_empty() {
            // The run a waiting run waits for may have been recorded while
            // this firing was in flight, without seeing it: decide those now
            // rather than at the supervisor's next sweep.
            self.store
                .run_settle_waiting(Some(&waiting), waiting.len() as i64)
                .await?;
        }
        Ok(count)
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut listener = match self.store.listen().await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "scheduler: cannot listen for notifications; polling");
                None
            }
        };
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.run_once().await {
                Ok(n) if n as i64 >= self.config.batch_size => continue,
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, "scheduler: firing due jobs failed");
                }
            }
            let mut planned = None;
            let wait = if failures > 0 {
                backoff(failures, self.config.poll_interval)
            } else {
                match self.store.due_jobs_next().await {
                    Ok(Some(next)) => {
                        planned = Some(next.at);
                        next.wait.min(self.config.poll_interval)
                    }
                    Ok(None) => self.config.poll_interval,
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduler: cannot read the next due time");
                        self.config.poll_interval
                    }
                }
            };
            if wait.is_zero() {
                continue;
            }
            let deadline = tokio::time::Instant::now() + wait;
            // Sleep until the deadline, waking early only for a change that
            // may fire sooner than planned.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    notice = notify::next(&mut listener) => {
                        if wakes(notice.jobs, planned) {
                            break;
                        }
                    }
                }
            }
        }
        tracing::debug!("scheduler stopped");
    }
}

/// Whether a notification calls for a look before the planned time: not
/// when no job changed (or nothing new fires), nor when the new time is not
/// earlier than the one already planned.
fn wakes(hint: Option<FireHint>, planned: Option<chrono::DateTime<chrono::Utc>>) -> bool {
    match (hint, planned) {
        (None, _) => false,
        (Some(FireHint::EarliestAt(ms)), Some(at)) => ms < at.timestamp_millis(),
        _ => true,
    }
}

/// Delay after `failures` consecutive database errors: 100 ms doubling, capped.
pub(crate) fn backoff(failures: u32, cap: Duration) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.min(10));
    Duration::from_millis(ms).min(cap.max(Duration::from_millis(100)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_earlier_or_unknown_changes_wake_the_scheduler() {
        let at: chrono::DateTime<chrono::Utc> = "2030-01-01T00:00:10Z".parse().unwrap();
        let ms = at.timestamp_millis();
        assert!(!wakes(None, Some(at)));
        assert!(!wakes(None, None));
        assert!(
            !wakes(Some(FireHint::EarliestAt(ms)), Some(at)),
            "same time: already planned"
        );
        assert!(!wakes(Some(FireHint::EarliestAt(ms + 1)), Some(at)));
        assert!(wakes(Some(FireHint::EarliestAt(ms - 1)), Some(at)));
        assert!(
            wakes(Some(FireHint::EarliestAt(ms)), None),
            "nothing was planned"
        );
        assert!(wakes(Some(FireHint::Recheck), Some(at)));
    }
}
