//! In-process event listeners, for Rust code that embeds jobsd: the
//! equivalent of the original plugin's `onTaskCompleteEvent` hooks.
//!
//! A listener gets every event committed from the moment the service
//! starts, from every replica, in cursor order, once per process that
//! registers it (on PostgreSQL, each replica's listener sees every
//! replica's events). It reads the same table the API does, so an event
//! it is given is committed; a listener that falls behind catches up from
//! its cursor and loses nothing while the process runs.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::feed::EventHub;
use crate::store::{EventPosition, EventQuery, EventRow};

/// Implement this and pass it to [`crate::app::start_with_listeners`].
/// `on_event` runs on the listener's own task, one event at a time: hand
/// slow work to a task of your own. A panic is logged and the next event
/// still comes.
pub trait EventListener: Send + Sync + 'static {
    fn on_event(&self, event: &EventRow);
}

/// Delivers the events after `after` to `listener` until `shutdown`.
/// The caller takes `after` ([`EventHub::newest`]) before the service
/// answers requests, so no event of its first requests is missed.
pub async fn run(
    hub: EventHub,
    listener: Arc<dyn EventListener>,
    after: Option<EventPosition>,
    shutdown: CancellationToken,
) {
    let mut reader = hub
        .reader(EventQuery {
            after,
            ..EventQuery::default()
        })
        .await;
    loop {
        let page = tokio::select! {
            _ = shutdown.cancelled() => return,
            page = reader.next(Duration::from_secs(30)) => page,
        };
        match page {
            Ok(events) => {
                for event in &events {
                    let delivered =
                        std::panic::catch_unwind(AssertUnwindSafe(|| listener.on_event(event)));
                    if delivered.is_err() {
                        tracing::error!(event_type = %event.event_type, "an event listener panicked");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "event listener: reading events failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
