//! Applying a checked directory to the database: the upsert rules (a pure
//! [`plan`]) and the [`Loader`] that runs one scan at a time.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};

use super::files::{scan_dir, DirError, DirScan, FileProblem, MAX_FILE_BYTES};
use crate::domain::JobState;
use crate::handlers::{HandlerRegistry, ERROR_HANDLER};
use crate::job_spec::{carry_over_timing, schedule_of};
use crate::store::{FileJobPlan, FileJobRow, FileUpsert, JobRow, NewJob, Store};

/// What a file asks for, decided against the stored job (the rules are in
/// the module header of `default_jobs`):
///
/// 1. kwargs, handler and policies always come from the file;
/// 2. without `when` in the file, an unchanged schedule keeps its stored
///    anchor, and an unchanged schedule keeps its `next_run_at`
///    ([`carry_over_timing`]); a changed one starts over from `now`;
/// 3. a pause or resume made through the API stands while the file's own
///    `state` is what it was when the file was last applied; when the file's
///    `state` changes, the file wins;
/// 4. a stored failure record is never taken over.
pub fn plan(
    existing: Option<&FileJobRow>,
    mut job: NewJob,
    has_when: bool,
    now: DateTime<Utc>,
) -> FileJobPlan {
    // The database keeps microseconds; compare like with like.
    job.start_at = job.start_at.trunc_subsecs(6);
    let declared = job.state;
    let Some(existing) = existing else {
        return FileJobPlan::Write {
            job: Box::new(job),
            file_state: declared,
        };
    };
    let row = &existing.row;
    if row.handler == ERROR_HANDLER {
        return FileJobPlan::Refuse(format!(
            "job_id {:?} is taken by a failure record (handler {ERROR_HANDLER}); choose another job_id",
            row.job_id
        ));
    }
    if !has_when
        && row.schedule_kind == job.schedule_kind
        && row.interval_ms == job.interval_ms
        && row.cron == job.cron
        && row.timezone == job.timezone
    {
        job.start_at = row.start_at;
    }
    let file_state_unchanged = existing.file_state == Some(declared);
    if file_state_unchanged && (row.state == JobState::Running || row.state == JobState::Paused) {
        job.state = row.state;
    }
    job.next_run_at = if job.state == JobState::Running {
        schedule_of(
            job.schedule_kind,
            job.interval_ms,
            job.cron.as_deref(),
            &job.timezone,
            job.start_at,
        )
        .and_then(|s| s.first_at_or_after(now))
    } else {
        None
    };
    carry_over_timing(row, &mut job);
    if file_state_unchanged && same_job(row, &job) {
        FileJobPlan::Keep
    } else {
        FileJobPlan::Write {
            job: Box::new(job),
            file_state: declared,
        }
    }
}

/// Whether writing `job` would change nothing stored in `row`.
fn same_job(row: &JobRow, job: &NewJob) -> bool {
    row.handler == job.handler
        && row.kwargs == job.kwargs
        && row.schedule_kind == job.schedule_kind
        && row.interval_ms == job.interval_ms
        && row.cron == job.cron
        && row.timezone == job.timezone
        && row.start_at == job.start_at
        && row.misfire_grace_ms == job.misfire_grace_ms
        && row.coalesce == job.coalesce
        && row.max_instances == job.max_instances
        && row.lock_key == job.lock_key
        && row.timeout_ms == job.timeout_ms
        && row.max_retries == job.max_retries
        && row.retry_backoff_ms == job.retry_backoff_ms
        && row.state == job.state
        && row.next_run_at == job.next_run_at
        && row.description == job.description
        && row.tags == job.tags
        && row.source == job.source
        && row.keep_runs == job.keep_runs
        && row.notify == job.notify
        && row.alerts == job.alerts
}

/// What happened to one file's job in a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub file: PathBuf,
    pub job_id: String,
    /// `Inserted`, `Updated` or `Unchanged` (a refusal is a problem instead).
    pub outcome: FileUpsert,
}

