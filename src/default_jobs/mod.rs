//! Default jobs: one job per YAML file in the default-jobs directory
//! (SPEC §8), loaded at start-up and whenever a file changes.
//!
//! The rules (the README's "Default jobs (YAML)" says the same for operators):
//!
//! - **Format.** One mapping per `*.yaml`/`*.yml` file (not in
//!   subdirectories, not hidden names). `job_id` and `handler` are required;
//!   every other job field is optional; `kwargs` is a mapping, and every
//!   top-level key that is not a job field is a handler argument. Files are
//!   validated exactly as the API validates a job (`JobSpec::validate`).
//! - **Upsert, never duplicate.** A file's job is found by its `job_id` and
//!   inserted or updated in one transaction under an advisory lock on that
//!   id, so replicas loading the same directory at once neither duplicate
//!   nor fail. The job's `source` is the file's absolute path.
//! - **What a load changes.** Handler, kwargs and policies always come from
//!   the file. The schedule (`periodically`, `cron`, `timezone`, `when`) is
//!   recomputed only when the file changes it; otherwise `next_run_at` is
//!   kept, so a restart neither resets nor skips a run. Without `when`, an
//!   unchanged schedule keeps its stored anchor (the phase of an interval).
//!   A completed one-shot job stays completed.
//! - **Pause and resume through the API stand.** The file's `state` is
//!   applied when the job is created and whenever the file's `state` value
//!   changes; otherwise the job keeps the state an operator set through the
//!   API (`jobs.file_state` remembers what the file said last time). To
//!   force the file's state, change it in the file (e.g. `paused` then
//!   `running`).
//! - **Removed file: the job is paused, not deleted** (its runs stay
//!   inspectable; `DELETE /api/v1/jobs/{id}` removes it). This happens once,
//!   when the file disappears (or comes to define another `job_id`); an
//!   operator may resume the job and a restart leaves it running. If the
//!   file comes back, its `state` applies again. A missing or unreadable
//!   directory pauses nothing.
//! - **Bad files are skipped, the service starts.** A file with any problem
//!   (YAML, a missing or mistyped field, an unknown or disabled handler,
//!   kwargs against the handler's schema, a bad duration, cron or time zone,
//!   a `job_id` used by another file, or by a failure record) is not stored
//!   at all; each problem is logged with the file, the field and the reason,
//!   once per change of the file. A job already stored from an earlier,
//!   valid version of the file keeps running as it was. The other files load.
//! - **Live reload.** A watcher plus a periodic rescan (`watch.rs`) re-apply
//!   files whose content changed. An edit through the API to a file's job is
//!   kept until the file changes or the service restarts, when the file is
//!   applied again; the file is the definition.
//! - `jobsd validate [DIR]` ([`validate_command`]) runs the same checks
//!   without a database and lists every problem.
//!
//! Layout: `parse.rs` (text to spec, pure), `files.rs` (a directory checked,
//! no database), `upsert.rs` (the upsert rules and the [`Loader`]),
//! `watch.rs` (the live-reload loop). The SQL is in `store/default_jobs.rs`.

mod files;
mod parse;
#[cfg(test)]
mod proptests;
mod upsert;
mod watch;

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::handlers::HandlerRegistry;
use crate::store::Store;

pub use files::{scan_dir, DirError, DirScan, FileEntry, FileProblem, ValidFile, MAX_FILE_BYTES};
pub use parse::{parse, Parsed};
pub use upsert::{plan, Applied, Loader, ScanReport};

/// Start-up: loads the default-jobs directory once (problems are logged, not
/// fatal), then keeps watching it until `shutdown` is cancelled.
pub async fn start(
    store: &Store,
    registry: &Arc<HandlerRegistry>,
    config: &ServeConfig,
    shutdown: &CancellationToken,
) {
    let mut loader = Loader::new(
        store.clone(),
        registry.clone(),
        config.default_jobs_dir.clone(),
    )
    .with_max_file_bytes(config.guards.max_default_job_file_bytes);
    let report = loader.scan().await;
    if report.dir_error.is_none() {
        tracing::info!(
            dir = %config.default_jobs_dir.display(),
            files = report.files,
            loaded = report.applied.len(),
            skipped = report
                .problems
                .iter()
                .map(|p| &p.file)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            paused_removed = report.released.len(),
            "default jobs loaded"
        );
    }
    watch::spawn(loader, config.default_jobs_rescan, shutdown.clone());
}

/// `jobsd validate`: checks `dir` as the service would load it (files up
/// to `max_file_bytes`), prints every problem (one line each: file, field,
/// reason) and a summary, and fails when there is any problem or the
/// directory cannot be read.
pub fn validate_command(
    dir: &Path,
    registry: &HandlerRegistry,
    max_file_bytes: u64,
) -> anyhow::Result<()> {
    let scan = scan_dir(dir, registry, chrono::Utc::now(), max_file_bytes)?;
    let problems = scan.problems();
    for problem in &problems {
        crate::logging::print_stdout(&format!("{problem}\n"));
    }
    let bad_files = scan.files.iter().filter(|f| f.result.is_err()).count();
    if problems.is_empty() {
        crate::logging::print_stdout(&format!(
            "{}: {} default-job file(s), all valid\n",
            dir.display(),
            scan.files.len()
        ));
        Ok(())
    } else {
        anyhow::bail!(
            "{} problem(s) in {bad_files} of {} default-job file(s) in {}",
            problems.len(),
            scan.files.len(),
            dir.display()
        )
    }
}
