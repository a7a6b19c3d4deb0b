//! Batch rows on the worker pool (`crate::batches`): claimed in chunks into
//! the slots runs leave free (at most `rules::row_slots` of them), each
//! executed under the same timeout, cancellation and panic catching as a
//! run ([`super::execute::execute`]), its lease renewed by the pool's
//! heartbeat, and its end written through a completer that groups the
//! ends of many rows into one transaction (as run ends are).
//!
//! A handler's batch initialiser ([`crate::handlers::Handler::init_batch`])
//! runs once per batch on this replica, before the first row of the batch
//! here; rows of the batch wait for it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OnceCell};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::execute::{bound_result, bound_text, Execution, StopReason, StopSignal};
use super::retry::retry_delay;
use super::{ExecutingSlot, Reservation, WorkerPool};
use crate::batches::{files, rules};
use crate::handlers::{BatchCall, BatchInfo, BatchState, RunContext};
use crate::store::{ClaimedRow, RowClaim, RowClaimSlots, RowEnd, Store};

/// Batches whose initialiser state a replica keeps before forgetting idle ones.
const MAX_INITS: usize = 256;

/// Row ends per transaction at most.
const MAX_GROUP: usize = 512;

/// A row this replica is executing.
pub(super) struct ActiveRow {
    pub claim: RowClaim,
    pub cancel: CancellationToken,
    pub stop: StopSignal,
}

impl ActiveRow {
    pub fn stop(&self, reason: StopReason) {
        self.stop.set(reason);
        self.cancel.cancel();
    }
}

/// Rows executing here, by (batch, row, attempt).
pub(super) type ActiveRows = HashMap<(Uuid, i64, i32), ActiveRow>;

/// Each batch's initialiser result on this replica.
pub(super) type Inits = HashMap<Uuid, Arc<OnceCell<Option<BatchState>>>>;

/// What a row's ended attempt writes. Pure: the jitter is a parameter.
/// Failures and timeouts are retried while `attempt <= max_retries`
/// (fatal handler errors never are); the last failure fails the row, not
/// the batch. A success's `$files` are taken out of its result
/// ([`files::split_result`], bounded by `max_bytes` as the result is); a
/// bad `$files` fails the row without a retry (the handler would return
/// the same again). A stop by an abort ends the row `aborted`; a lost lease
/// writes nothing (another replica has the row now); shutdown hands it back.
pub fn decide_row(
    row: &ClaimedRow,
    execution: Execution,
    max_bytes: usize,
    jitter: f64,
) -> Option<RowEnd> {
    let retries_left = row.claim.attempt <= row.max_retries;
    let retry = |error: String| {
        let base = Duration::from_millis(row.retry_backoff_ms.max(0) as u64);
        let delay = retry_delay(base, row.claim.attempt, jitter);
        RowEnd::Retry {
            delay_ms: delay.as_millis() as i64,
            error,
        }
    };
    Some(match execution {
        Execution::Succeeded(value) => match files::split_result(value, max_bytes) {
            Ok((value, files)) => {
                let value = bound_result(value, max_bytes);
                RowEnd::Success {
                    result: (!value.is_null()).then_some(value),
                    files,
                }
            }
            Err(e) => RowEnd::Failed(bound_text(&e.to_string(), max_bytes)),
        },
        Execution::Failed {
            error, retryable, ..
        } => {
            let error = bound_text(&error, max_bytes);
            if retryable && retries_left {
                retry(error)
            } else {
                RowEnd::Failed(error)
            }
        }
        Execution::TimedOut(after) => {
            let error = format!("timed out after {:.1}s", after.as_secs_f64());
            if retries_left {
                retry(error)
            } else {
                RowEnd::Failed(error)
            }
        }
        Execution::Stopped(StopReason::Cancelled(reason)) => RowEnd::Aborted(reason),
        Execution::Stopped(StopReason::LeaseLost) => return None,
        Execution::Stopped(StopReason::Shutdown) => RowEnd::HandBack,
    })
}

struct Pending {
    claim: RowClaim,
    end: RowEnd,
    written: oneshot::Sender<Result<bool, String>>,
}

/// Groups row ends into transactions: whatever is waiting when the
/// previous write ends goes out together.
#[derive(Clone)]
pub(super) struct RowCompleter {
    queue: mpsc::Sender<Pending>,
}

impl RowCompleter {
    pub fn spawn(store: Store) -> RowCompleter {
        let (queue, receiver) = mpsc::channel(MAX_GROUP * 4);
        tokio::spawn(write_loop(store, receiver));
        RowCompleter { queue }
    }

    async fn finish(&self, claim: RowClaim, end: RowEnd) -> Result<bool, String> {
        let (written, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                claim,
                end,
                written,
            })
            .await
            .map_err(|_| "the row completer has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the row completer has stopped".to_string())?
    }
}

