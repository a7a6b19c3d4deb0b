//! Commands that work on a store as a whole: `jobsd backup` (a consistent
//! copy of a live embedded store) and `jobsd copy` (the jobs, and
//! optionally the run history, from one store into another, typically from
//! a try-out on SQLite into a PostgreSQL deployment).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;

use crate::config::{parse_flag_duration, DatabaseConfig};
use crate::domain::{JobState, RunState, ScheduleKind, Trigger};
use crate::store::copy::JobImportMeta;
use crate::store::{
    redact_url, Backend, ClaimSlots, JobFilter, JobRow, NewJob, RunFilter, RunRow, ServeLock,
    SqliteStore, Store, StoreError, StoreOptions,
};

/// Settings of `jobsd backup`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The file to write (it must not exist yet).
    pub path: PathBuf,

    #[command(flatten)]
    pub database: DatabaseConfig,
}

/// Writes a consistent copy of the embedded store to `args.path`, while it
/// may be served (SQLite's `VACUUM INTO`: one read transaction, so the copy
/// is the store as of one instant). Refuses an existing file, and
/// PostgreSQL (whose tool is `pg_dump`).
pub async fn backup(args: &BackupArgs) -> anyhow::Result<()> {
    let url = &args.database.database_url;
    if Backend::of_url(url) == Some(Backend::Postgres) {
        bail!(
            "jobsd backup copies the embedded SQLite store, and {} is PostgreSQL: use pg_dump",
            redact_url(url)
        );
    }
    // An unknown scheme: the same one line as any other command.
    let file = match SqliteStore::file_of(url) {
        Some(file) => file,
        None => {
            crate::app::connect_store(&args.database).await?;
            bail!("no SQLite file named in {url}");
        }
    };
    if !file.is_file() {
        bail!(
            "there is no embedded store at {}: nothing to back up",
            file.display()
        );
    }
    let target = &args.path;
    if target.symlink_metadata().is_ok() {
        bail!(
            "{} exists already; jobsd backup never overwrites a file: name a new one",
            target.display()
        );
    }
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "cannot write the backup {}: the directory {} does not exist",
                target.display(),
                dir.display()
            );
        }
    }
    let store = crate::app::connect_store(&args.database).await?;
    let sqlite = store
        .as_sqlite()
        .ok_or_else(|| anyhow!("not an embedded store"))?;
    if !sqlite.has_schema().await? {
        bail!(
            "{} is not a jobsd store (jobsd's tables were never created in it)",
            file.display()
        );
    }
    sqlite
        .backup(target)
        .await
        .with_context(|| format!("cannot write the backup {}", target.display()))?;
    crate::logging::print_stderr(&format!(
        "jobsd: backup of {} written to {}",
        file.display(),
        target.display()
    ));
    Ok(())
}

/// Settings of `jobsd copy`.
#[derive(Debug, Clone, Args)]
pub struct CopyArgs {
    /// The store to copy from: `sqlite://PATH` or `postgres://...`.
    #[arg(long, value_name = "URL")]
    pub from: String,

    /// The store to copy into: `postgres://...` (the database is created
    /// when it does not exist) or `sqlite://PATH` (created when missing).
    #[arg(long, value_name = "URL")]
    pub to: String,

    /// Also copy the finished runs (the run history), not only the runs
    /// still to do.
    #[arg(long)]
    pub with_history: bool,

    /// How long to keep trying to reach each database.
    #[arg(long, default_value = "10s", value_parser = parse_flag_duration)]
    pub db_connect_timeout: Duration,
}

/// Jobs (and runs) read and written per statement.
const PAGE: i64 = 500;

/// What [`copy`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub jobs: u64,
    pub runs: u64,
}

/// `jobsd copy`: see the command's help in `src/main.rs`, which states each
/// choice made here.
pub async fn copy_command(args: &CopyArgs) -> anyhow::Result<()> {
    let copied = copy(args).await?;
    crate::logging::print_stderr(&format!(
        "jobsd: copied {} jobs and {} runs from {} to {}",
        copied.jobs,
        copied.runs,
        redact_url(&args.from),
        redact_url(&args.to)
    ));
    Ok(())
}

