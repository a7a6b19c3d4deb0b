//! The deliverer, on every replica: two thin loops around a `*_once`.
//!
//! - **The feed** ([`Deliverer::feed_once`]) reads the events after the
//!   stored feed cursor, works out which webhooks get each
//!   ([`super::matching`]), and writes those deliveries with the cursor's
//!   new position in one transaction, only if the cursor has not moved
//!   since it read it (`Store::webhook_feed_advance`). Replicas race for
//!   each page; one wins, the others read again: no event is skipped or
//!   queued twice.
//! - **The sender** ([`Deliverer::send_once`]) claims due deliveries under
//!   a lease as workers claim runs, sends each attempt while renewing its
//!   lease, and records the attempt and what follows
//!   ([`super::retry::next_step`]). A replica killed mid-attempt records
//!   nothing; its lease expires and another replica sends the delivery
//!   again, with the same `webhook-id` (at least once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::matching::{payload, EventFacts, JobFacts, Subscription};
use super::retry::{next_step, NextStep};
use super::send::Sender;
use crate::events::EventHub;
use crate::handlers::HandlerRegistry;
use crate::metrics::Metrics;
use crate::store::{
    AttemptEnd, AttemptRow, ClaimedDelivery, DeliveryStep, EventQuery, FeedAdvance, JobRow,
    NewDelivery, Store, StoreResult,
};

/// Settings of the deliverer (`--webhook-*` flags).
#[derive(Debug, Clone)]
pub struct DelivererConfig {
    pub instance: String,
    /// A claimed delivery's lease, renewed every third of it.
    pub lease: Duration,
    /// The waits before the 2nd, 3rd, ... attempts.
    pub retry_delays: Vec<Duration>,
    /// Longest sending attempts at once on this replica.
    pub concurrency: usize,
    /// Longest sleep of the sender between looks for due deliveries.
    pub poll: Duration,
}

/// How often the feed looks for events while no webhook is active.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Attempts sent at once by one replica.
pub const CONCURRENCY: usize = 32;

/// The deliverer; cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registry: Arc<HandlerRegistry>,
    hub: EventHub,
    sender: Sender,
    metrics: Metrics,
    config: DelivererConfig,
    /// Wakes the sender when this replica queued deliveries.
    queued: Notify,
}

impl Deliverer {
    pub fn new(
        store: Store,
        registry: Arc<HandlerRegistry>,
        hub: EventHub,
        sender: Sender,
        metrics: Metrics,
        config: DelivererConfig,
    ) -> Deliverer {
        Deliverer {
            inner: Arc::new(Inner {
                store,
                registry,
                hub,
                sender,
                metrics,
                config,
                queued: Notify::new(),
            }),
        }
    }

    /// Wakes this replica's sender (a delivery was queued here).
    pub fn wake(&self) {
        self.inner.queued.notify_one();
    }

    /// Runs the feed and the sender until `shutdown`; attempts in flight
    /// then get up to their timeout to end.
    pub async fn run(self, shutdown: CancellationToken) {
        let feed = self.clone().run_feed(shutdown.clone());
        let send = self.run_sender(shutdown);
        tokio::join!(feed, send);
    }

