//! Bounded history: the maintenance loop that every replica runs (there is
//! no leader) to prune what `--retention`, `--failure-retention` and each
//! job's `keep_runs` no longer keep, the audit log entries older than
//! `--retention`, and expired idempotency keys. Each pass deletes in bounded batches
//! (one short statement or transaction each, yielding between them), so it
//! holds no long lock and never rewrites a table; deletes are safe to race
//! between replicas (the stores lock what they delete with `SKIP LOCKED` on
//! PostgreSQL; the embedded store has one writer).
//!
//! What is kept is decided here, as pure functions of the settings, the job
//! and `now` (the store's clock); the stores only select and delete by it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::domain::RunState;
use crate::store::{Store, StoreResult};

/// Rows deleted per statement (or transaction).
pub const BATCH: i64 = 1_000;

/// How long something is kept: for ever (`0` on the command line), or for
/// a duration after it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    KeepAll,
    For(Duration),
}

impl Retention {
    /// `0` keeps everything; any other duration keeps things that long.
    pub fn from_duration(d: Duration) -> Self {
        if d.is_zero() {
            Retention::KeepAll
        } else {
            Retention::For(d)
        }
    }

    /// What ended before this instant is pruned (`None`: nothing is).
    pub fn cutoff(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Retention::KeepAll => None,
            // Longer than chrono can represent: nothing is old enough.
            Retention::For(d) => chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_sub_signed(d)),
        }
    }
}

/// Which finished runs of a job are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsKept {
    /// Every one (`--retention 0`, no `keep_runs`).
    All,
    /// Those that finished (or, with no end time, were created) at or
    /// after this instant: the age rule.
    FinishedSince(DateTime<Utc>),
    /// The newest N, whatever their age: the job's `keep_runs`.
    Newest(i32),
}

/// The rule for a job's finished runs: its `keep_runs` when set (instead
/// of the age rule, whatever `--retention` says), else the retention's
/// cutoff.
pub fn runs_kept(keep_runs: Option<i32>, retention: Retention, now: DateTime<Utc>) -> RunsKept {
    match (keep_runs, retention.cutoff(now)) {
        (Some(n), _) => RunsKept::Newest(n.max(1)),
        (None, Some(cutoff)) => RunsKept::FinishedSince(cutoff),
        (None, None) => RunsKept::All,
    }
}

/// The run states pruning may delete: every state but those of a run still
/// to do or doing (queued, waiting, running), which are never pruned.
pub fn prunable_states() -> Vec<RunState> {
    RunState::ALL
        .iter()
        .copied()
        .filter(|s| !s.is_active())
        .collect()
}

/// Settings of the maintenance loop.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Finished runs (and completed one-shot jobs left without runs).
    pub retention: Retention,
    /// Failure records.
    pub failure_retention: Retention,
    /// Time between passes.
    pub every: Duration,
    /// Rows per statement.
    pub batch: i64,
}

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub runs: u64,
    pub jobs: u64,
    pub failure_records: u64,
    /// Audit log entries older than `--retention`.
    pub audit_entries: u64,
    /// Idempotency keys past their 24 h (`crate::idempotency::TTL`).
    pub idempotency_keys: u64,
    /// Callback tokens whose run was pruned (`crate::callbacks`).
    pub callback_tokens: u64,
    /// Events older than `--retention` (`crate::events`).
    pub events: u64,
    /// Expired stream tickets.
    pub event_tickets: u64,
    /// Finished webhook deliveries (and their attempts) older than
    /// `--retention`.
    pub webhook_deliveries: u64,
    /// Rows and batches of batches final for longer than `--retention`
    /// (`crate::batches`), and uploads abandoned for an hour.
    pub batches: u64,
}

/// The maintenance loop of one replica.
pub struct Maintenance {
    store: Store,
    config: RetentionConfig,
}

impl Maintenance {
    pub fn new(store: Store, config: RetentionConfig) -> Self {
        Maintenance { store, config }
    }