/// Copies the jobs of `args.from` into `args.to` and the runs the command's
/// help describes; returns how many of each were written.
pub async fn copy(args: &CopyArgs) -> anyhow::Result<Copied> {
    if args.from == args.to {
        bail!("--from and --to name the same store");
    }
    let source = open(&args.from, args.db_connect_timeout)
        .await
        .context("the source (--from)")?;
    // Held until the copy is done: no service starts on the source meanwhile.
    let _source_lock = lock_source(&source)?;
    if let Store::Postgres(_) = source {
        let serving = source
            .instance_list(60_000)
            .await?
            .into_iter()
            .filter(|i| i.alive)
            .count();
        if serving > 0 {
            crate::logging::print_stderr(&format!(
                "jobsd: warning: {serving} replica(s) are serving {}; what they change while the copy runs may be missed",
                redact_url(&args.from)
            ));
        }
    }
    let target = open(&args.to, args.db_connect_timeout)
        .await
        .context("the target (--to)")?;
    if let (Some(a), Some(b)) = (source.as_sqlite(), target.as_sqlite()) {
        if same_file(a.path(), b.path()) {
            bail!("--from and --to name the same store");
        }
    }

    // 1. Every job id of the source, refused as a whole when the target has
    //    one of them already (nothing is copied then).
    let source_jobs = all_jobs(&source).await?;
    let taken: HashSet<String> = all_jobs(&target)
        .await?
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    let clashes: Vec<&str> = source_jobs
        .iter()
        .map(|j| j.job_id.as_str())
        .filter(|id| taken.contains(*id))
        .collect();
    if !clashes.is_empty() {
        bail!(
            "the target already has {} of the jobs to copy ({}); nothing was copied. \
             Delete them from the target, or copy into an empty store",
            clashes.len(),
            name_some(&clashes)
        );
    }

    // 2. The jobs, a page at a time, each page all or nothing.
    let mut copied = Copied::default();
    for page in source_jobs.chunks(PAGE as usize) {
        let jobs: Vec<NewJob> = page.iter().map(JobRow::definition).collect();
        match target
            .job_insert_many(&jobs, &ClaimSlots::none("copy"))
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => {
                let mut clashes = Vec::new();
                for job in &jobs {
                    if target.job_get(&job.job_id).await.is_ok() {
                        clashes.push(job.job_id.as_str());
                    }
                }
                bail!(
                    "the target gained a job to copy while copying ({}); {} jobs were copied \
                     before it, none of its page of {}",
                    name_some(&clashes),
                    copied.jobs,
                    jobs.len()
                );
            }
            Err(e) => return Err(e.into()),
        }
        let mut meta = Vec::with_capacity(page.len());
        for job in page {
            meta.push(JobImportMeta {
                job_id: job.job_id.clone(),
                created_at: job.created_at,
                updated_at: job.updated_at,
                file_state: file_state(&source, job).await?,
            });
        }
        target.job_import_meta(&meta).await?;
        copied.jobs += page.len() as u64;
    }

    // 3. The runs.
    let copied_ids: HashSet<&str> = source_jobs.iter().map(|j| j.job_id.as_str()).collect();
    let mut import = |runs: Vec<RunRow>| {
        let runs: Vec<RunRow> = runs
            .into_iter()
            .filter(|r| copied_ids.contains(r.job_id.as_str()))
            .collect();
        let target = &target;
        async move { target.run_import(&runs).await }
    };
    if args.with_history {
        copied.runs += for_each_run_page(&source, RunFilter::default(), &mut import).await?;
    } else {
        for state in [RunState::Queued, RunState::Waiting, RunState::Running] {
            let filter = RunFilter {
                state: Some(state),
                ..RunFilter::default()
            };
            copied.runs += for_each_run_page(&source, filter, &mut import).await?;
        }
        // A one-shot job that has fired must not fire again: its scheduled
        // run says so (`has_fired`), finished or not.
        for job in source_jobs
            .iter()
            .filter(|j| j.schedule_kind == ScheduleKind::Once && j.has_fired)
        {
            let filter = RunFilter {
                job_id: Some(job.job_id.clone()),
                ..RunFilter::default()
            };
            let mut scheduled = |runs: Vec<RunRow>| {
                import(
                    runs.into_iter()
                        .filter(|r| r.trigger != Trigger::Manual && !r.state.is_active())
                        .collect(),
                )
            };
            copied.runs += for_each_run_page(&source, filter, &mut scheduled).await?;
        }
    }
    if source.service_paused().await? && !target.service_paused().await? {
        crate::logging::print_stderr(
            "jobsd: note: scheduling is paused on the source, not on the target \
             (PUT /api/v1/service/pause there to pause it)",
        );
    }
    Ok(copied)
}

