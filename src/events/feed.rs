//! Reading events as they commit: one [`EventHub`] per process wakes every
//! reader (an SSE stream, an in-process listener) when a transaction that
//! wrote events commits, on any replica; readers then read the table from
//! their cursor. The wake carries nothing, so nothing can be lost in it: a
//! reader that misses one still finds the events on its next read.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OnceCell};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::store::{EventPosition, EventQuery, EventRow, Store, StoreResult};

/// How often a reader looks without a wake (one may be lost to a reconnect,
/// and on PostgreSQL events become visible only when every older
/// transaction has ended, which may notify nobody).
const POLL: Duration = Duration::from_secs(1);
/// After a wake that found nothing visible yet, the reader looks again this
/// soon, [`SETTLE_TRIES`] times, before it falls back to [`POLL`].
const SETTLE: Duration = Duration::from_millis(20);
const SETTLE_TRIES: u32 = 25;

/// Most events one read returns.
pub const PAGE: i64 = 500;

/// The process's wake-ups for event readers. Cheap to clone. Its source
/// starts with the first reader, so a replica nobody streams from holds no
/// extra connection.
#[derive(Clone)]
pub struct EventHub {
    store: Store,
    shutdown: CancellationToken,
    wakes: Arc<OnceCell<watch::Receiver<u64>>>,
}

impl EventHub {
    pub fn new(store: Store, shutdown: CancellationToken) -> EventHub {
        EventHub {
            store,
            shutdown,
            wakes: Arc::default(),
        }
    }

    /// Starts the process's one source of wakes, once (a connection that
    /// LISTENs on PostgreSQL; the writer's commit hook on the embedded
    /// store). If it cannot start, readers poll.
    async fn wakes(&self) -> watch::Receiver<u64> {
        let wakes = self
            .wakes
            .get_or_init(|| async {
                let (sender, wakes) = watch::channel(0u64);
                let shutdown = self.shutdown.clone();
                match self.store.event_wakes().await {
                    Ok(mut source) => {
                        tokio::spawn(async move {
                            loop {
                                tokio::select! {
                                    _ = shutdown.cancelled() => break,
                                    _ = source.next() => sender.send_modify(|n| *n = n.wrapping_add(1)),
                                }
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for events; event readers poll every second");
                        // Kept alive, so that readers wait out their poll.
                        tokio::spawn(async move {
                            shutdown.cancelled().await;
                            drop(sender);
                        });
                    }
                }
                wakes
            })
            .await;
        wakes.clone()
    }

    /// A reader of the events matching `query` after `query.after`, in
    /// pages of `query.limit` ([`PAGE`] when 0).
    pub async fn reader(&self, query: EventQuery) -> EventReader {
        EventReader {
            store: self.store.clone(),
            wakes: self.wakes().await,
            query: EventQuery {
                descending: false,
                limit: if query.limit > 0 { query.limit } else { PAGE },
                ..query
            },
        }
    }

    /// The position of the newest event visible now (`None`: none yet), to
    /// start a reader "from now".
    pub async fn newest(&self) -> StoreResult<Option<EventPosition>> {
        let newest = self
            .store
            .events_page(&EventQuery {
                descending: true,
                limit: 1,
                ..EventQuery::default()
            })
            .await?;
        Ok(newest.scanned_to)
    }
}

/// Reads one query's events in order, waiting for new ones.
pub struct EventReader {
    store: Store,
    wakes: watch::Receiver<u64>,
    query: EventQuery,
}

impl EventReader {
    /// Where the reader is: the last event it returned.
    pub fn position(&self) -> Option<EventPosition> {
        self.query.after
    }

    /// The next events (at most a page), waiting up to `wait` for some;
    /// empty when none came in time.
    pub async fn next(&mut self, wait: Duration) -> StoreResult<Vec<EventRow>> {
        let deadline = Instant::now() + wait;
        let mut settle_tries: u32 = 0;
        loop {
            self.wakes.borrow_and_update();
            let page = self.store.events_page(&self.query).await?;
            // On past what it looked at, whether or not it matched.
            if let Some(scanned_to) = page.scanned_to {
                self.query.after = Some(scanned_to);
            }
            if !page.events.is_empty() {
                return Ok(page.events);
            }
            if page.scanned_to.is_some() {
                // Looked at events that did not match: more may follow.
                // A wake's events were visible, so there is nothing to
                // settle for (a filtered reader would otherwise re-read 25
                // times on every wake of events it does not want).
                settle_tries = 0;
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(page.events);
            }
            let nap = if settle_tries > 0 { SETTLE } else { POLL }.min(left);
            settle_tries = settle_tries.saturating_sub(1);
            match timeout(nap, self.wakes.changed()).await {
                Ok(Ok(())) => settle_tries = SETTLE_TRIES,
                // The hub stopped (shutdown): poll out the wait.
                Ok(Err(_)) => tokio::time::sleep(nap).await,
                Err(_) => {}
            }
        }
    }
}
