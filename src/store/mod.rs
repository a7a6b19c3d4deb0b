//! The storage interface: every read and write the scheduler, the workers
//! and the API make, at the level of the domain (`job_insert`, `run_claim`,
//! ...). Nothing outside this module builds SQL.
//!
//! [`Store`] is an enum over the backends, not a trait object: the set of
//! backends is closed and known at compile time, so each call is a plain
//! `match` (async methods need no boxing, and the firing transaction each
//! backend holds open, [`DueBatch`], stays a concrete type). Each backend
//! lives in its own folder with its own SQL and migrations; the rules both
//! would otherwise repeat are pure functions in [`crate::domain::rules`].

pub(crate) mod audit;
pub mod batches;
pub mod bench;
pub(crate) mod callbacks;
mod connect;
pub(crate) mod default_jobs;
pub mod events;
pub(crate) mod execution;
pub(crate) mod firing;
pub(crate) mod idempotency;
pub(crate) mod instances;
pub(crate) mod jobs;
pub mod notify;
pub mod postgres;
pub(crate) mod runs;
pub mod sqlite;
pub mod stats;
pub(crate) mod tokens;
pub mod webhooks;

use crate::domain::RunState;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

pub use alerts::{AlertAdvance, AlertFeed, NewAlert, RunningRun, WatchedJob};
pub use audit::{AuditEntry, AuditFilter, AuditMethod};
pub use batches::{
    BatchCountsCheck, BatchFilter, BatchRow, ClaimedRow, NewBatch, NewRows, RowAck, RowClaim,
    RowClaimSlots, RowEnd, RowFilter, RowRecord,
};
pub use callbacks::CallbackRun;
pub use connect::{redact_url, Backend, ConnectError, StoreOptions, SCHEMES};
pub use default_jobs::{FileJobPlan, FileJobRow, FileUpsert, FileUpsertResult};
pub use events::{EventPage, EventPosition, EventQuery, EventRow, EventWakes, TicketRow};
pub use execution::{ClaimSlots, HeartbeatAck, RunClaim, RunOutcome, RunRetry};
pub use firing::{DueBatch, DueJob, FiredRun, JobAdvance, NextDue};
pub use idempotency::{Begun, IdempotencyBegin, IdempotencyKey, StoredAnswer, StoredKey};
pub use instances::{InstanceRow, LockRow};
pub use jobs::{JobFilter, JobRow, JobType, NewJob};
pub use notify::{Listener, Notice};
pub use postgres::PgStore;
pub use runs::{ActiveCounts, ManualRun, RunFilter, RunRow};
pub use sqlite::{ServeLock, SqliteOptions, SqliteStore, Synchronous};
pub use stats::{PoolConnections, RunCountsCheck, StatsRow};
pub use tokens::{NewToken, TokenKey, TokenRow};
pub use webhooks::{
    AttemptEnd, AttemptRow, ClaimedDelivery, DeliveryClaim, DeliveryRow, DeliveryState,
    DeliveryStep, FeedAdvance, NewDelivery, NewWebhook, WebhookRow, WebhookSpec,
};

/// Errors of the storage layer. `NotFound` and `Conflict` are the caller's
/// to explain; `Database` is a fault (logged, answered with a 500).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// A conditional write found the row changed since it was read: re-read
    /// and apply the change again.
    #[error("the row was changed since it was read")]
    Stale,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Handle to the store. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgStore),
    /// The embedded store: one SQLite file, one replica.
    Sqlite(SqliteStore),
}

/// Calls the same method on whichever backend `$store` is.
macro_rules! on_backend {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            Store::Postgres($s) => $call,
            Store::Sqlite($s) => $call,
        }
    };
}

// After `on_backend!`, which they use.
pub mod alerts;
pub mod copy;