/// What one scan did.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    /// The directory could not be read: nothing was loaded or released.
    pub dir_error: Option<String>,
    /// Default-job files found.
    pub files: usize,
    /// Files applied in this scan (files unchanged since the last scan are
    /// not looked at again, and not listed).
    pub applied: Vec<Applied>,
    /// Problems of files that were skipped (each file keeps its stored job,
    /// if any, as it was).
    pub problems: Vec<FileProblem>,
    /// Jobs paused because their file is gone or defines another job now.
    pub released: Vec<String>,
    /// Database errors; the files concerned are tried again next scan.
    pub errors: Vec<String>,
}

/// Loads one default-jobs directory into the database, one scan at a time,
/// remembering what it applied so a rescan only touches changed files.
pub struct Loader {
    dir: PathBuf,
    store: Store,
    registry: Arc<HandlerRegistry>,
    /// Content hash of each file (by `source`) whose job is up to date.
    applied: HashMap<String, u64>,
    /// The problems last logged per file, so a rescan does not repeat them.
    reported: HashMap<String, Vec<FileProblem>>,
    /// The files of the last scan; `None` before the first.
    listed: Option<BTreeSet<String>>,
    /// The directory error last logged.
    dir_error: Option<String>,
    /// Larger files are refused (`--max-default-job-file-bytes`).
    max_file_bytes: u64,
}

impl Loader {
    pub fn new(store: Store, registry: Arc<HandlerRegistry>, dir: impl Into<PathBuf>) -> Self {
        Loader {
            dir: dir.into(),
            store,
            registry,
            applied: HashMap::new(),
            reported: HashMap::new(),
            listed: None,
            dir_error: None,
            max_file_bytes: MAX_FILE_BYTES,
        }
    }