async fn write_loop(store: Store, mut receiver: mpsc::Receiver<Pending>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while receiver.recv_many(&mut group, MAX_GROUP).await > 0 {
        let ends: Vec<(RowClaim, RowEnd)> = group
            .iter()
            .map(|p| (p.claim.clone(), p.end.clone()))
            .collect();
        // A set: a group's hundreds of rows each look themselves up.
        let result = store
            .batch_rows_finish(&ends)
            .await
            .map(|written| written.into_iter().collect::<HashSet<_>>());
        for pending in group.drain(..) {
            let answer = match &result {
                Ok(written) => Ok(written.contains(&(pending.claim.batch_id, pending.claim.idx))),
                Err(e) => Err(e.to_string()),
            };
            let _ = pending.written.send(answer);
        }
    }
}

fn end_label(end: &RowEnd) -> &'static str {
    match end {
        RowEnd::Success { .. } => "success",
        RowEnd::Failed(_) => "failed",
        RowEnd::Aborted(_) => "aborted",
        RowEnd::Retry { .. } | RowEnd::HandBack => "retried",
    }
}

impl WorkerPool {
    pub(super) fn rows_active(&self) -> usize {
        self.rows.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Rows this replica may still take: what `rules::row_slots` leaves
    /// of its slots to rows whose handler is executing (a row waiting for
    /// its end to be written holds no slot, as a run does not: claims and
    /// writes overlap; the completer's backlog bounds those, see
    /// `WorkerPool::reserve`).
    fn row_room(&self) -> usize {
        rules::row_slots(self.config.concurrency)
            .saturating_sub(self.rows_executing.load(Ordering::Acquire))
    }

    /// Claims rows into the reservation's remaining slots (within the
    /// rows' share) and starts them; how many started.
    pub(super) async fn claim_rows(
        &self,
        reservation: &mut Reservation,
    ) -> crate::store::StoreResult<usize> {
        let want = reservation.len().min(self.row_room());
        if want == 0 {
            // Capped by the rows' share: rows may be waiting.
            self.rows_waiting
                .store(!reservation.is_empty(), Ordering::Release);
            return Ok(0);
        }
        let slots = RowClaimSlots {
            instance: self.config.instance.clone(),
            lease_ms: self.config.lease.as_millis() as i64,
            limit: want as i64,
            turn: self.turn.fetch_add(1, Ordering::Relaxed),
        };
        let rows = self.store.batch_rows_claim(&slots).await?;
        self.forget_old_inits();
        self.rows_waiting
            .store(rows.len() == want, Ordering::Release);
        let mut started = 0;
        for row in rows {
            let Some(slot) = reservation.slots.pop() else {
                tracing::error!(batch_id = %row.claim.batch_id, "claimed more rows than reserved slots");
                continue;
            };
            self.start_row(row, slot);
            started += 1;
        }
        Ok(started)
    }

    /// Bounds the initialisers' table: past [`MAX_INITS`] batches, those
    /// with no row executing here are forgotten (a later row of one runs
    /// its initialiser again).
    fn forget_old_inits(&self) {
        let big = self
            .inits
            .lock()
            .map(|i| i.len() > MAX_INITS)
            .unwrap_or(false);
        if !big {
            return;
        }
        let live: std::collections::HashSet<Uuid> = match self.rows.lock() {
            Ok(rows) => rows.keys().map(|k| k.0).collect(),
            Err(_) => return,
        };
        if let Ok(mut inits) = self.inits.lock() {
            inits.retain(|id, _| live.contains(id));
        }
    }

    /// Stops the rows of `batch_id` executing here (an abort with
    /// `cancel_running` through this replica; others learn it from their
    /// next heartbeat).
    pub fn stop_batch(&self, batch_id: Uuid) {
        if let Ok(rows) = self.rows.lock() {
            for row in rows.values().filter(|r| r.claim.batch_id == batch_id) {
                row.stop(StopReason::Cancelled(
                    "cancelled by the batch's abort".into(),
                ));
            }
        }
    }

    pub(super) fn stop_all_rows(&self, reason: StopReason) {
        if let Ok(rows) = self.rows.lock() {
            for row in rows.values() {
                row.stop(reason.clone());
            }
        }
    }

    /// Renews the leases of the rows executing here; stops those no longer
    /// held and those an abort asked to stop.
    pub(super) async fn heartbeat_rows(&self) -> crate::store::StoreResult<()> {
        let held: Vec<RowClaim> = match self.rows.lock() {
            Ok(rows) => rows.values().map(|r| r.claim.clone()).collect(),
            Err(_) => return Ok(()),
        };
        if held.is_empty() {
            return Ok(());
        }
        let lease_ms = self.config.lease.as_millis() as i64;
        let acks = self
            .store
            .batch_rows_heartbeat(&self.config.instance, lease_ms, &held)
            .await?;
        let held: HashSet<RowClaim> = held.into_iter().collect();
        let acked: HashMap<(Uuid, i64, i32), bool> = acks
            .into_iter()
            .map(|a| ((a.batch_id, a.idx, a.attempt), a.cancel_requested))
            .collect();
        if let Ok(rows) = self.rows.lock() {
            for (key, row) in rows.iter() {
                match acked.get(key) {
                    None if held.contains(&row.claim) => row.stop(StopReason::LeaseLost),
                    Some(true) => row.stop(StopReason::Cancelled(
                        "cancelled by the batch's abort".into(),
                    )),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The batch's initialiser state on this replica, running it first if
    /// no row of the batch ran here yet.
    async fn batch_state(
        &self,
        handler: &Arc<dyn crate::handlers::Handler>,
        row: &ClaimedRow,
    ) -> Result<Option<BatchState>, String> {
        let cell = match self.inits.lock() {
            Ok(mut inits) => inits.entry(row.claim.batch_id).or_default().clone(),
            Err(_) => return Err("the batch initialisers' table is poisoned".into()),
        };
        let info = BatchInfo {
            batch_id: row.claim.batch_id,
            context: row.context.clone(),
        };
        cell.get_or_try_init(|| async {
            handler
                .init_batch(&info)
                .await
                .map_err(|e| format!("the batch initialiser failed: {:#}", e.error))
        })
        .await
        .cloned()
    }

    fn start_row(&self, row: ClaimedRow, slot: ExecutingSlot) {
        let cancel = CancellationToken::new();
        let stop = StopSignal::default();
        let key = (row.claim.batch_id, row.claim.idx, row.claim.attempt);
        if let Ok(mut rows) = self.rows.lock() {
            rows.insert(
                key,
                ActiveRow {
                    claim: row.claim.clone(),
                    cancel: cancel.clone(),
                    stop: stop.clone(),
                },
            );
        }
        self.rows_executing.fetch_add(1, Ordering::AcqRel);
        let pool = self.clone();
        let span = tracing::info_span!(
            "batch_row",
            batch_id = %row.claim.batch_id,
            row = row.claim.idx,
            handler = %row.handler,
            attempt = row.claim.attempt,
        );
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let execution = pool.execute_row(&row, cancel, &stop).await;
                // The slot is free once the handler has returned; the row
                // stays active (and heartbeated) until its end is written.
                drop(slot);
                pool.rows_executing.fetch_sub(1, Ordering::AcqRel);
                if pool.rows_waiting.load(Ordering::Acquire) && pool.row_room() >= pool.row_refill()
                {
                    pool.queued.notify_one();
                }
                let end = decide_row(
                    &row,
                    execution,
                    pool.config.max_result_bytes,
                    rand::random::<f64>(),
                );
                if let Some(end) = end {
                    pool.record_row(&row, end).await;
                }
                if let Ok(mut rows) = pool.rows.lock() {
                    rows.remove(&key);
                }
                pool.finished.notify_waiters();
                if pool.rows_waiting.load(Ordering::Acquire) && pool.row_room() >= pool.row_refill()
                {
                    pool.queued.notify_one();
                }
            },
            span,
        ));
    }

    /// Wakes the claim loop when this many row slots are free again.
    fn row_refill(&self) -> usize {
        (self.config.concurrency / 4).max(1)
    }

    async fn execute_row(
        &self,
        row: &ClaimedRow,
        cancel: CancellationToken,
        stop: &StopSignal,
    ) -> Execution {
        let Some(handler) = self.registry.get(&row.handler).cloned() else {
            return Execution::Failed {
                error: format!(
                    "handler {:?} is not registered on this replica",
                    row.handler
                ),
                traceback: String::new(),
                retryable: true,
            };
        };
        let state = match self.batch_state(&handler, row).await {
            Ok(state) => state,
            Err(error) => {
                return Execution::Failed {
                    error,
                    traceback: String::new(),
                    retryable: true,
                }
            }
        };
        let ctx = RunContext::new(
            row.claim.batch_id,
            format!("batch:{}", row.claim.batch_id),
            row.claim.attempt,
            chrono::Utc::now(),
            cancel,
        )
        .with_batch(BatchCall {
            batch_id: row.claim.batch_id,
            row: row.claim.idx,
            context: Arc::new(row.context.clone()),
            state,
        });
        let timeout = row
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.max(1) as u64));
        let secrets = self.registry.secrets_of(&row.handler, &row.input);
        super::execute::execute(
            handler,
            ctx,
            row.input.clone(),
            timeout,
            stop,
            self.config.cancel_grace,
        )
        .await
        .scrubbed(&secrets)
    }