    async fn run_feed(self, shutdown: CancellationToken) {
        loop {
            let fed = tokio::select! {
                _ = shutdown.cancelled() => return,
                fed = self.feed_once(Duration::from_secs(30)) => fed,
            };
            match fed {
                Ok(queued) if queued > 0 => self.wake(),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: reading events failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Turns the next page of events (waiting up to `wait` for some) into
    /// deliveries; how many it queued (0 too when another replica took
    /// the page).
    pub async fn feed_once(&self, wait: Duration) -> StoreResult<usize> {
        let inner = &self.inner;
        let from = inner.store.webhook_feed_position().await?;
        let mut webhooks = inner.store.webhook_list().await?;
        if !webhooks.iter().any(|w| Subscription::of(w).is_some()) {
            // Nobody to deliver to: the feed skips to the newest event
            // without reading those between (no webhook gets events from
            // before its creation), polling, so a replica without webhooks
            // holds no listening connection and reads no events. The
            // newest is read before the webhooks again: a webhook created
            // since that second read sees only events after it.
            let newest = inner.hub.newest().await?;
            webhooks = inner.store.webhook_list().await?;
            if !webhooks.iter().any(|w| Subscription::of(w).is_some()) {
                if let Some(to) = newest.filter(|to| Some(*to) != from) {
                    inner
                        .store
                        .webhook_feed_advance(&FeedAdvance {
                            from,
                            to,
                            deliveries: Vec::new(),
                        })
                        .await?;
                }
                tokio::time::sleep(wait.min(IDLE_POLL)).await;
                return Ok(0);
            }
        }
        let query = EventQuery {
            after: from,
            limit: crate::events::feed::PAGE,
            ..EventQuery::default()
        };
        let mut reader = inner.hub.reader(query).await;
        let events = reader.next(wait).await?;
        let to = reader.position();
        let Some(to) = to else {
            return Ok(0);
        };
        if Some(to) == from {
            return Ok(0);
        }
        // Read again after the wait: a webhook paused, changed or created
        // meanwhile is taken as it is now.
        let webhooks = if events.is_empty() {
            webhooks
        } else {
            inner.store.webhook_list().await?
        };
        let subscriptions: Vec<Subscription> =
            webhooks.iter().filter_map(Subscription::of).collect();
        let mut deliveries = Vec::new();
        if !subscriptions.is_empty() && !events.is_empty() {
            let mut job_ids: Vec<String> = events.iter().filter_map(|e| e.job_id.clone()).collect();
            job_ids.sort_unstable();
            job_ids.dedup();
            let jobs: HashMap<String, JobRow> = if job_ids.is_empty() {
                HashMap::new()
            } else {
                inner
                    .store
                    .job_get_many(&job_ids)
                    .await?
                    .into_iter()
                    .map(|j| (j.job_id.clone(), j))
                    .collect()
            };
            let shown =
                crate::api::events::assemble(&inner.store, &inner.registry, events.clone()).await?;
            for (row, event) in events.iter().zip(shown) {
                let job = row.job_id.as_ref().and_then(|id| jobs.get(id));
                let facts = EventFacts {
                    event_type: &row.event_type,
                    at: Some(row.at),
                    job_id: row.job_id.as_deref(),
                    job: job.map(|j| JobFacts {
                        tags: &j.tags,
                        handler: &j.handler,
                        notify: &j.notify,
                    }),
                };
                let wanted: Vec<&Subscription> =
                    subscriptions.iter().filter(|s| s.wants(&facts)).collect();
                if wanted.is_empty() {
                    continue;
                }
                let data = serde_json::to_value(&event).unwrap_or_default();
                let body = payload(&row.event_type, row.at, data);
                for s in wanted {
                    deliveries.push(NewDelivery::new(
                        s.webhook.id,
                        &row.event_type,
                        Some(event.event_id.clone()),
                        body.clone(),
                    ));
                }
            }
        }
        let queued = deliveries.len();
        let advance = FeedAdvance {
            from,
            to,
            deliveries,
        };
        if inner.store.webhook_feed_advance(&advance).await? {
            Ok(queued)
        } else {
            Ok(0)
        }
    }

    async fn run_sender(self, shutdown: CancellationToken) {
        let mut in_flight = JoinSet::new();
        loop {
            let free = self.inner.config.concurrency.max(1) - in_flight.len();
            if free > 0 {
                match self.claim(free).await {
                    Ok(claimed) => {
                        let more = claimed.len() == free;
                        for delivery in claimed {
                            in_flight.spawn(self.clone().attempt(delivery));
                        }
                        if more {
                            continue;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "webhooks: claiming deliveries failed"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.inner.queued.notified() => {}
                _ = tokio::time::sleep(self.inner.config.poll) => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        }
        // Attempts in flight end by their timeout; those cut short are
        // sent again by whichever replica claims them after their lease.
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
    }

    async fn claim(&self, limit: usize) -> StoreResult<Vec<ClaimedDelivery>> {
        let c = &self.inner.config;
        self.inner
            .store
            .webhook_deliveries_claim(&c.instance, c.lease.as_millis() as i64, limit as i64)
            .await
    }

    /// Claims and sends what is due now, waiting for those attempts;
    /// how many were sent (for tests).
    pub async fn send_once(&self) -> StoreResult<usize> {
        let claimed = self.claim(self.inner.config.concurrency.max(1)).await?;
        let n = claimed.len();
        let mut set = JoinSet::new();
        for delivery in claimed {
            set.spawn(self.clone().attempt(delivery));
        }
        while set.join_next().await.is_some() {}
        Ok(n)
    }

    /// One attempt of a claimed delivery, its lease renewed while it is
    /// in flight; abandoned if the lease is lost.
    #[tracing::instrument(skip_all, fields(webhook = %delivery.webhook_name, message_id = %delivery.message_id, attempt = delivery.claim.attempt))]
    async fn attempt(self, delivery: ClaimedDelivery) {
        let inner = &self.inner;
        let lease = inner.config.lease;
        let lease_ms = lease.as_millis() as i64;
        let at = Utc::now();
        let send = inner.sender.send(&delivery, at);
        tokio::pin!(send);
        let mut renew = tokio::time::interval((lease / 3).max(Duration::from_millis(50)));
        renew.tick().await;
        let sent = loop {
            tokio::select! {
                sent = &mut send => break sent,
                _ = renew.tick() => {
                    match inner.store.webhook_delivery_heartbeat(&delivery.claim, lease_ms).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("webhooks: lost the lease of a delivery in flight; abandoning the attempt");
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "webhooks: renewing a delivery's lease failed"),
                    }
                }
            }
        };
        let attempt = delivery.claim.attempt.max(1) as u32;
        let jitter = rand::thread_rng().gen::<f64>();
        let step = next_step(
            &inner.config.retry_delays,
            attempt,
            &sent.result,
            delivery.failing_since,
            Utc::now(),
            jitter,
        );
        let (step, result) = match step {
            NextStep::Delivered => (DeliveryStep::Delivered, "delivered"),
            NextStep::RetryAt(when) => (DeliveryStep::RetryAt(when), "failed"),
            NextStep::GiveUp => (DeliveryStep::GiveUp, "gave_up"),
            NextStep::Disable(reason) => (DeliveryStep::Disable(reason.to_string()), "disabled"),
        };
        let end = AttemptEnd {
            attempt: AttemptRow {
                attempt: delivery.claim.attempt,
                at,
                status: sent.status.map(i32::from),
                latency_ms: sent.latency.as_millis().min(i32::MAX as u128) as i32,
                response: sent.response,
                error: sent.error,
            },
            step,
        };
        match inner.store.webhook_delivery_finish(&delivery.claim, &end).await {
            Ok(true) => {
                inner.metrics.webhook_delivery(result);
                if let DeliveryStep::Disable(reason) = &end.step {
                    tracing::warn!(%reason, "webhook disabled");
                }
            }
            Ok(false) => tracing::warn!("webhooks: a delivery's lease expired before its attempt was recorded; another attempt has it"),
            Err(e) => tracing::warn!(error = %e, "webhooks: recording an attempt failed; the delivery is sent again after its lease"),
        }
    }

    /// Queues a test delivery to `webhook_id` and wakes the sender.
    pub async fn queue_test(
        &self,
        webhook_id: uuid::Uuid,
        name: &str,
    ) -> StoreResult<crate::store::DeliveryRow> {
        let at = Utc::now();
        let body = payload(
            "webhook.test",
            at,
            serde_json::json!({ "webhook": name, "message": "a test delivery from jobsd" }),
        );
        let row = self
            .inner
            .store
            .webhook_delivery_insert(&NewDelivery::new(webhook_id, "webhook.test", None, body))
            .await?;
        self.wake();
        Ok(row)
    }

    /// The address rules webhook URLs must pass.
    pub fn policy(&self) -> &crate::guard::AddressPolicy {
        self.inner.sender.policy()
    }
}