    /// Refuses files larger than `max` bytes (default [`MAX_FILE_BYTES`]).
    pub fn with_max_file_bytes(mut self, max: u64) -> Self {
        self.max_file_bytes = max;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One pass: reads and checks every file, upserts the valid ones that
    /// changed since the last pass, logs the problems of the others (once
    /// per change), and releases the jobs of removed files.
    pub async fn scan(&mut self) -> ScanReport {
        let mut report = ScanReport::default();
        let now = match self.store.now().await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %e, "default jobs: cannot read the database clock; trying again at the next scan");
                report.errors.push(e.to_string());
                return report;
            }
        };
        let (dir, registry, max) = (self.dir.clone(), self.registry.clone(), self.max_file_bytes);
        let scanned =
            tokio::task::spawn_blocking(move || scan_dir(&dir, &registry, now, max)).await;
        let scan = match scanned {
            Ok(Ok(scan)) => scan,
            Ok(Err(e)) => {
                self.note_dir_error(&e);
                report.dir_error = Some(e.to_string());
                return report;
            }
            Err(e) => {
                report
                    .errors
                    .push(format!("the directory scan failed: {e}"));
                return report;
            }
        };
        if self.dir_error.take().is_some() {
            tracing::info!(dir = %self.dir.display(), "default jobs: the directory is readable again");
        }
        report.files = scan.files.len();
        self.apply(&scan, now, &mut report).await;
        self.release_removed(&scan, &mut report).await;
        report
    }

    async fn apply(&mut self, scan: &DirScan, now: DateTime<Utc>, report: &mut ScanReport) {
        for file in &scan.files {
            let valid = match &file.result {
                Ok(valid) => valid,
                Err(_) => {
                    self.applied.remove(&file.source);
                    self.report_problems(&file.source, file.problems(), report);
                    continue;
                }
            };
            if self.applied.get(&file.source) == Some(&file.hash) {
                continue;
            }
            let job_id = valid.job.job_id.clone();
            let result = self
                .store
                .job_upsert_from_file(&job_id, |existing| {
                    plan(existing, valid.job.clone(), valid.has_when, now)
                })
                .await;
            match result {
                Ok(result) => {
                    report.released.extend(result.released.iter().cloned());
                    for released in &result.released {
                        tracing::warn!(job_id = %released, file = %file.source, "default job paused: its file now defines job {job_id:?} instead");
                    }
                    if let FileUpsert::Refused(reason) = result.outcome {
                        self.applied.remove(&file.source);
                        let problem = FileProblem {
                            file: file.path.clone(),
                            field: "job_id".to_string(),
                            message: reason,
                        };
                        self.report_problems(&file.source, vec![problem], report);
                        continue;
                    }
                    match result.outcome {
                        FileUpsert::Inserted => {
                            tracing::info!(%job_id, file = %file.source, "default job created")
                        }
                        FileUpsert::Updated => {
                            tracing::info!(%job_id, file = %file.source, "default job updated")
                        }
                        _ => tracing::debug!(%job_id, file = %file.source, "default job unchanged"),
                    }
                    self.applied.insert(file.source.clone(), file.hash);
                    self.reported.remove(&file.source);
                    report.applied.push(Applied {
                        file: file.path.clone(),
                        job_id,
                        outcome: result.outcome,
                    });
                }
                Err(e) => {
                    tracing::warn!(%job_id, file = %file.source, error = %e, "default job not stored; trying again at the next scan");
                    report.errors.push(format!("{}: {e}", file.path.display()));
                }
            }
        }
    }

    /// Logs a skipped file's problems unless they were logged already.
    fn report_problems(
        &mut self,
        source: &str,
        problems: Vec<FileProblem>,
        report: &mut ScanReport,
    ) {
        if self.reported.get(source) != Some(&problems) {
            for p in &problems {
                tracing::error!(file = %source, field = %p.field, reason = %p.message, "default job file skipped");
            }
            self.reported.insert(source.to_string(), problems.clone());
        }
        report.problems.extend(problems);
    }

    /// Releases the jobs of files that are gone: everything on the first
    /// scan (files removed while the service was down), then only when a
    /// file disappeared from the listing.
    async fn release_removed(&mut self, scan: &DirScan, report: &mut ScanReport) {
        let listed: BTreeSet<String> = scan.files.iter().map(|f| f.source.clone()).collect();
        let any_removed = match &self.listed {
            None => true,
            Some(before) => before.difference(&listed).next().is_some(),
        };
        self.applied.retain(|source, _| listed.contains(source));
        self.reported.retain(|source, _| listed.contains(source));
        if !any_removed {
            self.listed = Some(listed);
            return;
        }
        let present: Vec<String> = listed.iter().cloned().collect();
        match self.store.job_release_files(&scan.prefix, &present).await {
            Ok(released) => {
                for job_id in &released {
                    tracing::warn!(%job_id, "default job paused: its file was removed");
                }
                report.released.extend(released);
                self.listed = Some(listed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "default jobs: cannot pause the jobs of removed files; trying again at the next scan");
                report.errors.push(e.to_string());
            }
        }
    }

    fn note_dir_error(&mut self, e: &DirError) {
        let text = e.to_string();
        if self.dir_error.as_deref() == Some(text.as_str()) {
            return;
        }
        match e {
            DirError::Missing(_) => {
                tracing::info!(dir = %self.dir.display(), "default jobs: no directory; no default jobs loaded (it is watched for)")
            }
            DirError::Unreadable(..) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "default jobs: cannot read the directory; nothing loaded or paused")
            }
        }
        self.dir_error = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ScheduleKind;
    use chrono::Duration;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2030-06-01T12:00:00Z".parse().expect("a time")
    }

    fn new_job(state: JobState, every_minutes: i64) -> NewJob {
        let start_at = now() + Duration::minutes(every_minutes);
        NewJob {
            job_id: "j".into(),
            handler: "log".into(),
            kwargs: json!({"message": "x"}),
            schedule_kind: ScheduleKind::Interval,
            interval_ms: Some(every_minutes * 60_000),
            cron: None,
            timezone: "UTC".into(),
            start_at,
            misfire_grace_ms: None,
            coalesce: true,
            max_instances: 1,
            lock_key: None,
            timeout_ms: None,
            max_retries: 0,
            retry_backoff_ms: 1000,
            state,
            next_run_at: (state == JobState::Running).then_some(start_at),
            description: None,
            tags: vec![],
            source: "/jobs/j.yaml".into(),
            failed_run_id: None,
            keep_runs: None,
            notify: vec![],
            alerts: Default::default(),
        }
    }

    /// The row `job` was stored as, with the file state it was written with.
    fn stored(job: &NewJob, file_state: Option<JobState>) -> FileJobRow {
        let t = job.start_at - Duration::days(1);
        FileJobRow {
            row: JobRow {
                job_id: job.job_id.clone(),
                handler: job.handler.clone(),
                kwargs: job.kwargs.clone(),
                schedule_kind: job.schedule_kind,
                interval_ms: job.interval_ms,
                cron: job.cron.clone(),
                timezone: job.timezone.clone(),
                start_at: job.start_at,
                misfire_grace_ms: job.misfire_grace_ms,
                coalesce: job.coalesce,
                max_instances: job.max_instances,
                lock_key: job.lock_key.clone(),
                timeout_ms: job.timeout_ms,
                max_retries: job.max_retries,
                retry_backoff_ms: job.retry_backoff_ms,
                state: job.state,
                next_run_at: job.next_run_at,
                description: job.description.clone(),
                tags: job.tags.clone(),
                source: job.source.clone(),
                failed_run_id: None,
                keep_runs: job.keep_runs,
                notify: job.notify.clone(),
                alerts: job.alerts,
                alerts_open: vec![],
                created_at: t,
                updated_at: t,
                last_run_id: None,
                last_run_state: None,
                last_run_scheduled_for: None,
                last_run_started_at: None,
                last_run_finished_at: None,
                last_run_progress: None,
                last_run_progress_updated_at: None,
                run_counts: None,
                has_fired: false,
                row_version: 0,
            },
            file_state,
        }
    }

    fn written(plan: FileJobPlan) -> (NewJob, JobState) {
        match plan {
            FileJobPlan::Write { job, file_state } => (*job, file_state),
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn a_new_job_is_written_as_the_file_says() {
        let (job, file_state) = written(plan(None, new_job(JobState::Paused, 60), false, now()));
        assert_eq!(
            (job.state, file_state),
            (JobState::Paused, JobState::Paused)
        );
    }

    #[test]
    fn an_unchanged_file_writes_nothing_even_a_minute_later() {
        let old = stored(&new_job(JobState::Running, 60), Some(JobState::Running));
        // Validated again later: without `when`, its anchor would be later too.
        let mut again = new_job(JobState::Running, 60);
        again.start_at += Duration::minutes(1);
        assert_eq!(
            plan(Some(&old), again, false, now() + Duration::minutes(1)),
            FileJobPlan::Keep
        );
    }

    #[test]
    fn an_explicit_when_is_the_anchor() {
        let old = stored(&new_job(JobState::Running, 60), Some(JobState::Running));
        let mut with_when = new_job(JobState::Running, 60);
        with_when.start_at += Duration::minutes(7);
        let (job, _) = written(plan(Some(&old), with_when.clone(), true, now()));
        assert_eq!(job.start_at, with_when.start_at);
        assert_eq!(job.next_run_at, Some(with_when.start_at));
    }

    #[test]
    fn kwargs_change_keeps_the_timing() {
        let old = stored(&new_job(JobState::Running, 60), Some(JobState::Running));
        let mut changed = new_job(JobState::Running, 60);
        changed.kwargs = json!({"message": "y"});
        changed.start_at += Duration::minutes(5);
        let (job, _) = written(plan(
            Some(&old),
            changed,
            false,
            now() + Duration::minutes(5),
        ));
        assert_eq!(job.kwargs, json!({"message": "y"}));
        assert_eq!(job.start_at, old.row.start_at);
        assert_eq!(job.next_run_at, old.row.next_run_at);
    }

    #[test]
    fn a_changed_interval_starts_over() {
        let old = stored(&new_job(JobState::Running, 60), Some(JobState::Running));
        let (job, _) = written(plan(
            Some(&old),
            new_job(JobState::Running, 120),
            false,
            now(),
        ));
        assert_eq!(job.next_run_at, Some(now() + Duration::minutes(120)));
    }

    #[test]
    fn an_api_pause_stands_while_the_file_state_is_unchanged() {
        let mut old = stored(&new_job(JobState::Running, 60), Some(JobState::Running));
        old.row.state = JobState::Paused;
        old.row.next_run_at = None;
        assert_eq!(
            plan(Some(&old), new_job(JobState::Running, 60), false, now()),
            FileJobPlan::Keep
        );
        // Other changes apply; the pause stays.
        let mut changed = new_job(JobState::Running, 60);
        changed.max_retries = 3;
        let (job, file_state) = written(plan(Some(&old), changed, false, now()));
        assert_eq!((job.state, job.next_run_at), (JobState::Paused, None));
        assert_eq!(file_state, JobState::Running);
    }

    #[test]
    fn a_changed_file_state_wins() {
        let mut old = stored(&new_job(JobState::Paused, 60), Some(JobState::Paused));
        old.row.state = JobState::Paused;
        let (job, file_state) = written(plan(
            Some(&old),
            new_job(JobState::Running, 60),
            false,
            now(),
        ));
        assert_eq!(job.state, JobState::Running);
        assert_eq!(file_state, JobState::Running);
        assert_eq!(job.next_run_at, Some(old.row.start_at));
    }

    #[test]
    fn an_api_resume_stands_and_gets_a_next_run() {
        let mut old = stored(&new_job(JobState::Paused, 60), Some(JobState::Paused));
        old.row.state = JobState::Running;
        old.row.next_run_at = Some(now() + Duration::minutes(60));
        assert_eq!(
            plan(Some(&old), new_job(JobState::Paused, 60), false, now()),
            FileJobPlan::Keep
        );
        // With a new interval the resumed job still runs, on the new schedule.
        let (job, _) = written(plan(
            Some(&old),
            new_job(JobState::Paused, 30),
            false,
            now(),
        ));
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.next_run_at, Some(now() + Duration::minutes(30)));
    }

    #[test]
    fn a_job_without_a_file_state_takes_the_files() {
        let mut old = stored(&new_job(JobState::Running, 60), None);
        old.row.state = JobState::Paused;
        let (job, file_state) = written(plan(
            Some(&old),
            new_job(JobState::Running, 60),
            false,
            now(),
        ));
        assert_eq!(
            (job.state, file_state),
            (JobState::Running, JobState::Running)
        );
    }

    #[test]
    fn a_completed_one_shot_job_stays_completed() {
        let mut once = new_job(JobState::Running, 0);
        once.schedule_kind = ScheduleKind::Once;
        once.interval_ms = None;
        let mut old = stored(&once, Some(JobState::Running));
        old.row.state = JobState::Completed;
        old.row.next_run_at = None;
        let mut again = once.clone();
        again.kwargs = json!({"message": "new text"});
        let (job, _) = written(plan(Some(&old), again, false, now()));
        assert_eq!((job.state, job.next_run_at), (JobState::Completed, None));
    }

    #[test]
    fn failure_records_are_never_taken_over() {
        let mut old = stored(&new_job(JobState::Paused, 60), None);
        old.row.handler = ERROR_HANDLER.into();
        assert!(matches!(
            plan(Some(&old), new_job(JobState::Running, 60), false, now()),
            FileJobPlan::Refuse(reason) if reason.contains("failure record")
        ));
    }
}