    /// Writes a row's end, retrying database hiccups a few times (after
    /// that the lease expires and a rescue queues the row again).
    async fn record_row(&self, row: &ClaimedRow, end: RowEnd) {
        for failures in 1..=5u32 {
            match self
                .row_completer
                .finish(row.claim.clone(), end.clone())
                .await
            {
                Ok(true) => {
                    self.metrics.batch_row_ended(end_label(&end));
                    return;
                }
                Ok(false) => {
                    tracing::warn!("row end not recorded: the row is no longer this instance's");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "recording a row's end failed; retrying");
                    tokio::time::sleep(crate::scheduler::backoff(failures, Duration::from_secs(5)))
                        .await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn row(attempt: i32, max_retries: i32) -> ClaimedRow {
        ClaimedRow {
            claim: RowClaim {
                batch_id: Uuid::nil(),
                idx: 0,
                attempt,
                instance: "i".into(),
            },
            input: json!({}),
            handler: "log".into(),
            context: json!(null),
            max_retries,
            retry_backoff_ms: 1000,
            timeout_ms: None,
        }
    }

    fn failed(retryable: bool) -> Execution {
        Execution::Failed {
            error: "boom".into(),
            traceback: String::new(),
            retryable,
        }
    }

    #[test]
    fn a_row_is_retried_then_fails_alone() {
        assert!(matches!(
            decide_row(&row(1, 1), failed(true), 100, 0.0),
            Some(RowEnd::Retry { .. })
        ));
        assert_eq!(
            decide_row(&row(2, 1), failed(true), 100, 0.0),
            Some(RowEnd::Failed("boom".into()))
        );
        assert_eq!(
            decide_row(&row(1, 3), failed(false), 100, 0.0),
            Some(RowEnd::Failed("boom".into())),
            "a fatal error is not retried"
        );
        let timed_out = decide_row(
            &row(1, 0),
            Execution::TimedOut(Duration::from_secs(2)),
            100,
            0.0,
        );
        assert!(matches!(timed_out, Some(RowEnd::Failed(ref e)) if e.contains("timed out")));
    }

    #[test]
    fn files_are_taken_out_of_the_result_and_bad_ones_fail_at_once() {
        let succeeded = |v: Value| decide_row(&row(1, 3), Execution::Succeeded(v), 100, 0.0);
        let Some(RowEnd::Success { result, files }) =
            succeeded(json!({"n": 1, "$files": {"a.txt": "x\n\ny"}}))
        else {
            panic!("a success")
        };
        assert_eq!(result, Some(json!({"n": 1})), "stored without $files");
        assert_eq!(files.lines("a.txt").unwrap(), ["x", "y"]);
        let Some(RowEnd::Success { result, files }) = succeeded(json!({"$files": {"a": "x"}}))
        else {
            panic!("a success")
        };
        assert_eq!(result, None, "nothing else: no output");
        assert!(!files.is_empty());
        let bad = succeeded(json!({"$files": {"../x": "a"}}));
        assert!(
            matches!(bad, Some(RowEnd::Failed(ref e)) if e.starts_with("$files: \"../x\" is not a valid file name")),
            "failed, not retried though retries are left: {bad:?}"
        );
        let big = succeeded(json!({"$files": {"a": "x".repeat(200)}}));
        assert!(
            matches!(big, Some(RowEnd::Failed(ref e)) if e.contains("more than the 100 bytes")),
            "{big:?}"
        );
    }

    #[test]
    fn outputs_stops_and_shutdown() {
        assert_eq!(
            decide_row(&row(1, 0), Execution::Succeeded(json!(null)), 100, 0.0),
            Some(RowEnd::success(None)),
            "null is no output"
        );
        assert_eq!(
            decide_row(&row(1, 0), Execution::Succeeded(json!({"a": 1})), 100, 0.0),
            Some(RowEnd::success(Some(json!({"a": 1}))))
        );
        assert!(matches!(
            decide_row(
                &row(1, 0),
                Execution::Stopped(StopReason::Cancelled("abort".into())),
                100,
                0.0
            ),
            Some(RowEnd::Aborted(_))
        ));
        assert_eq!(
            decide_row(
                &row(1, 0),
                Execution::Stopped(StopReason::LeaseLost),
                100,
                0.0
            ),
            None
        );
        assert_eq!(
            decide_row(
                &row(1, 0),
                Execution::Stopped(StopReason::Shutdown),
                100,
                0.0
            ),
            Some(RowEnd::HandBack)
        );
    }
}
