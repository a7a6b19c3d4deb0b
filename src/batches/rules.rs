//! The rules of batches, as pure functions: a batch's status from its
//! facts, its outcome once every row is final, its progress, how the rows
//! a replica claims are shared between batches, and what follows a row's
//! attempt.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A batch's status (`GET /api/v1/batches/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BatchStatus {
    /// No row was claimed yet.
    Queued,
    /// A row was claimed; not final yet.
    Inprog,
    /// Final: every row succeeded (or there were none).
    Success,
    /// Final: some rows succeeded, some failed.
    Partial,
    /// Final: no row succeeded.
    Failed,
    /// Abort was called (final once its running rows have ended).
    Aborted,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 6] = [
        BatchStatus::Queued,
        BatchStatus::Inprog,
        BatchStatus::Success,
        BatchStatus::Partial,
        BatchStatus::Failed,
        BatchStatus::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Queued => "queued",
            BatchStatus::Inprog => "inprog",
            BatchStatus::Success => "success",
            BatchStatus::Partial => "partial",
            BatchStatus::Failed => "failed",
            BatchStatus::Aborted => "aborted",
        }
    }

    pub fn parse(text: &str) -> Option<BatchStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The statuses a batch's stored `outcome` can hold.
    pub fn is_outcome(self) -> bool {
        !matches!(self, BatchStatus::Queued | BatchStatus::Inprog)
    }
}

/// A row's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RowState {
    Queued,
    Inprog,
    Success,
    Failed,
    /// Aborted while queued, or cancelled while running by an abort.
    Aborted,
}

impl RowState {
    pub const ALL: [RowState; 5] = [
        RowState::Queued,
        RowState::Inprog,
        RowState::Success,
        RowState::Failed,
        RowState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Queued => "queued",
            RowState::Inprog => "inprog",
            RowState::Success => "success",
            RowState::Failed => "failed",
            RowState::Aborted => "aborted",
        }
    }

    pub fn parse(text: &str) -> Option<RowState> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            RowState::Success | RowState::Failed | RowState::Aborted
        )
    }
}

/// A batch's counts (the sum of its counter rows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    pub total: i64,
    pub queued: i64,
    pub inprog: i64,
    pub success: i64,
    pub failed: i64,
    pub aborted: i64,
}

impl Counts {
    /// Rows in a final state.
    pub fn done(&self) -> i64 {
        self.success + self.failed + self.aborted
    }

    /// Whether total = the sum of the rest (always, unless a counter drifted).
    pub fn adds_up(&self) -> bool {
        self.total == self.queued + self.inprog + self.done()
    }

    /// Final rows as a fraction of all (1 for a batch without rows).
    pub fn progress(&self) -> f64 {
        if self.total <= 0 {
            1.0
        } else {
            self.done() as f64 / self.total as f64
        }
    }

    /// `delta` added.
    pub fn plus(mut self, delta: &Counts) -> Counts {
        self.total += delta.total;
        self.queued += delta.queued;
        self.inprog += delta.inprog;
        self.success += delta.success;
        self.failed += delta.failed;
        self.aborted += delta.aborted;
        self
    }

    /// The delta of `n` rows moving from `from` (None: new rows) to `to`.
    pub fn moved(from: Option<RowState>, to: RowState, n: i64) -> Counts {
        let mut d = Counts::default();
        match from {
            None => d.total += n,
            Some(s) => *d.slot(s) -= n,
        }
        *d.slot(to) += n;
        d
    }

