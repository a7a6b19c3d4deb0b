//! Batches the outcomes of finished runs into one transaction: whatever
//! outcomes are waiting when the previous write ends go out together (no
//! artificial delay), so a busy replica writes hundreds per statement and
//! an idle one writes each at once. Every outcome keeps its own fence.

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::store::{RunClaim, RunOutcome, Store};

/// Outcomes per transaction at most.
const MAX_BATCH: usize = 512;

/// Outcomes that may wait to be written before the workers stop claiming:
/// a few batches, so the writer always has a full one ready.
pub const BACKLOG: usize = 4 * MAX_BATCH;

struct Pending {
    claim: RunClaim,
    outcome: RunOutcome,
    /// When the handler returned.
    ended: Instant,
    written: oneshot::Sender<Result<bool, String>>,
}

/// Handle to the completer task; cheap to clone.
#[derive(Clone)]
pub struct Completer {
    queue: mpsc::Sender<Pending>,
}

impl Completer {
    /// Starts the task; it ends when every handle is dropped.
    pub fn spawn(store: Store) -> Completer {
        let (queue, receiver) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(write_loop(store, receiver));
        Completer { queue }
    }

    /// Records an outcome; true when written, false when the claim was
    /// stale, an error text when the database failed.
    pub async fn finish(
        &self,
        claim: RunClaim,
        outcome: RunOutcome,
        ended: Instant,
    ) -> Result<bool, String> {
        let (written, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                claim,
                outcome,
                ended,
                written,
            })
            .await
            .map_err(|_| "the completer has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the completer has stopped".to_string())?
    }
}

async fn write_loop(store: Store, mut receiver: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let finished: Vec<(RunClaim, RunOutcome)> = batch
            .iter()
            .map(|p| {
                let mut outcome = p.outcome.clone();
                outcome.ended_ago_ms = p.ended.elapsed().as_millis() as i64;
                (p.claim.clone(), outcome)
            })
            .collect();
        let result = store.run_finish_many(&finished).await;
        for pending in batch.drain(..) {
            let answer = match &result {
                Ok(written) => Ok(written.contains(&pending.claim.run_id)),
                Err(e) => Err(e.to_string()),
            };
            let _ = pending.written.send(answer);
        }
    }
}
