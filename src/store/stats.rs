//! Service-wide counts (GET /api/v1/stats), read without counting run
//! history: ended runs by state come from the per-job run counters
//! (`run_counts`, kept by triggers on `runs`; see the migrations), live
//! ones (queued, waiting, running) from their partial indexes, the queue's
//! age from the oldest due queued run (an index's first entry).

use chrono::{DateTime, Utc};

use crate::domain::{JobState, RunState};

/// What the stores read for the stats: sums by state as stored (several
/// rows may name one state, one per counter shard), and the clock.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsRow {
    pub jobs: Vec<(JobState, i64)>,
    pub runs: Vec<(RunState, i64)>,
    /// The `run_after` of the queued run due longest (`None`: no queued
    /// run is due).
    pub oldest_due_run_after: Option<DateTime<Utc>>,
    /// Queued runs due now (`run_after` passed): the queue the workers
    /// have not caught up with, apart from retries waiting out a backoff.
    pub due_queued: i64,
    /// The store's clock when it read them.
    pub now: DateTime<Utc>,
}

/// The connections of the store's pools (both pools of the embedded
/// store, added up), as sqlx counts them; no database round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolConnections {
    pub idle: u32,
    pub in_use: u32,
}

impl PoolConnections {
    /// From a pool's open connections and how many of them are idle.
    pub fn of(size: u32, idle: usize) -> PoolConnections {
        let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(size);
        PoolConnections {
            idle,
            in_use: size - idle,
        }
    }

    #[allow(clippy::should_implement_trait)]
    pub fn add(self, other: PoolConnections) -> PoolConnections {
        PoolConnections {
            idle: self.idle.saturating_add(other.idle),
            in_use: self.in_use.saturating_add(other.in_use),
        }
    }
}

/// A job's run counters beside a count of its runs, by state name (the
/// counters hold ended runs only; live ones are counted when read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCountsCheck {
    pub counters: Vec<(String, i64)>,
    pub counted: Vec<(String, i64)>,
    /// Counter rows stored for the job, zeros included.
    pub rows: i64,
}

/// Every state of `all`, in its order, with its total in `rows` (0 for a
/// state without one).
pub fn totals_by_state<S: Copy + PartialEq>(all: &[S], rows: &[(S, i64)]) -> Vec<(S, i64)> {
    all.iter()
        .map(|state| {
            let n = rows
                .iter()
                .filter(|(s, _)| s == state)
                .map(|(_, n)| n)
                .sum();
            (*state, n)
        })
        .collect()
}

/// How long the oldest due queued run has waited to be claimed, at `now`
/// (zero for one due this instant; `None` when none is due).
pub fn queue_wait(
    oldest_due_run_after: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<chrono::Duration> {
    oldest_due_run_after.map(|at| (now - at).max(chrono::Duration::zero()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn totals_sum_shards_and_name_every_state() {
        let rows = [
            (RunState::Queued, 3),
            (RunState::Succeeded, 5),
            (RunState::Queued, -1),
            (RunState::Succeeded, 2),
        ];
        let totals = totals_by_state(RunState::ALL, &rows);
        assert_eq!(totals.len(), RunState::ALL.len());
        let total = |state| totals.iter().find(|(s, _)| *s == state).map(|(_, n)| *n);
        assert_eq!(total(RunState::Queued), Some(2));
        assert_eq!(total(RunState::Succeeded), Some(7));
        assert_eq!(total(RunState::Failed), Some(0));
    }

    #[test]
    fn pool_connections_never_count_more_idle_than_open() {
        assert_eq!(
            PoolConnections::of(4, 1),
            PoolConnections { idle: 1, in_use: 3 }
        );
        // Read one after the other, the two counts may disagree for a moment.
        assert_eq!(
            PoolConnections::of(2, 3),
            PoolConnections { idle: 2, in_use: 0 }
        );
        assert_eq!(
            PoolConnections::of(1, 0).add(PoolConnections::of(3, 3)),
            PoolConnections { idle: 3, in_use: 1 }
        );
    }

    #[test]
    fn queue_wait_is_from_the_oldest_due_run_and_never_negative() {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 5, 0, 0).unwrap();
        assert_eq!(queue_wait(None, now), None);
        assert_eq!(
            queue_wait(Some(now - chrono::Duration::seconds(90)), now),
            Some(chrono::Duration::seconds(90))
        );
        // A clock read a moment before the run's time (another replica's).
        assert_eq!(
            queue_wait(Some(now + chrono::Duration::milliseconds(5)), now),
            Some(chrono::Duration::zero())
        );
    }
}
