//! Workers: claim queued runs, execute them, record what happened.
//!
//! A bounded pool per replica claims runs with `SKIP LOCKED` (the store
//! enforces `max_instances` and `lock_key` across replicas), or takes the
//! runs its own scheduler and API claimed for it while inserting them
//! (a [`Reservation`] of its free slots, either way), runs each
//! handler under [`execute::execute`], renews leases by heartbeat, and
//! records the outcome fenced by (run, attempt, instance). A failed attempt
//! is retried with backoff while `max_retries` allows; the last failure
//! writes a failure record. On shutdown it stops claiming, gives running
//! runs `shutdown_grace` to finish and hands the rest back to the queue.

mod completer;
pub mod execute;
pub(crate) mod outcome;
pub mod panic;
pub mod retry;
mod rows;
mod supervisor;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::RunState;
use crate::handlers::{HandlerRegistry, RunContext};
use crate::metrics::{HandlerMetrics, Metrics};
use crate::redact::scrub_value;
use crate::scheduler::backoff;
use crate::store::notify;
use crate::store::{ClaimSlots, RunClaim, RunRow, Store};
use completer::Completer;
use execute::{Execution, StopReason, StopSignal};
use outcome::Write;

pub use rows::decide_row;
pub use supervisor::{Supervisor, SupervisorConfig};

/// Why an outcome could not be written.
#[derive(Debug, thiserror::Error)]
enum StoreFailure {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Completer(String),
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub instance: String,
    /// Runs executed at once.
    pub concurrency: usize,
    /// A running run's lease; renewed every third of it.
    pub lease: Duration,
    /// Longest sleep without a notification.
    pub poll_interval: Duration,
    /// How long a cancelled or timed-out handler gets to stop by itself.
    pub cancel_grace: Duration,
    /// How long running runs get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Larger results are stored as a preview.
    pub max_result_bytes: usize,
    /// Remote completion (`--public-url`, `--callback-timeout`).
    pub callbacks: crate::callbacks::CallbackSettings,
}

/// How often a replica renews the leases of its running runs.
pub fn renewal_interval(lease: Duration) -> Duration {
    lease / 3
}

/// How long a replica goes without a successful renewal before it stops
/// its handlers: `lease − cancel_grace − one renewal interval`. Stopping
/// takes up to `cancel_grace`, and the missing renewal is noticed at most
/// one interval late, so every handler has stopped before the last lease
/// it renewed can expire (and before another replica can take the run).
pub fn self_fence_after(lease: Duration, cancel_grace: Duration) -> Duration {
    lease
        .saturating_sub(cancel_grace)
        .saturating_sub(renewal_interval(lease))
}

/// Checks the lease settings at start-up: the time a replica may go
/// without renewing before it fences itself ([`self_fence_after`]) must be
/// at least a third of the lease, or one slow renewal would stop every run.
pub fn check_lease_settings(lease: Duration, cancel_grace: Duration) -> Result<(), String> {
    if lease < Duration::from_millis(300) {
        return Err(format!(
            "--lease {lease:?} is too short; use at least 300ms"
        ));
    }
    let margin = self_fence_after(lease, cancel_grace);
    if margin < lease / 3 {
        return Err(format!(
            "--cancel-grace {cancel_grace:?} is too long for --lease {lease:?}: a replica that \
             cannot renew its leases must stop its handlers (cancel grace included) before they \
             expire, which leaves {margin:?} of tolerance for a lost renewal, less than a third \
             of the lease; keep --cancel-grace at most a third of --lease (here {:?}) or \
             lengthen --lease",
            lease / 3
        ));
    }
    Ok(())
}

/// What an attempt's recorded outcome is counted in.
struct Counted<'a> {
    handler: &'a HandlerMetrics,
    /// How long the handler ran.
    ran: Duration,
}

