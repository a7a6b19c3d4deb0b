//! The supervisor: keeps this replica registered (instance heartbeat), and
//! finds runs whose lease expired (their instance died or lost the
//! database), records `dead` and re-queues them on a live replica while
//! retries remain; and ends runs waiting for a callback whose deadline
//! passed (`crate::callbacks::sweep`). Every replica runs one — there is no leader; rows are
//! locked with `SKIP LOCKED`, so two never rescue the same run.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::RunState;
use crate::metrics::Metrics;
use crate::store::{Store, StoreResult};

/// Runs rescued per statement.
const RESCUE_BATCH: i64 = 100;

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub instance: String,
    pub version: String,
    /// This replica's HTTP address, shown in `GET /api/v1/instances`.
    pub address: Option<String>,
    /// Check interval (a fraction of the lease keeps detection prompt).
    pub every: Duration,
    /// Replicas silent for this long are removed from the registry.
    pub prune_after: Duration,
    /// The deadlines of runs waiting for a callback are kept here too.
    pub callbacks: crate::callbacks::CallbackSettings,
}

pub struct Supervisor {
    store: Store,
    config: SupervisorConfig,
    metrics: Metrics,
}

impl Supervisor {
    pub fn new(store: Store, config: SupervisorConfig) -> Self {
        Supervisor {
            store,
            config,
            metrics: Metrics::new(),
        }
    }

    /// Counts expired leases, and what became of their runs, in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    async fn register(&self) {
        let c = &self.config;
        let prune_ms = c.prune_after.as_millis() as i64;
        if let Err(e) = self
            .store
            .instance_heartbeat(&c.instance, &c.version, c.address.as_deref(), prune_ms)
            .await
        {
            tracing::warn!(error = %e, "instance heartbeat failed");
        }
    }

    /// Rescues one batch; returns how many runs it rescued.
    pub async fn run_once(&self) -> StoreResult<usize> {
        let rescued = self
            .store
            .run_rescue_expired(RESCUE_BATCH, &self.config.instance)
            .await?;
        self.metrics.lease_expired(rescued.len() as u64);
        for run in &rescued {
            tracing::warn!(run_id = %run.run_id, job_id = %run.job_id, state = %run.state,
                "rescued a run whose lease expired");
            if run.state == RunState::Queued {
                self.metrics.retried();
            } else {
                self.metrics.run_ended(&run.handler, run.state);
            }
        }
        // Runs waiting for a callback have no lease: their deadline is
        // kept here, by any replica (`crate::callbacks::sweep`).
        let timed_out =
            crate::callbacks::sweep::run_once(&self.store, &self.config.callbacks, &self.metrics)
                .await?;
        // Batch rows held by a dead replica, the same way (`crate::batches`).
        let rows = self.store.batch_rows_rescue_expired(RESCUE_BATCH).await?;
        if rows > 0 {
            tracing::warn!(rows, "rescued batch rows whose lease expired");
            self.metrics.lease_expired(rows);
        }
        // A batch whose last row ended on a replica that died before it
        // settled the batch is completed here.
        let unsettled = self.store.batches_unsettled(RESCUE_BATCH).await?;
        self.store.batch_settle(&unsettled).await?;
        let settled = self.store.run_settle_waiting(None, RESCUE_BATCH).await?;
        if settled > 0 {
            tracing::warn!(
                runs = settled,
                "decided runs left waiting for a slot whose run had ended"
            );
        }
        Ok(rescued.len().max(timed_out).max(rows as usize))
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            self.register().await;
            match self.run_once().await {
                Ok(n) if n as i64 == RESCUE_BATCH => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "supervisor: rescuing expired runs failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.config.every) => {}
            }
        }
    }
}
