//! The callback deadline sweep, run by every replica's supervisor: a run
//! waiting for its callback whose deadline passed ends `timed_out` (or is
//! retried, a new attempt with a new token, while `max_retries` allows);
//! one whose cancel was requested ends `cancelled` (no handler of any
//! replica holds it to notice the request). No leader: the writes are
//! fenced by run and attempt, so of two replicas sweeping the same run one
//! writes and the other finds it changed.

use crate::metrics::Metrics;
use crate::store::{CallbackRun, Store, StoreResult};
use crate::worker::execute::{Execution, StopReason};
use crate::worker::outcome::decide;

use super::CallbackSettings;

/// Runs decided per call.
pub const BATCH: i64 = 100;

/// Bound on a stored result or error (as the workers').
const MAX_RESULT_BYTES: usize = 64 * 1024;

/// How an attempt found by the sweep ends: cancelled when asked, else
/// timed out after its window.
pub fn execution_of(due: &CallbackRun, settings: &CallbackSettings) -> Execution {
    if due.run.cancel_requested {
        return Execution::Stopped(StopReason::Cancelled("cancelled through the API".into()));
    }
    Execution::TimedOut(super::rules::window(due.run.timeout_ms, settings.timeout))
}

/// Decides and writes one batch; returns how many runs it ended or retried.
pub async fn run_once(
    store: &Store,
    settings: &CallbackSettings,
    metrics: &Metrics,
) -> StoreResult<usize> {
    let due = store.run_callbacks_due(BATCH).await?;
    let mut written = 0;
    for run in &due {
        let execution = execution_of(run, settings);
        let write = decide(&run.run, execution, MAX_RESULT_BYTES, rand::random::<f64>());
        if super::write_decision(store, metrics, run, &write)
            .await?
            .is_some()
        {
            written += 1;
            tracing::warn!(run_id = %run.run.run_id, job_id = %run.run.job_id,
                attempt = run.run.attempt, cancel = run.run.cancel_requested,
                "a run waiting for its callback was ended (deadline passed or cancel requested)");
        }
    }
    Ok(written)
}