/// A run this replica is executing.
struct Active {
    claim: RunClaim,
    cancel: CancellationToken,
    stop: StopSignal,
    progress: watch::Receiver<Option<Value>>,
    /// The secrets of the run's kwargs, masked in what the handler reports.
    secrets: Arc<Vec<String>>,
}

impl Active {
    fn stop(&self, reason: StopReason) {
        self.stop.set(reason);
        self.cancel.cancel();
    }
}

/// One of the `concurrency` slots (counted when reserved), given back when
/// dropped: whatever ends the execution, or when a reservation goes unused.
struct ExecutingSlot(Arc<AtomicUsize>);

impl Drop for ExecutingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Worker slots reserved for runs this replica is about to claim, whether
/// from the queue ([`Store::run_claim`]) or while inserting them
/// ([`Store::job_insert_many`]). Slots not used are given back when it is
/// dropped.
pub struct Reservation {
    pool: WorkerPool,
    slots: Vec<ExecutingSlot>,
}

impl Reservation {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// What the store needs to claim runs into these slots.
    pub fn claim(&self) -> ClaimSlots {
        ClaimSlots {
            instance: self.pool.config.instance.clone(),
            lease_ms: self.pool.config.lease.as_millis() as i64,
            limit: self.slots.len() as i64,
        }
    }

    /// Starts the claimed runs that are `running`, one per slot (a claim
    /// may also return runs it marked `missed`); returns how many started.
    pub fn start(mut self, runs: Vec<RunRow>) -> usize {
        self.start_runs(runs)
    }

    fn start_runs(&mut self, runs: Vec<RunRow>) -> usize {
        let mut started = 0;
        for run in runs {
            if run.state != RunState::Running {
                tracing::warn!(run_id = %run.run_id, job_id = %run.job_id, "run missed: started later than misfire_grace_time");
                if run.state == RunState::Missed {
                    self.pool
                        .metrics
                        .missed(crate::metrics::MissedReason::MisfireGrace, 1);
                }
                continue;
            }
            let Some(slot) = self.slots.pop() else {
                // The store claims no more than `limit`; should it ever, the
                // lease expires and the run is re-queued.
                tracing::error!(run_id = %run.run_id, "claimed more runs than reserved slots");
                continue;
            };
            self.pool.start(run, slot);
            started += 1;
        }
        started
    }
}

#[derive(Clone)]
pub struct WorkerPool {
    store: Store,
    registry: Arc<HandlerRegistry>,
    config: Arc<WorkerConfig>,
    /// Attempts claimed and not yet recorded (executing, or their outcome
    /// waiting to be written), by (run, attempt): an attempt winding down
    /// and a newer attempt of the same run, re-claimed here, are two
    /// entries, and each removes only its own.
    active: Arc<Mutex<HashMap<(Uuid, i32), Active>>>,
    /// Handlers executing now, and slots reserved for runs being claimed:
    /// what `concurrency` bounds.
    executing: Arc<AtomicUsize>,
    /// Set when shutdown begins: no more slots are reserved.
    closing: Arc<AtomicBool>,
    finished: Arc<Notify>,
    /// Poked when a run with a `lock_key` ended here: a run queued behind it
    /// may start now.
    lock_released: Arc<Notify>,
    /// Poked by this replica's scheduler when it queued runs.
    queued: Arc<Notify>,
    completer: Completer,
    metrics: Metrics,
    /// Batch rows executing here (`rows.rs`); they hold slots as runs do.
    rows: Arc<Mutex<rows::ActiveRows>>,
    /// Each batch's initialiser result on this replica.
    inits: Arc<Mutex<rows::Inits>>,
    row_completer: rows::RowCompleter,
    /// Set when the last row claim got all it asked for (or the rows'
    /// share capped it): more rows may be waiting, so a row ending wakes
    /// the claim loop once enough row slots are free.
    rows_waiting: Arc<AtomicBool>,
    /// Rows whose handler is executing here (their end not yet decided).
    rows_executing: Arc<AtomicUsize>,
    /// Rotates the remainder of fair shares between batches.
    turn: Arc<AtomicUsize>,
}

