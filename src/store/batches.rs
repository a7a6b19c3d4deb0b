//! Batches and their rows (issue #15, SPEC §10), as the stores take and
//! return them. The rules (status, outcome, fair shares, rescues) are in
//! `crate::batches::rules`; the stores keep their results, each row write
//! fenced by the state and attempt it starts from.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::batches::files::RowFiles;
use crate::batches::rules::{self, BatchStatus, Counts, RowState};

/// A batch to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBatch {
    pub id: Uuid,
    /// The registered handler's name, as registered.
    pub handler: String,
    pub context: Value,
    pub max_retries: i32,
    pub retry_backoff_ms: i64,
    pub timeout_ms: Option<i64>,
    pub max_parallel: Option<i32>,
    /// Wait-off from the start: no rows will be appended.
    pub waitoff: bool,
}

/// Where the rows of a submit or an append are.
#[derive(Debug, Clone, Copy)]
pub enum NewRows<'a> {
    /// In the request (a JSON body).
    Inline(&'a [Value]),
    /// Staged under an upload (`Store::batch_upload_stage`), published
    /// together; the upload is gone afterwards.
    Staged(Uuid),
}

/// A stored batch with its counts.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRow {
    pub id: Uuid,
    pub handler: String,
    pub context: Value,
    pub max_retries: i32,
    pub retry_backoff_ms: i64,
    pub timeout_ms: Option<i64>,
    pub max_parallel: Option<i32>,
    pub counts: Counts,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub waitoff_at: Option<DateTime<Utc>>,
    pub aborted_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Set by abort or completion.
    pub outcome: Option<BatchStatus>,
    /// The names of its output files (`crate::batches::files`), sorted.
    pub output_files: Vec<String>,
}

impl BatchRow {
    pub fn status(&self) -> BatchStatus {
        rules::status(self.outcome, self.started_at.is_some())
    }

    pub fn is_final(&self) -> bool {
        self.finished_at.is_some()
    }

    /// `batch.completed`'s data: the batch's summary.
    pub fn summary(&self) -> Value {
        serde_json::json!({
            "batch_id": self.id,
            "handler": self.handler,
            "status": self.status(),
            "counts": self.counts,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "waitoff_at": self.waitoff_at,
            "finished_at": self.finished_at,
            "output_files": self.output_files,
        })
    }
}

/// Which batches to list: newest first, after a cursor.
#[derive(Debug, Clone, Default)]
pub struct BatchFilter {
    pub status: Option<BatchStatus>,
    /// Exact handler name.
    pub handler: Option<String>,
    /// Strictly older than this `(created_at, id)`.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// A stored row of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRecord {
    pub batch_id: Uuid,
    /// Its place in the batch, from 0, in the order rows came.
    pub idx: i64,
    pub input: Value,
    pub state: RowState,
    pub attempt: i32,
    pub instance: Option<String>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Which rows to list: in row order, after a cursor.
#[derive(Debug, Clone, Default)]
pub struct RowFilter {
    pub state: Option<RowState>,
    pub after_idx: Option<i64>,
    pub limit: i64,
}

/// What a claim needs: who, for how long, how many, and whose turn it is
/// to get the remainder of an uneven share (`rules::share`).
#[derive(Debug, Clone)]
pub struct RowClaimSlots {
    pub instance: String,
    pub lease_ms: i64,
    pub limit: i64,
    pub turn: usize,
}

/// A row claimed by a worker, with what it needs to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedRow {
    pub claim: RowClaim,
    pub input: Value,
    pub handler: String,
    pub context: Value,
    pub max_retries: i32,
    pub retry_backoff_ms: i64,
    pub timeout_ms: Option<i64>,
}

/// One attempt of one row, held by one instance: the fence of its writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowClaim {
    pub batch_id: Uuid,
    pub idx: i64,
    pub attempt: i32,
    pub instance: String,
}

/// How a row's attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RowEnd {
    /// Its result (`None`: no output) and its lines for output files,
    /// stored with the end (nothing extra when there are none).
    Success {
        result: Option<Value>,
        files: RowFiles,
    },
    Failed(String),
    /// Cancelled by an abort while running.
    Aborted(String),
    /// Queued again after `delay_ms` (the error is kept for the rows list).
    Retry {
        delay_ms: i64,
        error: String,
    },
    /// Back to the queue at once, the attempt not counted (shutdown).
    HandBack,
}

impl RowEnd {
    /// A success without output files.
    pub fn success(result: Option<Value>) -> RowEnd {
        RowEnd::Success {
            result,
            files: RowFiles::default(),
        }
    }

    /// The state it leaves the row in.
    pub fn state(&self) -> RowState {
        match self {
            RowEnd::Success { .. } => RowState::Success,
            RowEnd::Failed(_) => RowState::Failed,
            RowEnd::Aborted(_) => RowState::Aborted,
            RowEnd::Retry { .. } | RowEnd::HandBack => RowState::Queued,
        }
    }
}

/// A heartbeat's answer for one held row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowAck {
    pub batch_id: Uuid,
    pub idx: i64,
    pub attempt: i32,
    /// An abort with `cancel_running` asks for it to stop.
    pub cancel_requested: bool,
}

/// The counts of a batch from its counters beside a `count(*)` of its rows
/// by state: equal unless a counter drifted. For tests and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCountsCheck {
    pub counters: Counts,
    pub rows: Counts,
}

/// The successful ends among `ends` that carry output files and whose row
/// was `written`, in (batch, row) order: what a row-end transaction stores
/// beside the ends (nothing, with no statement, when none has files). The
/// stores write them fenced by the claim and the row's `success` state too,
/// so a stale end for a row another attempt of which was written in the
/// same group stores nothing.
pub(crate) fn written_files<'a>(
    ends: &'a [(RowClaim, RowEnd)],
    written: &[(Uuid, i64)],
) -> Vec<(&'a RowClaim, &'a RowFiles)> {
    let mut out: Vec<_> = ends
        .iter()
        .filter_map(|(c, e)| match e {
            RowEnd::Success { files, .. }
                if !files.is_empty() && written.contains(&(c.batch_id, c.idx)) =>
            {
                Some((c, files))
            }
            _ => None,
        })
        .collect();
    out.sort_by_key(|(c, _)| (c.batch_id, c.idx));
    out
}

/// Sums count deltas per batch, sorted by batch id (the lock order).
pub(crate) fn deltas_by_batch<'a>(
    moves: impl IntoIterator<Item = (Uuid, Counts)> + 'a,
) -> Vec<(Uuid, Counts)> {
    let mut by: std::collections::BTreeMap<Uuid, Counts> = Default::default();
    for (id, d) in moves {
        let e = by.entry(id).or_default();
        *e = e.plus(&d);
    }
    by.into_iter().filter(|(_, d)| !d.is_zero()).collect()
}