    fn slot(&mut self, state: RowState) -> &mut i64 {
        match state {
            RowState::Queued => &mut self.queued,
            RowState::Inprog => &mut self.inprog,
            RowState::Success => &mut self.success,
            RowState::Failed => &mut self.failed,
            RowState::Aborted => &mut self.aborted,
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// The outcome of a batch whose rows are all final, not aborted: success
/// when every row succeeded (or it has none), failed when none did,
/// partial otherwise.
pub fn final_outcome(counts: &Counts) -> BatchStatus {
    if counts.failed == 0 && counts.aborted == 0 {
        BatchStatus::Success
    } else if counts.success == 0 {
        BatchStatus::Failed
    } else {
        BatchStatus::Partial
    }
}

/// A batch's status: its stored outcome when it has one (abort sets it at
/// once; completion when the last row ends), else queued until a row was
/// first claimed, in progress after.
pub fn status(outcome: Option<BatchStatus>, started: bool) -> BatchStatus {
    match outcome {
        Some(o) => o,
        None if started => BatchStatus::Inprog,
        None => BatchStatus::Queued,
    }
}

/// Whether a batch not yet final becomes final now: wait-off set (or
/// aborted) and no row queued or running.
pub fn completes(counts: &Counts, waitoff: bool, aborted: bool) -> bool {
    (waitoff || aborted) && counts.queued == 0 && counts.inprog == 0
}

/// Why rows cannot be appended, if they cannot.
pub fn append_refusal(waitoff: bool, aborted: bool, finished: bool) -> Option<&'static str> {
    if aborted {
        Some("the batch was aborted")
    } else if finished {
        Some("the batch is final")
    } else if waitoff {
        Some("the batch has wait-off set: no more rows are taken")
    } else {
        None
    }
}

/// A batch that has rows to give, as a claim sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimable {
    /// Rows queued (some may wait for a retry's backoff).
    pub queued: i64,
    /// How many more may run now: `max_parallel − running` (None: no bound).
    pub room: Option<i64>,
}

/// How many rows to claim from each batch, fairly: up to `limit` in all,
/// shared out evenly (a batch that wants fewer than its share leaves the
/// rest to the others), never more than a batch's queue or its room. The
/// remainder of an uneven share goes to the batches from `turn` on (the
/// caller rotates it), so no batch is always last.
pub fn share(limit: i64, batches: &[Claimable], turn: usize) -> Vec<i64> {
    let n = batches.len();
    let mut given = vec![0i64; n];
    if n == 0 || limit <= 0 {
        return given;
    }
    let want: Vec<i64> = batches
        .iter()
        .map(|b| b.queued.min(b.room.unwrap_or(i64::MAX)).max(0))
        .collect();
    let mut left = limit;
    loop {
        let hungry: Vec<usize> = (0..n)
            .map(|k| (turn + k) % n)
            .filter(|&i| given[i] < want[i])
            .collect();
        if hungry.is_empty() || left == 0 {
            return given;
        }
        let each = (left / hungry.len() as i64).max(1);
        for i in hungry {
            if left == 0 {
                break;
            }
            let take = each.min(want[i] - given[i]).min(left);
            given[i] += take;
            left -= take;
        }
    }
}

/// The slots of `concurrency` that batch rows may hold on a replica: all
/// but a quarter, kept for scheduled and manual runs, so a huge batch of
/// long rows never starves them (at least one slot either way).
pub fn row_slots(concurrency: usize) -> usize {
    if concurrency <= 1 {
        1
    } else {
        (concurrency - concurrency / 4).max(1)
    }
}

/// How many times a row whose lease expired (its replica died) is queued
/// again beyond its retries: a crash is not the row's failure.
pub const LEASE_RESCUES: i32 = 2;

/// What a rescue does with a row whose lease expired at `attempt`.
pub fn rescue(attempt: i32, max_retries: i32) -> RowState {
    if attempt <= max_retries + LEASE_RESCUES {
        RowState::Queued
    } else {
        RowState::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(q: i64, i: i64, s: i64, f: i64, a: i64) -> Counts {
        Counts {
            total: q + i + s + f + a,
            queued: q,
            inprog: i,
            success: s,
            failed: f,
            aborted: a,
        }
    }

    #[test]
    fn outcome_of_a_completed_batch() {
        assert_eq!(final_outcome(&counts(0, 0, 3, 0, 0)), BatchStatus::Success);
        assert_eq!(final_outcome(&counts(0, 0, 0, 0, 0)), BatchStatus::Success);
        assert_eq!(final_outcome(&counts(0, 0, 2, 1, 0)), BatchStatus::Partial);
        assert_eq!(final_outcome(&counts(0, 0, 0, 4, 0)), BatchStatus::Failed);
    }

    #[test]
    fn status_moves_from_queued_to_inprog_on_the_first_claim() {
        assert_eq!(status(None, false), BatchStatus::Queued);
        assert_eq!(status(None, true), BatchStatus::Inprog);
        assert_eq!(
            status(Some(BatchStatus::Aborted), true),
            BatchStatus::Aborted
        );
        for s in BatchStatus::ALL {
            assert_eq!(BatchStatus::parse(s.as_str()), Some(s));
        }
        for s in RowState::ALL {
            assert_eq!(RowState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn completion_needs_waitoff_or_abort_and_no_live_row() {
        assert!(!completes(&counts(0, 0, 1, 0, 0), false, false));
        assert!(completes(&counts(0, 0, 1, 0, 0), true, false));
        assert!(!completes(&counts(1, 0, 1, 0, 0), true, false));
        assert!(!completes(&counts(0, 1, 0, 0, 3), false, true));
        assert!(completes(&counts(0, 0, 0, 0, 3), false, true));
        assert!(completes(&Counts::default(), true, false));
    }

    #[test]
    fn deltas_keep_the_counts_adding_up() {
        let mut c = Counts::default().plus(&Counts::moved(None, RowState::Queued, 10));
        c = c.plus(&Counts::moved(Some(RowState::Queued), RowState::Inprog, 4));
        c = c.plus(&Counts::moved(Some(RowState::Inprog), RowState::Success, 3));
        c = c.plus(&Counts::moved(Some(RowState::Queued), RowState::Aborted, 6));
        assert_eq!(c, counts(0, 1, 3, 0, 6));
        assert!(c.adds_up());
        assert!((c.progress() - 0.9).abs() < 1e-9);
        assert_eq!(Counts::default().progress(), 1.0);
    }

    #[test]
    fn appends_are_refused_after_waitoff_abort_or_the_end() {
        assert_eq!(append_refusal(false, false, false), None);
        assert!(append_refusal(true, false, false)
            .unwrap()
            .contains("wait-off"));
        assert!(append_refusal(false, true, true)
            .unwrap()
            .contains("aborted"));
        assert!(append_refusal(false, false, true)
            .unwrap()
            .contains("final"));
    }

    fn c(queued: i64, room: Option<i64>) -> Claimable {
        Claimable { queued, room }
    }

    #[test]
    fn claims_are_shared_evenly_between_batches() {
        // One huge batch does not take every slot from a small one.
        assert_eq!(share(10, &[c(1_000_000, None), c(5, None)], 0), vec![5, 5]);
        assert_eq!(share(10, &[c(1_000_000, None), c(2, None)], 0), vec![8, 2]);
        // max_parallel bounds a batch; the rest goes to the others.
        assert_eq!(share(10, &[c(100, Some(1)), c(100, None)], 0), vec![1, 9]);
        assert_eq!(share(10, &[c(100, Some(0))], 0), vec![0]);
        // The remainder rotates.
        assert_eq!(share(1, &[c(9, None), c(9, None)], 0), vec![1, 0]);
        assert_eq!(share(1, &[c(9, None), c(9, None)], 1), vec![0, 1]);
        assert_eq!(
            share(5, &[c(9, None), c(9, None), c(9, None)], 2),
            vec![2, 1, 2]
        );
        assert_eq!(share(0, &[c(9, None)], 0), vec![0]);
        assert!(share(5, &[], 0).is_empty());
        assert_eq!(share(100, &[c(3, None), c(4, Some(2))], 0), vec![3, 2]);
    }

    #[test]
    fn rows_leave_slots_to_runs() {
        assert_eq!(row_slots(1), 1);
        assert_eq!(row_slots(2), 2);
        assert_eq!(row_slots(4), 3);
        assert_eq!(row_slots(16), 12);
    }

    #[test]
    fn a_crash_is_rescued_a_bounded_number_of_times() {
        assert_eq!(rescue(1, 0), RowState::Queued);
        assert_eq!(rescue(3, 0), RowState::Failed);
        assert_eq!(rescue(3, 1), RowState::Queued);
    }
}
