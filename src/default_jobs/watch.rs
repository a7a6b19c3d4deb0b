//! Live reload: a thin loop around [`Loader::scan`].
//!
//! A file-system watcher (`notify`: inotify on Linux) wakes the loop when
//! anything in the directory changes; after the changes settle
//! ([`SETTLE`]) one scan runs. A periodic rescan (`--default-jobs-rescan`)
//! catches what the watcher cannot see: a directory created after start-up
//! (the watcher is set up at the first scan that finds it), one replaced as a
//! whole (a Kubernetes ConfigMap swap), or network file systems without
//! change events. A scan only re-applies files whose content changed, so
//! rescans are cheap.

use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::upsert::Loader;

/// Quiet time after the last change event before a scan (an editor's save
/// is often several events).
const SETTLE: Duration = Duration::from_millis(200);
/// The longest a stream of events can put a scan off.
const MAX_SETTLE: Duration = Duration::from_secs(2);

/// Watches and rescans until `shutdown` is cancelled. A zero `rescan` turns
/// the periodic rescan off (the watcher alone).
pub fn spawn(loader: Loader, rescan: Duration, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(run(loader, rescan, shutdown))
}

async fn run(mut loader: Loader, rescan: Duration, shutdown: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let mut watcher = watch(&loader, &changed);
    let mut ticker = (!rescan.is_zero()).then(|| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + rescan, rescan);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => settle(&changed).await,
            _ = async {
                match ticker.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        if shutdown.is_cancelled() {
            return;
        }
        let report = loader.scan().await;
        if report.dir_error.is_some() {
            // The directory is gone (or unreadable): its watch died with it.
            watcher = None;
        } else if watcher.is_none() {
            watcher = watch(&loader, &changed);
        }
    }
}

/// Waits until no change event came for [`SETTLE`] (at most [`MAX_SETTLE`]).
async fn settle(changed: &Notify) {
    let start = tokio::time::Instant::now();
    while start.elapsed() < MAX_SETTLE {
        if tokio::time::timeout(SETTLE, changed.notified())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A watcher of the loader's directory that wakes `changed`; `None` when it
/// cannot be set up (the periodic rescan still runs).
fn watch(loader: &Loader, changed: &Arc<Notify>) -> Option<RecommendedWatcher> {
    let dir = loader.dir();
    if !dir.is_dir() {
        return None;
    }
    let wake = changed.clone();
    let handler = move |event: notify::Result<notify::Event>| match event {
        // Reading a file (which every scan does) is not a change; a file
        // closed after writing is.
        Ok(event) => match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => wake.notify_one(),
            EventKind::Access(_) => {}
            _ => wake.notify_one(),
        },
        Err(_) => wake.notify_one(),
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "default jobs: no file watcher; relying on the periodic rescan");
            return None;
        }
    };
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "default jobs: cannot watch the directory; relying on the periodic rescan");
        return None;
    }
    tracing::debug!(dir = %dir.display(), "default jobs: watching for changes");
    Some(watcher)
}
