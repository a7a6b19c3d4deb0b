//! Batches (issue #15, SPEC §10): rows processed by one handler, appended
//! until wait-off, aborted at any time, summarised by exact counts.
//!
//! Invariants:
//! - A batch's counts are counters kept in the same transaction as every
//!   row state change (never a `count(*)` over rows), so at every commit
//!   `total = queued + inprog + success + failed + aborted`.
//! - A submit or an append is atomic: its rows become visible to workers
//!   and to the counts together, or not at all.
//! - A batch is final once wait-off is set (or it was aborted) and no row
//!   is queued or running; it is then completed exactly once, with its
//!   `batch.completed` event carrying its summary.
//! - Rows are claimed by every replica's workers in chunks, shared fairly
//!   between batches ([`rules::share`]) and never more than `max_parallel`
//!   of one batch at once across replicas; batch rows hold at most
//!   [`rules::row_slots`] of a replica's workers, so runs keep slots.
//! - A row's output files ([`files`]) come from its final successful
//!   attempt only, stored with its end in the same transaction; a batch's
//!   file is its succeeded rows' lines for the name, in row order, and
//!   never holds an empty line.
//!
//! The pure rules are in [`rules`]; the stores keep their results.

pub mod rules;

pub use rules::{BatchStatus, Counts, RowState};
pub mod csv;
pub mod files;
pub mod ndjson;