    /// One pass: prunes everything due, batch after batch, until a batch
    /// comes back short (or `shutdown` is cancelled).
    pub async fn run_once(&self, shutdown: &CancellationToken) -> StoreResult<Pruned> {
        let store = &self.store;
        let batch = self.config.batch.max(1);
        let now = store.now().await?;
        let states = prunable_states();
        let mut pruned = Pruned::default();
        if let RunsKept::FinishedSince(cutoff) = runs_kept(None, self.config.retention, now) {
            pruned.runs += batches(batch, shutdown, |limit| {
                store.runs_prune_finished_before(cutoff, &states, limit)
            })
            .await?;
        }
        for (job_id, keep_runs) in store.jobs_keeping_runs().await? {
            if let RunsKept::Newest(n) = runs_kept(Some(keep_runs), self.config.retention, now) {
                pruned.runs += batches(batch, shutdown, |limit| {
                    store.runs_prune_beyond_newest(&job_id, n, &states, limit)
                })
                .await?;
            }
        }
        // Only once runs are pruned by age can a completed one-shot job be
        // left without any: with `--retention 0` it stays too.
        if self.config.retention != Retention::KeepAll {
            pruned.jobs += batches(batch, shutdown, |limit| {
                store.jobs_prune_completed_without_runs(limit)
            })
            .await?;
        }
        if let Some(cutoff) = self.config.failure_retention.cutoff(now) {
            pruned.failure_records += batches(batch, shutdown, |limit| {
                store.jobs_prune_failure_records_before(cutoff, limit)
            })
            .await?;
        }
        // The audit log and the events are kept as long as the run history.
        if let Some(cutoff) = self.config.retention.cutoff(now) {
            pruned.audit_entries += batches(batch, shutdown, |limit| {
                store.audit_prune_before(cutoff, limit)
            })
            .await?;
            pruned.events += batches(batch, shutdown, |limit| {
                store.events_prune_before(cutoff, limit)
            })
            .await?;
            pruned.webhook_deliveries += batches(batch, shutdown, |limit| {
                store.webhook_deliveries_prune_before(cutoff, limit)
            })
            .await?;
            // Final batches go like finished runs: rows first, a batch
            // once it has none left.
            pruned.batches += batches(batch, shutdown, |limit| {
                store.batches_prune_finished_before(cutoff, limit)
            })
            .await?;
        }
        // An upload not published within an hour was abandoned (its
        // client went away mid-stream).
        pruned.batches += store
            .batch_uploads_prune_before(now - chrono::Duration::hours(1))
            .await?;
        pruned.event_tickets += store.event_tickets_prune(now).await?;
        let expired = crate::idempotency::expired_before(now);
        pruned.idempotency_keys += batches(batch, shutdown, |limit| {
            store.idempotency_prune_before(expired, limit)
        })
        .await?;
        pruned.callback_tokens +=
            batches(batch, shutdown, |limit| store.callback_tokens_prune(limit)).await?;
        Ok(pruned)
    }

    /// Runs a pass every `every` until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.run_once(&shutdown).await {
                Ok(p) if p != Pruned::default() => tracing::debug!(
                    runs = p.runs,
                    jobs = p.jobs,
                    failure_records = p.failure_records,
                    audit_entries = p.audit_entries,
                    idempotency_keys = p.idempotency_keys,
                    callback_tokens = p.callback_tokens,
                    events = p.events,
                    event_tickets = p.event_tickets,
                    "pruned history"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "maintenance: pruning history failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.config.every) => {}
            }
        }
    }
}

/// Calls `prune(limit)` while it deletes a full batch, yielding between
/// calls; returns the total deleted.
async fn batches<F, Fut>(limit: i64, shutdown: &CancellationToken, mut prune: F) -> StoreResult<u64>
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = StoreResult<u64>>,
{
    let mut total = 0;
    loop {
        let deleted = prune(limit).await?;
        total += deleted;
        if deleted < limit as u64 || shutdown.is_cancelled() {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn zero_keeps_everything() {
        assert_eq!(Retention::from_duration(Duration::ZERO), Retention::KeepAll);
        assert_eq!(Retention::KeepAll.cutoff(at("2026-01-15T00:00:00Z")), None);
    }

    #[test]
    fn the_cutoff_is_now_minus_the_retention() {
        let r = Retention::from_duration(Duration::from_secs(14 * 86_400));
        assert_eq!(
            r.cutoff(at("2026-01-15T00:00:00Z")),
            Some(at("2026-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn keep_runs_replaces_the_age_rule() {
        let now = at("2026-01-15T00:00:00Z");
        let two_days = Retention::For(Duration::from_secs(2 * 86_400));
        assert_eq!(
            runs_kept(None, two_days, now),
            RunsKept::FinishedSince(at("2026-01-13T00:00:00Z"))
        );
        assert_eq!(runs_kept(Some(3), two_days, now), RunsKept::Newest(3));
        // A job's own limit applies even when the service keeps everything.
        assert_eq!(
            runs_kept(Some(3), Retention::KeepAll, now),
            RunsKept::Newest(3)
        );
        assert_eq!(runs_kept(None, Retention::KeepAll, now), RunsKept::All);
    }

    #[test]
    fn a_retention_too_long_to_subtract_prunes_nothing() {
        let r = Retention::For(Duration::from_secs(u64::MAX));
        assert_eq!(r.cutoff(at("2026-01-15T00:00:00Z")), None);
    }

    #[test]
    fn active_runs_are_never_prunable() {
        let states = prunable_states();
        for s in [RunState::Queued, RunState::Waiting, RunState::Running] {
            assert!(!states.contains(&s), "{s}");
        }
        for s in [
            RunState::Succeeded,
            RunState::Failed,
            RunState::TimedOut,
            RunState::Cancelled,
            RunState::Missed,
            RunState::Dead,
        ] {
            assert!(states.contains(&s), "{s}");
        }
    }
}
