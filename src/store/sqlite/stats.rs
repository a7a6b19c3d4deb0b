//! The stats' reads on the embedded store (see [`crate::store::stats`]):
//! no count over `runs`.

use super::rows::{from_micros, micros};
use super::{SqliteStore, StoreResult};
use crate::domain::{JobState, RunState};
use crate::store::{PoolConnections, RunCountsCheck, StatsRow};

/// Runs by state: the ended ones from the counters of every job, summed;
/// the live ones counted from their partial indexes (bounded by the queue
/// and the workers, not by history).
pub(crate) const STATS_RUNS_SQL: &str =
    "SELECT state, sum(n) FROM run_counts GROUP BY state HAVING sum(n) <> 0 \
     UNION ALL SELECT 'queued', count(*) FROM runs INDEXED BY runs_queue_idx WHERE state = 'queued' \
     UNION ALL SELECT 'running', count(*) FROM runs INDEXED BY runs_running_idx WHERE state = 'running' \
     UNION ALL SELECT 'waiting', count(*) FROM runs INDEXED BY runs_waiting_job_idx WHERE state = 'waiting'";

/// The oldest due queued run (the first entry of `runs_queue_idx`) and how
/// many queued runs are due (that index's entries up to now): `?1` now.
pub(crate) const STATS_QUEUE_SQL: &str =
    "SELECT min(run_after), count(*) FROM runs INDEXED BY runs_queue_idx \
     WHERE state = 'queued' AND run_after <= ?1";

impl SqliteStore {
    /// See [`crate::store::Store::stats`]. One read transaction (one WAL
    /// snapshot) for all three reads.
    pub async fn stats(&self) -> StoreResult<StatsRow> {
        let now = super::now();
        let mut tx = self.readers.begin().await?;
        let jobs: Vec<(JobState, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state")
                .fetch_all(&mut *tx)
                .await?;
        let runs: Vec<(RunState, i64)> = sqlx::query_as(STATS_RUNS_SQL).fetch_all(&mut *tx).await?;
        let (oldest, due_queued): (Option<i64>, i64) = sqlx::query_as(STATS_QUEUE_SQL)
            .bind(micros(now))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(StatsRow {
            jobs,
            runs,
            oldest_due_run_after: oldest.map(from_micros),
            due_queued,
            now,
        })
    }

    /// See [`crate::store::Store::pool_connections`]: the writer's and the
    /// readers' pools together.
    pub fn pool_connections(&self) -> PoolConnections {
        PoolConnections::of(self.writer.size(), self.writer.num_idle()).add(PoolConnections::of(
            self.readers.size(),
            self.readers.num_idle(),
        ))
    }

    /// See [`crate::store::Store::run_counts_check`].
    pub async fn run_counts_check(&self, job_id: &str) -> StoreResult<RunCountsCheck> {
        let mut tx = self.readers.begin().await?;
        let counters = sqlx::query_as(
            "SELECT state, sum(n) FROM run_counts WHERE job_id = ?1 \
             GROUP BY state HAVING sum(n) <> 0 ORDER BY state",
        )
        .bind(job_id)
        .fetch_all(&mut *tx)
        .await?;
        let counted = sqlx::query_as(
            "SELECT state, count(*) FROM runs WHERE job_id = ?1 GROUP BY state ORDER BY state",
        )
        .bind(job_id)
        .fetch_all(&mut *tx)
        .await?;
        let rows = sqlx::query_scalar("SELECT count(*) FROM run_counts WHERE job_id = ?1")
            .bind(job_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RunCountsCheck {
            counters,
            counted,
            rows,
        })
    }
}
