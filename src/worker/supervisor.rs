//! The supervisor: finds runs whose lease expired (their instance died or
//! lost the database), records `dead` and re-queues them on a live replica
//! while retries remain. Every replica runs one; rows are locked with
//! `SKIP LOCKED`, so they never rescue the same run twice.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreResult};

pub struct Supervisor {
    store: Store,
    instance: String,
    every: Duration,
}

impl Supervisor {
    /// Checks every `every` (a fraction of the lease keeps detection prompt).
    pub fn new(store: Store, instance: String, every: Duration) -> Self {
        Supervisor {
            store,
            instance,
            every,
        }
    }

    /// Rescues one batch; returns how many runs it rescued.
    pub async fn run_once(&self) -> StoreResult<usize> {
        let rescued = self.store.run_rescue_expired(100, &self.instance).await?;
        for run in &rescued {
            tracing::warn!(run_id = %run.run_id, job_id = %run.job_id, state = %run.state, "rescued a run whose lease expired");
        }
        Ok(rescued.len())
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.run_once().await {
                Ok(100) => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "supervisor: rescuing expired runs failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }
}
