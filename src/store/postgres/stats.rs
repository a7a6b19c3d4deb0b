//! The stats' reads (see [`crate::store::stats`]): no count over `runs`.

use chrono::{DateTime, Utc};

use super::{PgStore, StoreResult};
use crate::domain::{JobState, RunState};
use crate::store::{PoolConnections, RunCountsCheck, StatsRow};

/// Runs by state: the ended ones from the counters of every job, summed;
/// the live ones counted from their partial indexes (bounded by the queue
/// and the workers, not by history).
pub(crate) const STATS_RUNS_SQL: &str =
    "SELECT state, sum(n)::int8 FROM run_counts GROUP BY state HAVING sum(n) <> 0 \
     UNION ALL SELECT 'queued', count(*) FROM runs WHERE state = 'queued' \
     UNION ALL SELECT 'running', count(*) FROM runs WHERE state = 'running' \
     UNION ALL SELECT 'waiting', count(*) FROM runs WHERE state = 'waiting'";

/// The oldest due queued run (the first entry of `runs_queue_idx`), how
/// many queued runs are due (that index's entries up to now), and the
/// clock.
pub(crate) const STATS_QUEUE_SQL: &str =
    "SELECT (SELECT min(run_after) FROM runs WHERE state = 'queued' AND run_after <= now()), \
     (SELECT count(*) FROM runs WHERE state = 'queued' AND run_after <= now()), now()";

impl PgStore {
    /// See [`crate::store::Store::stats`]. One snapshot for all three reads.
    pub async fn stats(&self) -> StoreResult<StatsRow> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let jobs: Vec<(JobState, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state")
                .fetch_all(&mut *tx)
                .await?;
        let runs: Vec<(RunState, i64)> = sqlx::query_as(STATS_RUNS_SQL).fetch_all(&mut *tx).await?;
        let (oldest_due_run_after, due_queued, now): (Option<DateTime<Utc>>, i64, DateTime<Utc>) =
            sqlx::query_as(STATS_QUEUE_SQL).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(StatsRow {
            jobs,
            runs,
            oldest_due_run_after,
            due_queued,
            now,
        })
    }

    /// See [`crate::store::Store::pool_connections`].
    pub fn pool_connections(&self) -> PoolConnections {
        PoolConnections::of(self.pool.size(), self.pool.num_idle())
    }

    /// See [`crate::store::Store::run_counts_check`].
    pub async fn run_counts_check(&self, job_id: &str) -> StoreResult<RunCountsCheck> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let counters = sqlx::query_as(
            "SELECT state, sum(n)::int8 FROM run_counts WHERE job_id = $1 \
             GROUP BY state HAVING sum(n) <> 0 ORDER BY state",
        )
        .bind(job_id)
        .fetch_all(&mut *tx)
        .await?;
        let counted = sqlx::query_as(
            "SELECT state, count(*) FROM runs WHERE job_id = $1 GROUP BY state ORDER BY state",
        )
        .bind(job_id)
        .fetch_all(&mut *tx)
        .await?;
        let rows = sqlx::query_scalar("SELECT count(*) FROM run_counts WHERE job_id = $1")
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