/// Opens and migrates the store `url` names.
async fn open(url: &str, timeout: Duration) -> anyhow::Result<Store> {
    let store = Store::connect_with(url, 4, timeout, &StoreOptions::default()).await?;
    crate::app::migrate_store(&store).await?;
    Ok(store)
}

/// Takes an embedded source's serve lock, refusing a source being served.
fn lock_source(source: &Store) -> anyhow::Result<Option<ServeLock>> {
    let Some(sqlite) = source.as_sqlite() else {
        return Ok(None);
    };
    match sqlite.lock_for_serving() {
        Ok(lock) => Ok(Some(lock)),
        // The lock is held (`ServeLock::take`'s message for that case); any
        // other reason (the lock file cannot be created) is told as it is.
        Err(reason) if reason.starts_with("another jobsd is already serving") => bail!(
            "{} is being served by a running jobsd; stop it first (copying a store in use \
             could miss its latest changes, and run a job twice)",
            sqlite.path().display()
        ),
        Err(reason) => bail!(reason),
    }
}

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Up to five names, quoted, and how many more.
fn name_some(ids: &[&str]) -> String {
    let mut text = ids
        .iter()
        .take(5)
        .map(|id| format!("{id:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > 5 {
        text.push_str(&format!(" and {} more", ids.len() - 5));
    }
    text
}

/// Every job of `store`, oldest first.
async fn all_jobs(store: &Store) -> anyhow::Result<Vec<JobRow>> {
    let mut jobs = Vec::new();
    loop {
        let (page, total) = store
            .job_list(&JobFilter {
                limit: PAGE,
                offset: jobs.len() as i64,
                ..JobFilter::default()
            })
            .await?;
        let done = page.len() < PAGE as usize;
        jobs.extend(page);
        if done || jobs.len() as i64 >= total {
            return Ok(jobs);
        }
    }
}

/// Hands each page of the runs matching `filter` to `import`; returns the
/// sum of what it returns.
async fn for_each_run_page<F, Fut>(
    store: &Store,
    filter: RunFilter,
    import: &mut F,
) -> anyhow::Result<u64>
where
    F: FnMut(Vec<RunRow>) -> Fut,
    Fut: std::future::Future<Output = crate::store::StoreResult<u64>>,
{
    let mut offset = 0;
    let mut imported = 0;
    loop {
        let (page, _) = store
            .run_list(&RunFilter {
                limit: PAGE,
                offset,
                ..filter.clone()
            })
            .await?;
        let done = page.len() < PAGE as usize;
        offset += page.len() as i64;
        imported += import(page).await?;
        if done {
            return Ok(imported);
        }
    }
}

/// The state a job's default-jobs file declared, for jobs a file backs.
async fn file_state(source: &Store, job: &JobRow) -> anyhow::Result<Option<JobState>> {
    if job.source == "api" {
        return Ok(None);
    }
    match source.job_file_state(&job.job_id).await {
        Ok(state) => Ok(state),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::name_some;

    #[test]
    fn names_at_most_five() {
        assert_eq!(name_some(&["a"]), "\"a\"");
        assert_eq!(
            name_some(&["a", "b", "c", "d", "e", "f", "g"]),
            "\"a\", \"b\", \"c\", \"d\", \"e\" and 2 more"
        );
    }
}