impl Store {
    pub fn backend(&self) -> Backend {
        match self {
            Store::Postgres(_) => Backend::Postgres,
            Store::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The PostgreSQL store, if this is one (benchmarks and plan tests).
    pub fn as_postgres(&self) -> Option<&PgStore> {
        match self {
            Store::Postgres(s) => Some(s),
            Store::Sqlite(_) => None,
        }
    }

    /// The embedded store, if this is one.
    pub fn as_sqlite(&self) -> Option<&SqliteStore> {
        match self {
            Store::Sqlite(s) => Some(s),
            Store::Postgres(_) => None,
        }
    }

    /// Applies the backend's migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        on_backend!(self, s => s.migrate().await)
    }

    /// Readiness: one round trip to the database.
    pub async fn ping(&self) -> StoreResult<()> {
        on_backend!(self, s => s.ping().await)
    }

    /// The store's clock (the database's on PostgreSQL).
    pub async fn now(&self) -> StoreResult<DateTime<Utc>> {
        on_backend!(self, s => s.now().await)
    }

    // Jobs.

    /// Inserts a job; `Conflict` when its `job_id` is taken. If it is due,
    /// its run is queued for any replica, fired by `instance`.
    pub async fn job_insert(&self, job: &NewJob, instance: &str) -> StoreResult<JobRow> {
        self.job_insert_many(std::slice::from_ref(job), &ClaimSlots::none(instance))
            .await?;
        self.job_get(&job.job_id).await
    }

    /// Inserts jobs, all or none; `Conflict` naming the first `job_id`
    /// already taken. A one-shot job due already gets its run at once, up
    /// to `claim.limit` of them claimed by `claim.instance` and returned to
    /// be started; the others are queued. Wakes the schedulers.
    pub async fn job_insert_many(
        &self,
        jobs: &[NewJob],
        claim: &ClaimSlots,
    ) -> StoreResult<Vec<RunRow>> {
        on_backend!(self, s => s.job_insert_many(jobs, claim).await)
    }

    /// Replaces a job's definition if the row is still at `version`;
    /// `Stale` when another write came first.
    pub async fn job_replace(&self, job: &NewJob, version: i64) -> StoreResult<JobRow> {
        on_backend!(self, s => s.job_replace(job, version).await)
    }

    pub async fn job_get(&self, job_id: &str) -> StoreResult<JobRow> {
        on_backend!(self, s => s.job_get(job_id).await)
    }

    /// One page of jobs, oldest first, and the number matching the filter.
    pub async fn job_list(&self, filter: &JobFilter) -> StoreResult<(Vec<JobRow>, i64)> {
        on_backend!(self, s => s.job_list(filter).await)
    }

    /// Pauses or resumes a job if the row is still at `version`; `Stale`
    /// otherwise, and for a completed one-shot job, which is left alone
    /// (the caller re-reads it and sees it completed).
    pub async fn job_set_state(
        &self,
        job_id: &str,
        state: crate::domain::JobState,
        next_run_at: Option<DateTime<Utc>>,
        version: i64,
    ) -> StoreResult<JobRow> {
        on_backend!(self, s => s.job_set_state(job_id, state, next_run_at, version).await)
    }

    /// Deletes a job and its runs (running ones are cancelled and removed
    /// when they end). `NotFound` when there is none.
    pub async fn job_delete(&self, job_id: &str) -> StoreResult<()> {
        on_backend!(self, s => s.job_delete(job_id).await)
    }

    /// Deletes every failure record; returns their ids.
    pub async fn job_delete_failed(&self) -> StoreResult<Vec<String>> {
        on_backend!(self, s => s.job_delete_failed().await)
    }

    // Events (the outbox the stores' triggers write).

    /// One page of events in cursor order (see `EventPosition`).
    pub async fn events_page(&self, query: &EventQuery) -> StoreResult<EventPage> {
        on_backend!(self, s => s.events_page(query).await)
    }

    /// Deletes up to `limit` events older than `cutoff`; how many went.
    pub async fn events_prune_before(&self, cutoff: DateTime<Utc>, limit: i64) -> StoreResult<u64> {
        on_backend!(self, s => s.events_prune_before(cutoff, limit).await)
    }

    /// Stores a stream ticket by the SHA-256 of its secret.
    pub async fn event_ticket_insert(
        &self,
        hash: &str,
        token_id: Option<Uuid>,
        query: &str,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        on_backend!(self, s => s.event_ticket_insert(hash, token_id, query, expires_at).await)
    }

    pub async fn event_ticket_get(&self, hash: &str) -> StoreResult<Option<TicketRow>> {
        on_backend!(self, s => s.event_ticket_get(hash).await)
    }

    /// Deletes the tickets expired before `now`.
    pub async fn event_tickets_prune(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        on_backend!(self, s => s.event_tickets_prune(now).await)
    }

    /// Wake-ups for this process's readers of the events.
    pub async fn event_wakes(&self) -> StoreResult<EventWakes> {
        match self {
            Store::Postgres(s) => Ok(EventWakes::Postgres(s.listen_events().await?)),
            Store::Sqlite(s) => Ok(EventWakes::Sqlite(s.event_commits())),
        }
    }

    /// The runs among `ids` that still exist, in no order.
    pub async fn run_get_many(&self, ids: &[Uuid]) -> StoreResult<Vec<RunRow>> {
        on_backend!(self, s => s.run_get_many(ids).await)
    }

    /// The jobs among `ids` that still exist, in no order.
    pub async fn job_get_many(&self, ids: &[String]) -> StoreResult<Vec<JobRow>> {
        on_backend!(self, s => s.job_get_many(ids).await)
    }

    // Default-job files.

    /// Inserts or updates a file's job as `plan` decides from the stored
    /// row, under locks that make concurrent loaders safe.
    pub async fn job_upsert_from_file(
        &self,
        job_id: &str,
        plan: impl FnOnce(Option<&FileJobRow>) -> FileJobPlan,
    ) -> StoreResult<FileUpsertResult> {
        on_backend!(self, s => s.job_upsert_from_file(job_id, plan).await)
    }

    /// Lets go of the jobs whose file in `dir_prefix` is not in `present`.
    pub async fn job_release_files(
        &self,
        dir_prefix: &str,
        present: &[String],
    ) -> StoreResult<Vec<String>> {
        on_backend!(self, s => s.job_release_files(dir_prefix, present).await)
    }

    /// The `state` a job's file declared when last applied.
    pub async fn job_file_state(
        &self,
        job_id: &str,
    ) -> StoreResult<Option<crate::domain::JobState>> {
        on_backend!(self, s => s.job_file_state(job_id).await)
    }

    // Runs.

    pub async fn run_get(&self, run_id: Uuid) -> StoreResult<RunRow> {
        on_backend!(self, s => s.run_get(run_id).await)
    }

    /// Runs matching the filter, newest first, and how many match in all.
    pub async fn run_list(&self, filter: &RunFilter) -> StoreResult<(Vec<RunRow>, i64)> {
        on_backend!(self, s => s.run_list(filter).await)
    }

    /// The newest run of a job.
    pub async fn run_latest(&self, job_id: &str) -> StoreResult<RunRow> {
        on_backend!(self, s => s.run_latest(job_id).await)
    }

    /// Queues a manual run now; `Conflict` when the job's slots are taken.
    pub async fn run_trigger(&self, run: &ManualRun) -> StoreResult<RunRow> {
        on_backend!(self, s => s.run_trigger(run).await)
    }

    /// Cancels a run (a running one is flagged and its instance told).
    pub async fn run_cancel(&self, run_id: Uuid, reason: &str) -> StoreResult<RunRow> {
        on_backend!(self, s => s.run_cancel(run_id, reason).await)
    }

    /// Operator override of a run's state, recorded in its history.
    pub async fn run_override_state(
        &self,
        run_id: Uuid,
        state: crate::domain::RunState,
        reason: &str,
    ) -> StoreResult<RunRow> {
        on_backend!(self, s => s.run_override_state(run_id, state, reason).await)
    }

    // Execution.

    /// Claims up to `slots.limit` due queued runs for `slots.instance`.
    pub async fn run_claim(&self, slots: &ClaimSlots) -> StoreResult<Vec<RunRow>> {
        on_backend!(self, s => s.run_claim(slots).await)
    }

    /// The soonest start of a queued run that no lock key blocks.
    pub async fn run_next_queued_in(&self) -> StoreResult<Option<std::time::Duration>> {
        on_backend!(self, s => s.run_next_queued_in().await)
    }

    /// Renews the leases of this instance's running attempts.
    pub async fn run_heartbeat(
        &self,
        instance: &str,
        lease_ms: i64,
        runs: &[(RunClaim, Option<Value>)],
    ) -> StoreResult<Vec<HeartbeatAck>> {
        on_backend!(self, s => s.run_heartbeat(instance, lease_ms, runs).await)
    }

    /// Records the end of an attempt; false when the claim is stale.
    pub async fn run_finish(&self, claim: &RunClaim, outcome: &RunOutcome) -> StoreResult<bool> {
        on_backend!(self, s => s.run_finish(claim, outcome).await)
    }

    /// [`Store::run_finish`] for many runs; returns those written.
    pub async fn run_finish_many(
        &self,
        finished: &[(RunClaim, RunOutcome)],
    ) -> StoreResult<Vec<Uuid>> {
        on_backend!(self, s => s.run_finish_many(finished).await)
    }

    /// Queues a failed attempt again after its backoff; false when stale.
    pub async fn run_retry(&self, claim: &RunClaim, retry: &RunRetry) -> StoreResult<bool> {
        on_backend!(self, s => s.run_retry(claim, retry).await)
    }

    /// Hands runs back to the queue (graceful shutdown).
    pub async fn run_hand_back(&self, claims: &[RunClaim], reason: &str) -> StoreResult<u64> {
        on_backend!(self, s => s.run_hand_back(claims, reason).await)
    }

    /// Rescues running runs whose lease expired.
    pub async fn run_rescue_expired(&self, limit: i64, rescuer: &str) -> StoreResult<Vec<RunRow>> {
        on_backend!(self, s => s.run_rescue_expired(limit, rescuer).await)
    }

    /// Decides runs left waiting whose job has no running run left.
    pub async fn run_settle_waiting(
        &self,
        among: Option<&[String]>,
        limit: i64,
    ) -> StoreResult<u64> {
        on_backend!(self, s => s.run_settle_waiting(among, limit).await)
    }

    // Remote completion (src/callbacks/).

    /// Stores the hash of attempt `attempt`'s callback token of `run_id`.
    pub async fn callback_token_insert(
        &self,
        hash: &str,
        run_id: Uuid,
        attempt: i32,
    ) -> StoreResult<()> {
        on_backend!(self, s => s.callback_token_insert(hash, run_id, attempt).await)
    }

    /// The run and attempt whose callback token hashes to `hash`.
    pub async fn callback_token_owner(
        &self,
        hash: &str,
    ) -> StoreResult<Option<crate::callbacks::rules::TokenOwner>> {
        on_backend!(self, s => s.callback_token_owner(hash).await)
    }

    /// A run with its callback facts; `NotFound` when there is none.
    pub async fn callback_run_get(&self, run_id: Uuid) -> StoreResult<CallbackRun> {
        on_backend!(self, s => s.callback_run_get(run_id).await)
    }

    /// Marks the claimed attempt as accepted by its service and waiting for
    /// its callback until `deadline`, and clears its lease (no handler
    /// holds it now: the lease-expiry rescue passes it by, and the worker's
    /// heartbeat no longer renews it). `reason` goes into its history.
    /// False when the claim is stale (the run was completed, cancelled or
    /// overridden meanwhile).
    pub async fn run_await_callback(
        &self,
        claim: &RunClaim,
        deadline: DateTime<Utc>,
        reason: &str,
    ) -> StoreResult<bool> {
        on_backend!(self, s => s.run_await_callback(claim, deadline, reason).await)
    }

    /// Stores the progress a running attempt's service reported; returns
    /// when it was written (`progress_updated_at`), None when the run is
    /// no longer running at `attempt`.
    pub async fn run_callback_progress(
        &self,
        run_id: Uuid,
        attempt: i32,
        progress: &Value,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        on_backend!(self, s => s.run_callback_progress(run_id, attempt, progress).await)
    }

    /// Moves the deadline of an attempt waiting for its callback to
    /// `deadline`; false when it is no longer waiting at `attempt`.
    pub async fn run_callback_heartbeat(
        &self,
        run_id: Uuid,
        attempt: i32,
        deadline: DateTime<Utc>,
    ) -> StoreResult<bool> {
        on_backend!(self, s => s.run_callback_heartbeat(run_id, attempt, deadline).await)
    }

    /// Up to `limit` runs waiting for a callback whose deadline has passed
    /// or whose cancel was requested, soonest deadline first.
    pub async fn run_callbacks_due(&self, limit: i64) -> StoreResult<Vec<CallbackRun>> {
        on_backend!(self, s => s.run_callbacks_due(limit).await)
    }

    /// Deletes up to `limit` callback tokens whose run is gone.
    pub async fn callback_tokens_prune(&self, limit: i64) -> StoreResult<u64> {
        on_backend!(self, s => s.callback_tokens_prune(limit).await)
    }

    // Firing.

    /// Locks up to `limit` due jobs, with their run counts, until the
    /// batch is committed. None while the service is paused.
    pub async fn due_jobs_claim(&self, limit: i64) -> StoreResult<DueBatch> {
        on_backend!(self, s => s.due_jobs_claim(limit).await)
    }

    /// The next due time and how long until it.
    pub async fn due_jobs_next(&self) -> StoreResult<Option<NextDue>> {
        on_backend!(self, s => s.due_jobs_next().await)
    }

    // Replicas and service state.

    /// Registers or refreshes this replica, and prunes silent ones.
    pub async fn instance_heartbeat(
        &self,
        name: &str,
        version: &str,
        address: Option<&str>,
        prune_after_ms: i64,
    ) -> StoreResult<()> {
        on_backend!(self, s => s.instance_heartbeat(name, version, address, prune_after_ms).await)
    }

    /// Removes this replica (graceful shutdown).
    pub async fn instance_remove(&self, name: &str) -> StoreResult<()> {
        on_backend!(self, s => s.instance_remove(name).await)
    }

    /// The registered replicas; `alive` means a heartbeat within `alive_ms`.
    pub async fn instance_list(&self, alive_ms: i64) -> StoreResult<Vec<InstanceRow>> {
        on_backend!(self, s => s.instance_list(alive_ms).await)
    }

    /// Lock keys held by running runs.
    pub async fn lock_list(&self) -> StoreResult<Vec<LockRow>> {
        on_backend!(self, s => s.lock_list().await)
    }

    /// Whether scheduling is paused service-wide.
    pub async fn service_paused(&self) -> StoreResult<bool> {
        on_backend!(self, s => s.service_paused().await)
    }

    /// Pauses or resumes all scheduling.
    pub async fn service_set_paused(&self, paused: bool) -> StoreResult<()> {
        on_backend!(self, s => s.service_set_paused(paused).await)
    }

    // Retention (src/retention/): each call deletes at most `limit` rows
    // and says how many; safe to race between replicas.

    /// Deletes finished runs (in `states`) that ended, or were created when
    /// they have no end, before `cutoff`, except those of jobs with
    /// `keep_runs`.
    pub async fn runs_prune_finished_before(
        &self,
        cutoff: DateTime<Utc>,
        states: &[RunState],
        limit: i64,
    ) -> StoreResult<u64> {
        on_backend!(self, s => s.runs_prune_finished_before(cutoff, states, limit).await)
    }

    /// The jobs with `keep_runs`, and its value.
    pub async fn jobs_keeping_runs(&self) -> StoreResult<Vec<(String, i32)>> {
        on_backend!(self, s => s.jobs_keeping_runs().await)
    }

    /// Deletes the finished runs (in `states`) of `job_id` beyond its
    /// newest `keep` finished ones (newest by creation).
    pub async fn runs_prune_beyond_newest(
        &self,
        job_id: &str,
        keep: i32,
        states: &[RunState],
        limit: i64,
    ) -> StoreResult<u64> {
        on_backend!(self, s => s.runs_prune_beyond_newest(job_id, keep, states, limit).await)
    }

    /// Deletes completed one-shot jobs (not failure records) that have no
    /// runs left.
    pub async fn jobs_prune_completed_without_runs(&self, limit: i64) -> StoreResult<u64> {
        on_backend!(self, s => s.jobs_prune_completed_without_runs(limit).await)
    }

    /// Deletes failure records created before `cutoff`.
    pub async fn jobs_prune_failure_records_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<u64> {
        on_backend!(self, s => s.jobs_prune_failure_records_before(cutoff, limit).await)
    }

    // Stats.

    /// Jobs and runs by state, the oldest due queued run and how many are
    /// due, without counting run history (runs come from the run counters).
    pub async fn stats(&self) -> StoreResult<StatsRow> {
        on_backend!(self, s => s.stats().await)
    }

    /// The pools' open connections, idle and in use (no round trip).
    pub fn pool_connections(&self) -> PoolConnections {
        on_backend!(self, s => s.pool_connections())
    }

    /// The run counters of `job_id` summed by state, beside a count of its
    /// stored runs by state (both without zeros, sorted by state name):
    /// equal unless a counter drifted. A check for tests and operators.
    pub async fn run_counts_check(&self, job_id: &str) -> StoreResult<RunCountsCheck> {
        on_backend!(self, s => s.run_counts_check(job_id).await)
    }

    // API tokens.

    /// Stores a new token; `Conflict` when its prefix or hash is taken.
    pub async fn token_insert(&self, token: &NewToken) -> StoreResult<TokenRow> {
        on_backend!(self, s => s.token_insert(token).await)
    }

    /// Every token, oldest first (revoked and expired ones too).
    pub async fn token_list(&self) -> StoreResult<Vec<TokenRow>> {
        on_backend!(self, s => s.token_list().await)
    }

    /// The token whose secret hashes to `hash` (hex SHA-256), whatever its
    /// state: whether it is accepted is the caller's rule.
    pub async fn token_find_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRow>> {
        on_backend!(self, s => s.token_find_by_hash(hash).await)
    }

    /// Whether any token was ever stored (revoked and expired ones count).
    pub async fn token_exists(&self) -> StoreResult<bool> {
        on_backend!(self, s => s.token_exists().await)
    }

    /// How many tokens of `scope` are live (neither revoked nor expired) at `now`.
    pub async fn token_count_live(
        &self,
        scope: crate::auth::Scope,
        now: DateTime<Utc>,
    ) -> StoreResult<i64> {
        on_backend!(self, s => s.token_count_live(scope, now).await)
    }

    /// Revokes the token `key` names, at `now`; `NotFound` when there is
    /// none. `check` sees the token and how many other admin tokens are
    /// live, under a lock that serializes revocations on every replica; its
    /// `Err` is returned as `Conflict` and nothing is written. A token
    /// revoked already is returned as it is.
    pub async fn token_revoke(
        &self,
        key: &TokenKey,
        now: DateTime<Utc>,
        check: impl FnOnce(&TokenRow, i64) -> Result<(), String>,
    ) -> StoreResult<TokenRow> {
        on_backend!(self, s => s.token_revoke(key, now, check).await)
    }

    /// Records when tokens were last used (a time older than the stored one
    /// is ignored).
    pub async fn token_touch(&self, used: &[(Uuid, DateTime<Utc>)]) -> StoreResult<()> {
        on_backend!(self, s => s.token_touch(used).await)
    }

    // Idempotency keys (src/idempotency/).

    /// Takes `begin.key` for this attempt (storing it pending), unless
    /// another request holds it and it has not expired: then that one's
    /// stored key. Of concurrent attempts exactly one gets `Started`.
    pub async fn idempotency_begin(&self, begin: &IdempotencyBegin) -> StoreResult<Begun> {
        on_backend!(self, s => s.idempotency_begin(begin).await)
    }

    /// Stores the answer of the attempt `claim` under its pending key;
    /// false when the key is no longer that attempt's pending one.
    pub async fn idempotency_complete(
        &self,
        key: &IdempotencyKey,
        claim: Uuid,
        answer: &StoredAnswer,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        on_backend!(self, s => s.idempotency_complete(key, claim, answer, now).await)
    }

    /// Deletes the pending key of the attempt `claim` (its request failed
    /// in a way a retry may fix); false when it is not that attempt's.
    pub async fn idempotency_release(
        &self,
        key: &IdempotencyKey,
        claim: Uuid,
    ) -> StoreResult<bool> {
        on_backend!(self, s => s.idempotency_release(key, claim).await)
    }

    /// Deletes up to `limit` keys created before `cutoff` (expired).
    pub async fn idempotency_prune_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<u64> {
        on_backend!(self, s => s.idempotency_prune_before(cutoff, limit).await)
    }

    // The audit log (src/audit/).

    pub async fn audit_insert(&self, entry: &AuditEntry) -> StoreResult<()> {
        on_backend!(self, s => s.audit_insert(entry).await)
    }

    /// Entries matching the filter, newest (highest id) first.
    pub async fn audit_list(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>> {
        on_backend!(self, s => s.audit_list(filter).await)
    }

    /// Deletes up to `limit` entries recorded before `cutoff`.
    pub async fn audit_prune_before(&self, cutoff: DateTime<Utc>, limit: i64) -> StoreResult<u64> {
        on_backend!(self, s => s.audit_prune_before(cutoff, limit).await)
    }

    // Webhooks (src/webhooks/).

    /// Stores a new webhook; `Conflict` when its name is taken.
    pub async fn webhook_insert(&self, webhook: &NewWebhook) -> StoreResult<WebhookRow> {
        on_backend!(self, s => s.webhook_insert(webhook).await)
    }

    /// Every webhook, oldest first.
    pub async fn webhook_list(&self) -> StoreResult<Vec<WebhookRow>> {
        on_backend!(self, s => s.webhook_list().await)
    }

    /// The webhook named `key`, or whose id is `key`; `NotFound` otherwise.
    pub async fn webhook_find(&self, key: &str) -> StoreResult<WebhookRow> {
        on_backend!(self, s => s.webhook_find(key).await)
    }

    /// Replaces a webhook's definition; `enable` also clears its disabled
    /// state and its run of failures. `Conflict` when the name is taken.
    pub async fn webhook_update(
        &self,
        id: Uuid,
        spec: &WebhookSpec,
        enable: bool,
    ) -> StoreResult<WebhookRow> {
        on_backend!(self, s => s.webhook_update(id, spec, enable).await)
    }

    /// Makes `secret` the webhook's secret; the one it replaces still signs
    /// until `previous_until`.
    pub async fn webhook_rotate(
        &self,
        id: Uuid,
        secret: &str,
        previous_until: DateTime<Utc>,
    ) -> StoreResult<WebhookRow> {
        on_backend!(self, s => s.webhook_rotate(id, secret, previous_until).await)
    }

    /// Deletes a webhook, its deliveries and their attempts.
    pub async fn webhook_delete(&self, id: Uuid) -> StoreResult<()> {
        on_backend!(self, s => s.webhook_delete(id).await)
    }

    /// Where the events have been turned into deliveries up to (None:
    /// from the first event).
    pub async fn webhook_feed_position(&self) -> StoreResult<Option<EventPosition>> {
        on_backend!(self, s => s.webhook_feed_position().await)
    }

    /// Moves the feed and queues the deliveries of the events it passes,
    /// in one transaction, if the feed is still at `advance.from`; false
    /// (nothing written) when another replica moved it first.
    pub async fn webhook_feed_advance(&self, advance: &FeedAdvance) -> StoreResult<bool> {
        on_backend!(self, s => s.webhook_feed_advance(advance).await)
    }

    /// Queues one delivery, due now (a test delivery).
    pub async fn webhook_delivery_insert(
        &self,
        delivery: &NewDelivery,
    ) -> StoreResult<DeliveryRow> {
        on_backend!(self, s => s.webhook_delivery_insert(delivery).await)
    }

    /// Claims up to `limit` due deliveries of active webhooks for `owner`
    /// for `lease_ms` (pending ones due now, and delivering ones whose
    /// lease expired).
    pub async fn webhook_deliveries_claim(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        on_backend!(self, s => s.webhook_deliveries_claim(owner, lease_ms, limit).await)
    }

    /// Extends a held claim's lease; false when it is no longer held.
    pub async fn webhook_delivery_heartbeat(
        &self,
        claim: &DeliveryClaim,
        lease_ms: i64,
    ) -> StoreResult<bool> {
        on_backend!(self, s => s.webhook_delivery_heartbeat(claim, lease_ms).await)
    }

    /// Records the end of a held attempt; false when the claim is stale.
    pub async fn webhook_delivery_finish(
        &self,
        claim: &DeliveryClaim,
        end: &AttemptEnd,
    ) -> StoreResult<bool> {
        on_backend!(self, s => s.webhook_delivery_finish(claim, end).await)
    }

    /// A webhook's newest `limit` deliveries, newest first, with attempts.
    pub async fn webhook_deliveries_list(
        &self,
        webhook_id: Uuid,
        limit: i64,
    ) -> StoreResult<Vec<DeliveryRow>> {
        on_backend!(self, s => s.webhook_deliveries_list(webhook_id, limit).await)
    }

    /// Queues a delivery again, due now; `Conflict` while an attempt holds it.
    pub async fn webhook_delivery_retry(
        &self,
        webhook_id: Uuid,
        delivery_id: Uuid,
    ) -> StoreResult<DeliveryRow> {
        on_backend!(self, s => s.webhook_delivery_retry(webhook_id, delivery_id).await)
    }

    /// Deletes up to `limit` finished deliveries last changed before `cutoff`.
    pub async fn webhook_deliveries_prune_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<u64> {
        on_backend!(self, s => s.webhook_deliveries_prune_before(cutoff, limit).await)
    }

    // Batches (src/batches/, issue #15).

    /// Stores a batch with its first rows, all or nothing, and its
    /// `batch.created` event; `NotFound` when a staged upload is gone.
    pub async fn batch_create(&self, new: &NewBatch, rows: NewRows<'_>) -> StoreResult<BatchRow> {
        on_backend!(self, s => s.batch_create(new, rows).await)
    }

    /// Appends rows, all or nothing; `Conflict` once wait-off is set, or
    /// the batch is aborted or final.
    pub async fn batch_append(&self, id: Uuid, rows: NewRows<'_>) -> StoreResult<BatchRow> {
        on_backend!(self, s => s.batch_append(id, rows).await)
    }

    /// Starts an upload to stage rows under (published by a create or an
    /// append naming it).
    pub async fn batch_upload_begin(&self) -> StoreResult<Uuid> {
        on_backend!(self, s => s.batch_upload_begin().await)
    }

    /// Stages rows `first..` of an upload (one short transaction).
    pub async fn batch_upload_stage(
        &self,
        upload: Uuid,
        first: i64,
        rows: &[Value],
    ) -> StoreResult<()> {
        on_backend!(self, s => s.batch_upload_stage(upload, first, rows).await)
    }

    /// Drops an upload and its staged rows.
    pub async fn batch_upload_discard(&self, upload: Uuid) -> StoreResult<()> {
        on_backend!(self, s => s.batch_upload_discard(upload).await)
    }

    /// Drops uploads begun before `cutoff` (abandoned); how many.
    pub async fn batch_uploads_prune_before(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        on_backend!(self, s => s.batch_uploads_prune_before(cutoff).await)
    }

    pub async fn batch_get(&self, id: Uuid) -> StoreResult<BatchRow> {
        on_backend!(self, s => s.batch_get(id).await)
    }

    /// Batches matching the filter, newest first.
    pub async fn batch_list(&self, filter: &BatchFilter) -> StoreResult<Vec<BatchRow>> {
        on_backend!(self, s => s.batch_list(filter).await)
    }

    /// Sets wait-off; completes the batch if every row is final.
    pub async fn batch_waitoff(&self, id: Uuid) -> StoreResult<BatchRow> {
        on_backend!(self, s => s.batch_waitoff(id).await)
    }

    /// Aborts: queued rows become aborted at once; with `cancel_running`,
    /// running rows are asked to stop. `Conflict` when final already.
    pub async fn batch_abort(&self, id: Uuid, cancel_running: bool) -> StoreResult<BatchRow> {
        on_backend!(self, s => s.batch_abort(id, cancel_running).await)
    }

    /// Deletes a final batch and its rows; `Conflict` while not final.
    pub async fn batch_delete(&self, id: Uuid) -> StoreResult<()> {
        on_backend!(self, s => s.batch_delete(id).await)
    }

    /// Rows of a batch in row order.
    pub async fn batch_rows_list(
        &self,
        id: Uuid,
        filter: &RowFilter,
    ) -> StoreResult<Vec<RowRecord>> {
        on_backend!(self, s => s.batch_rows_list(id, filter).await)
    }

    /// The next `limit` (row, result) of succeeded rows with a non-null
    /// result after row `after`, in row order.
    pub async fn batch_output_page(
        &self,
        id: Uuid,
        after: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Value)>> {
        on_backend!(self, s => s.batch_output_page(id, after, limit).await)
    }

    /// The next `limit` (row, lines) of output file `name` after row
    /// `after`: succeeded rows that gave it lines, in row order.
    pub async fn batch_file_page(
        &self,
        id: Uuid,
        name: &str,
        after: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Vec<String>)>> {
        on_backend!(self, s => s.batch_file_page(id, name, after, limit).await)
    }

    /// Claims queued rows, shared fairly between batches, within each
    /// batch's `max_parallel` across replicas.
    pub async fn batch_rows_claim(&self, slots: &RowClaimSlots) -> StoreResult<Vec<ClaimedRow>> {
        on_backend!(self, s => s.batch_rows_claim(slots).await)
    }

    /// Renews the leases of held rows; an ack for each still held.
    pub async fn batch_rows_heartbeat(
        &self,
        instance: &str,
        lease_ms: i64,
        held: &[RowClaim],
    ) -> StoreResult<Vec<RowAck>> {
        on_backend!(self, s => s.batch_rows_heartbeat(instance, lease_ms, held).await)
    }

    /// Records many rows' ends in one transaction, each fenced by its
    /// claim; returns those written, and completes the batches made final.
    /// A success's output files are stored in the same transaction.
    pub async fn batch_rows_finish(
        &self,
        ends: &[(RowClaim, RowEnd)],
    ) -> StoreResult<Vec<(Uuid, i64)>> {
        on_backend!(self, s => s.batch_rows_finish(ends).await)
    }

    /// Queues again (or fails) rows whose lease expired; how many.
    pub async fn batch_rows_rescue_expired(&self, limit: i64) -> StoreResult<u64> {
        on_backend!(self, s => s.batch_rows_rescue_expired(limit).await)
    }

    /// Completes the batches among `ids` that are final now; returns them.
    pub async fn batch_settle(&self, ids: &[Uuid]) -> StoreResult<Vec<BatchRow>> {
        on_backend!(self, s => s.batch_settle(ids).await)
    }

    /// Open batches with wait-off set or aborted (for a settle sweep).
    pub async fn batches_unsettled(&self, limit: i64) -> StoreResult<Vec<Uuid>> {
        on_backend!(self, s => s.batches_unsettled(limit).await)
    }

    /// Deletes up to `limit` rows, then batches, of batches final before
    /// `cutoff`; how many went.
    pub async fn batches_prune_finished_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<u64> {
        on_backend!(self, s => s.batches_prune_finished_before(cutoff, limit).await)
    }

    /// A batch's counters beside a `count(*)` of its rows by state.
    pub async fn batch_counts_check(&self, id: Uuid) -> StoreResult<BatchCountsCheck> {
        on_backend!(self, s => s.batch_counts_check(id).await)
    }

    // Wake-ups.

    /// A listener for the notices of every replica (or of this process).
    pub async fn listen(&self) -> StoreResult<Listener> {
        match self {
            Store::Postgres(s) => Ok(Listener::Postgres(s.listen().await?)),
            Store::Sqlite(s) => Ok(Listener::Local(s.listen())),
        }
    }

    /// Sends `notice` on its own (after a commit whose changes it announces).
    pub async fn notify(&self, notice: &Notice) -> StoreResult<()> {
        on_backend!(self, s => s.notify(notice).await)
    }
}