impl WorkerPool {
    pub fn new(store: Store, registry: Arc<HandlerRegistry>, config: WorkerConfig) -> Self {
        WorkerPool {
            registry,
            config: Arc::new(config),
            active: Arc::default(),
            executing: Arc::default(),
            closing: Arc::default(),
            finished: Arc::default(),
            lock_released: Arc::default(),
            queued: Arc::default(),
            completer: Completer::spawn(store.clone()),
            rows: Arc::default(),
            inits: Arc::default(),
            row_completer: rows::RowCompleter::spawn(store.clone()),
            rows_waiting: Arc::default(),
            rows_executing: Arc::default(),
            turn: Arc::default(),
            store,
            metrics: Metrics::new(),
        }
    }

    /// Counts outcomes, retries, lag and missed claims in `metrics` (a
    /// registry of its own otherwise, which nobody reads).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The handle this replica's scheduler uses to wake the pool at once.
    pub fn waker(&self) -> Arc<Notify> {
        self.queued.clone()
    }

    fn active_count(&self) -> usize {
        self.active.lock().map(|a| a.len()).unwrap_or(0) + self.rows_active()
    }

    /// Slots free now (without reserving them).
    fn free_slots(&self) -> usize {
        self.free_given(self.executing.load(Ordering::Acquire), self.active_count())
    }

    fn free_given(&self, executing: usize, active: usize) -> usize {
        let concurrency = self.config.concurrency;
        concurrency
            .saturating_sub(executing)
            .min((concurrency + completer::BACKLOG).saturating_sub(active))
    }

    /// Runs this replica holds: claimed and not yet recorded, or about to
    /// be claimed into a reserved slot.
    fn held(&self) -> usize {
        self.active_count()
            .max(self.executing.load(Ordering::Acquire))
    }

    /// Reserves up to `up_to` slots for runs about to be claimed. A slot is
    /// free once its handler has returned, even while its outcome waits to
    /// be written (so claims and outcome writes overlap instead of taking
    /// turns), but no more than a few outcome batches may wait
    /// ([`completer::BACKLOG`]), so a slow database holds claiming back.
    /// None while shutting down.
    pub fn reserve(&self, up_to: usize) -> Reservation {
        let mut taken = 0;
        if !self.closing.load(Ordering::Acquire) {
            let active = self.active_count();
            let _ = self
                .executing
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |executing| {
                    taken = self.free_given(executing, active).min(up_to);
                    Some(executing + taken)
                });
        }
        Reservation {
            pool: self.clone(),
            slots: (0..taken)
                .map(|_| ExecutingSlot(self.executing.clone()))
                .collect(),
        }
    }

    /// Stops every attempt of `run_id` executing here (a cancel names the
    /// run, whichever its attempt).
    fn stop_run(&self, run_id: Uuid, reason: StopReason) {
        if let Ok(active) = self.active.lock() {
            for run in active.values().filter(|a| a.claim.run_id == run_id) {
                run.stop(reason.clone());
            }
        }
    }

    /// Stops one attempt.
    fn stop_attempt(&self, key: (Uuid, i32), reason: StopReason) {
        if let Ok(active) = self.active.lock() {
            if let Some(run) = active.get(&key) {
                run.stop(reason);
            }
        }
    }

    /// Claims and starts as many runs as there are free slots, then batch
    /// rows into the slots runs left (within the rows' share, see
    /// `crate::batches::rules::row_slots`): runs first, so a huge batch
    /// never holds back scheduled runs. Returns how many it started and
    /// whether runs left slots unfilled.
    pub async fn claim_once(&self) -> crate::store::StoreResult<(usize, bool)> {
        let mut reservation = self.reserve(self.config.concurrency);
        if reservation.is_empty() {
            return Ok((0, false));
        }
        let free = reservation.len();
        let runs = self.store.run_claim(&reservation.claim()).await?;
        let claimed = runs.len();
        let mut started = reservation.start_runs(runs);
        if !reservation.is_empty() {
            match self.claim_rows(&mut reservation).await {
                Ok(rows) => started += rows,
                Err(e) => tracing::error!(error = %e, "workers: claiming batch rows failed"),
            }
        }
        Ok((started, claimed < free))
    }

    fn start(&self, run: RunRow, slot: ExecutingSlot) {
        let cancel = CancellationToken::new();
        let stop = StopSignal::default();
        let ctx = RunContext::new(
            run.run_id,
            run.job_id.clone(),
            run.attempt,
            run.scheduled_for,
            cancel.clone(),
        );
        let claim = RunClaim {
            run_id: run.run_id,
            attempt: run.attempt,
            instance: self.config.instance.clone(),
        };
        let key = (run.run_id, run.attempt);
        let mut secrets = self.registry.secrets_of(&run.handler, &run.kwargs);
        // A callback run's attempt gets its token now; its hash is stored
        // before the handler starts (so the service can call back as soon
        // as it has the request), and the secret is scrubbed like a kwarg
        // secret from whatever the attempt reports.
        let wants_callback = self
            .registry
            .get(&run.handler)
            .is_some_and(|h| h.wants_callback(&run.kwargs));
        let callback = wants_callback
            .then(|| self.config.callbacks.url_of(run.run_id))
            .flatten()
            .map(|url| (url, crate::callbacks::token::mint()));
        let ctx = match &callback {
            Some((url, minted)) => {
                secrets.push(minted.secret.clone());
                ctx.with_callback(crate::callbacks::CallbackGrant {
                    url: url.clone(),
                    token: minted.secret.clone(),
                })
            }
            None => ctx,
        };
        let secrets = Arc::new(secrets);
        if let Ok(mut active) = self.active.lock() {
            active.insert(
                key,
                Active {
                    claim: claim.clone(),
                    cancel,
                    stop: stop.clone(),
                    progress: ctx.progress_updates(),
                    secrets: secrets.clone(),
                },
            );
        }
        self.metrics.run_started(&run);
        let handler_metrics = self.metrics.handler(&run.handler);
        let pool = self.clone();
        let span = tracing::info_span!(
            "run",
            run_id = %run.run_id,
            job_id = %run.job_id,
            handler = %run.handler,
            attempt = run.attempt,
            instance = %self.config.instance,
        );
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let began = tokio::time::Instant::now();
                let execution = match &callback {
                    Some((_, minted)) => match pool
                        .store
                        .callback_token_insert(&minted.hash, run.run_id, run.attempt)
                        .await
                    {
                        Ok(()) => pool.execute(&run, ctx, &stop).await,
                        Err(e) => Execution::Failed {
                            error: format!("storing the attempt's callback token failed: {e}"),
                            traceback: String::new(),
                            retryable: true,
                        },
                    },
                    None => pool.execute(&run, ctx, &stop).await,
                }
                .scrubbed(&secrets);
                let ended = tokio::time::Instant::now();
                drop(slot);
                pool.finished.notify_one();
                let counted = Counted {
                    handler: &handler_metrics,
                    ran: ended.saturating_duration_since(began),
                };
                pool.record(&run, &claim, execution, ended, counted, callback.is_some())
                    .await;
                if let Ok(mut active) = pool.active.lock() {
                    active.remove(&key);
                }
                if run.lock_key.is_some() {
                    pool.lock_released.notify_one();
                }
                pool.finished.notify_one();
            },
            span,
        ));
    }

    async fn execute(&self, run: &RunRow, ctx: RunContext, stop: &StopSignal) -> Execution {
        let Some(handler) = self.registry.get(&run.handler).cloned() else {
            return Execution::Failed {
                error: format!(
                    "handler {:?} is not registered on instance {}",
                    run.handler, self.config.instance
                ),
                traceback: String::new(),
                retryable: false,
            };
        };
        tracing::debug!("run started");
        let timeout = run
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.max(0) as u64));
        execute::execute(
            handler,
            ctx,
            run.kwargs.clone(),
            timeout,
            stop,
            self.config.cancel_grace,
        )
        .await
    }

    /// Stores the outcome; retries the write a few times if the database
    /// hiccups (after that the lease expires and the supervisor re-queues
    /// the run: at-least-once). A written end or retry is counted in the
    /// metrics (a stale one is not: whoever took the run over counts it).
    async fn record(
        &self,
        run: &RunRow,
        claim: &RunClaim,
        execution: Execution,
        ended: tokio::time::Instant,
        counted: Counted<'_>,
        callback: bool,
    ) {
        match &execution {
            Execution::Failed { error, .. } => tracing::warn!(error = %error, "run attempt failed"),
            Execution::TimedOut(_) => tracing::warn!("run attempt timed out"),
            Execution::Stopped(StopReason::LeaseLost) => {
                tracing::warn!("lease lost; the run belongs to another instance now")
            }
            _ => {}
        }
        let (limit, jitter) = (self.config.max_result_bytes, rand::random::<f64>());
        let write = if callback {
            let window =
                crate::callbacks::rules::window(run.timeout_ms, self.config.callbacks.timeout);
            outcome::decide_callback(run, execution, limit, jitter, window)
        } else {
            outcome::decide(run, execution, limit, jitter)
        };
        for failures in 1..=5u32 {
            let written = match &write {
                Write::Finish(o) => self
                    .completer
                    .finish(claim.clone(), o.clone(), ended)
                    .await
                    .map_err(StoreFailure::Completer),
                Write::Retry(r) => self
                    .store
                    .run_retry(claim, r)
                    .await
                    .map_err(StoreFailure::Store),
                Write::HandBack => self
                    .store
                    .run_hand_back(std::slice::from_ref(claim), "handed back at shutdown")
                    .await
                    .map(|n| n == 1)
                    .map_err(StoreFailure::Store),
                Write::AwaitCallback { deadline, reason } => {
                    match self
                        .store
                        .run_await_callback(claim, *deadline, reason)
                        .await
                    {
                        Ok(true) => {
                            tracing::info!(%deadline, "request accepted; waiting for the callback");
                            return;
                        }
                        Ok(false) => {
                            tracing::info!("the run ended before it was marked waiting for its callback (reported back, cancelled or overridden first)");
                            return;
                        }
                        Err(e) => Err(StoreFailure::Store(e)),
                    }
                }
                Write::Nothing => return,
            };
            match written {
                Ok(true) => {
                    match &write {
                        Write::Finish(o) => counted.handler.ended(o.state, Some(counted.ran)),
                        Write::Retry(_) => self.metrics.retried(),
                        Write::HandBack | Write::AwaitCallback { .. } | Write::Nothing => {}
                    }
                    return;
                }
                Ok(false) => {
                    tracing::warn!("outcome not recorded: the run is no longer this instance's (cancelled, overridden or taken over)");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "recording the outcome failed; retrying");
                    tokio::time::sleep(backoff(failures, Duration::from_secs(5))).await;
                }
            }
        }
    }

    /// Renews the leases of the active attempts; stops those this instance
    /// no longer holds and those with a pending cancel request.
    pub async fn heartbeat_once(&self) -> crate::store::StoreResult<()> {
        let rows = self.heartbeat_rows().await;
        self.heartbeat_runs().await?;
        rows
    }

    async fn heartbeat_runs(&self) -> crate::store::StoreResult<()> {
        // Progress goes only when it changed since it was last sent (and is
        // marked unsent again if the renewal fails).
        let held: Vec<(RunClaim, Option<Value>)> = match self.active.lock() {
            Ok(mut active) => active
                .values_mut()
                .map(|a| {
                    let mut progress = None;
                    if a.progress.has_changed().unwrap_or(false) {
                        progress = a.progress.borrow_and_update().clone();
                    }
                    if let Some(progress) = &mut progress {
                        scrub_value(progress, &a.secrets);
                    }
                    (a.claim.clone(), progress)
                })
                .collect(),
            Err(_) => return Ok(()),
        };
        if held.is_empty() {
            return Ok(());
        }
        let lease_ms = self.config.lease.as_millis() as i64;
        let acks = match self
            .store
            .run_heartbeat(&self.config.instance, lease_ms, &held)
            .await
        {
            Ok(acks) => acks,
            Err(e) => {
                if let Ok(mut active) = self.active.lock() {
                    for (claim, _) in held.iter().filter(|(_, p)| p.is_some()) {
                        if let Some(a) = active.get_mut(&(claim.run_id, claim.attempt)) {
                            a.progress.mark_changed();
                        }
                    }
                }
                return Err(e);
            }
        };
        for (claim, _) in &held {
            let key = (claim.run_id, claim.attempt);
            match acks.iter().find(|a| (a.run_id, a.attempt) == key) {
                None => self.stop_attempt(key, StopReason::LeaseLost),
                Some(ack) if ack.cancel_requested => self.stop_attempt(
                    key,
                    StopReason::Cancelled("cancelled through the API".into()),
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Heartbeats every [`renewal_interval`]. A replica that cannot renew
    /// (it lost the database) fences itself: once a renewal has been
    /// missing for [`self_fence_after`], every active handler is stopped, so
    /// that each has stopped, its cancel grace included, before its lease
    /// can expire and another replica take the run over. A renewal attempt
    /// is bounded by the interval and by that moment, so a hanging database
    /// cannot delay the stop.
    async fn heartbeat_loop(self, stop: CancellationToken) {
        let every = renewal_interval(self.config.lease);
        let fence_after = self_fence_after(self.config.lease, self.config.cancel_grace);
        // When the last renewal that succeeded was sent: the lease it set
        // runs from the database's `now()`, which is no earlier.
        let mut renewed_at = tokio::time::Instant::now();
        let mut fenced = false;
        loop {
            // The stop begins at `fence_at` at the latest, however long the
            // renewal attempts take: the wait and each attempt end by then.
            let fence_at = renewed_at + fence_after;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
                _ = tokio::time::sleep_until(fence_at), if !fenced => {}
            }
            let sent = tokio::time::Instant::now();
            let bound = if fenced {
                every
            } else {
                every.min(fence_at.saturating_duration_since(sent))
            };
            match tokio::time::timeout(bound, self.heartbeat_once()).await {
                Ok(Ok(())) => {
                    renewed_at = sent;
                    fenced = false;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat failed"),
                Err(_) => tracing::warn!("heartbeat timed out"),
            }
            if !fenced && renewed_at.elapsed() >= fence_after {
                tracing::error!(
                    unrenewed_for = ?renewed_at.elapsed(),
                    "leases could not be renewed; stopping every run here before they expire"
                );
                self.stop_all(StopReason::LeaseLost);
                fenced = true;
            }
        }
    }

    fn stop_all(&self, reason: StopReason) {
        self.stop_all_rows(reason.clone());
        if let Ok(active) = self.active.lock() {
            for run in active.values() {
                run.stop(reason.clone());
            }
        }
    }

    /// Runs until `shutdown`, then drains (see the module docs).
    pub async fn run(self, shutdown: CancellationToken) {
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(self.clone().heartbeat_loop(heartbeat_stop.clone()));
        let mut listener = match self.store.listen().await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "workers: cannot listen for notifications; polling");
                None
            }
        };
        // Claim only when runs may be waiting: at start; after a claim that
        // filled every slot it had ("saturated": the queue may hold more),
        // then once a quarter of the slots are free again, so claims stay
        // batched instead of one per finished run; on word that runs were
        // queued or a local lock key was released; and when the soonest
        // queued run comes due or the poll interval passes. A handler that
        // merely finished is no reason: the last claim found the queue empty.
        //
        // Batching never leaves a slot idle for long: while saturated, a
        // claim also happens once the poll interval has passed since the
        // last one, whatever number of slots is free.
        let refill = (self.config.concurrency / 4).max(1);
        let mut runs_may_wait = true;
        let mut saturated = false;
        let mut failures = 0u32;
        let mut last_claim = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            let mut wait = self.config.poll_interval;
            let free = self.free_slots();
            let overdue = last_claim.elapsed() >= self.config.poll_interval;
            let claim_now = if saturated {
                free >= refill || (free > 0 && overdue)
            } else {
                runs_may_wait
            };
            if saturated && !claim_now && free > 0 {
                // Wake at the poll bound to fill whatever is free by then
                // (with no slot free, a finishing run wakes the loop).
                wait = self
                    .config
                    .poll_interval
                    .saturating_sub(last_claim.elapsed())
                    .max(Duration::from_millis(1));
            }
            if claim_now {
                last_claim = tokio::time::Instant::now();
                match self.claim_once().await {
                    Ok((_, unfilled)) => {
                        failures = 0;
                        saturated = !unfilled;
                        runs_may_wait = false;
                        if saturated && self.free_slots() >= refill {
                            continue;
                        }
                        if unfilled {
                            if let Ok(Some(next)) = self.store.run_next_queued_in().await {
                                wait = wait.min(next.max(Duration::from_millis(1)));
                            }
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::error!(error = %e, "workers: claiming runs failed");
                        wait = backoff(failures, self.config.poll_interval);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => runs_may_wait = true,
                // A freed slot matters only while the queue holds more.
                _ = self.finished.notified(), if saturated => {}
                _ = self.queued.notified() => runs_may_wait = true,
                _ = self.lock_released.notified() => runs_may_wait = true,
                notice = notify::next(&mut listener) => {
                    for run_id in notice.cancel {
                        self.stop_run(run_id, StopReason::Cancelled("cancelled through the API".into()));
                    }
                    // Runs queued, a lock key released, or the listener
                    // reconnected (and may have missed notifications).
                    runs_may_wait |= notice.runs_queued;
                }
            }
        }
        self.drain().await;
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
    }

    /// Waits up to `shutdown_grace` for running runs, then stops the rest
    /// (they are handed back to the queue) and waits for them to be recorded.
    async fn drain(&self) {
        self.closing.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;
        while self.held() > 0 && tokio::time::Instant::now() < deadline {
            tracing::info!(
                running = self.active_count(),
                "waiting for running runs before stopping"
            );
            let _ = tokio::time::timeout_at(deadline, self.finished.notified()).await;
        }
        self.stop_all(StopReason::Shutdown);
        let hard_deadline =
            tokio::time::Instant::now() + self.config.cancel_grace + Duration::from_secs(5);
        while self.held() > 0 && tokio::time::Instant::now() < hard_deadline {
            let _ = tokio::time::timeout_at(hard_deadline, self.finished.notified()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_stops_its_handlers_before_its_leases_can_expire() {
        let (lease, grace) = (Duration::from_secs(30), Duration::from_secs(5));
        let fence = self_fence_after(lease, grace);
        assert_eq!(fence, Duration::from_secs(15));
        // Noticed at most one renewal late, stopped within the grace: done
        // by the time the last renewed lease runs out.
        assert!(fence + renewal_interval(lease) + grace <= lease);
        assert!(check_lease_settings(lease, grace).is_ok());
        assert!(check_lease_settings(Duration::from_secs(2), Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn settings_that_leave_no_tolerance_are_refused() {
        let err = check_lease_settings(Duration::from_secs(10), Duration::from_secs(5))
            .expect_err("a grace of half the lease leaves too little");
        assert!(err.contains("--cancel-grace"), "{err}");
        assert!(check_lease_settings(Duration::from_secs(2), Duration::from_secs(5)).is_err());
        assert!(check_lease_settings(Duration::from_millis(100), Duration::ZERO).is_err());
    }
}
