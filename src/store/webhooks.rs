//! Webhooks, their deliveries and the attempts of each (issue #13 §2), as
//! the stores take and return them. The rules (which events go where, what
//! follows an attempt) are in `crate::webhooks`; the stores only keep
//! their results, each write naming the state it starts from.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::EventPosition;

/// A webhook's definition: what a person sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSpec {
    pub name: String,
    pub url: String,
    /// Type filter items (`run.failed`, `job.`); empty: every type.
    pub event_types: Vec<String>,
    pub job_ids: Vec<String>,
    pub tags: Vec<String>,
    pub handler: Option<String>,
    pub paused: bool,
}

/// A webhook to store.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub id: Uuid,
    pub spec: WebhookSpec,
    /// `whsec_...`.
    pub secret: String,
}

/// A stored webhook, with its secrets (never shown by the API after
/// creation: see `crate::api` webhooks).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRow {
    pub id: Uuid,
    pub spec: WebhookSpec,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_until: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WebhookRow {
    /// Whether events are queued for it and its deliveries sent.
    pub fn is_active(&self) -> bool {
        !self.spec.paused && self.disabled_at.is_none()
    }
}

/// The state of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt (`next_attempt_at`).
    Pending,
    /// An attempt holds it (under a lease).
    Delivering,
    Delivered,
    /// Given up, or its webhook was disabled by its answer.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivering => "delivering",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivering,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A delivery to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    /// The `webhook-id` header: `msg_` and the delivery's id.
    pub message_id: String,
    pub event_type: String,
    /// The event's cursor (None for a test delivery).
    pub event_id: Option<String>,
    /// The body: `{"type", "timestamp", "data"}`.
    pub payload: Value,
}

impl NewDelivery {
    /// A delivery of `payload` to `webhook_id`, with a fresh id.
    pub fn new(
        webhook_id: Uuid,
        event_type: &str,
        event_id: Option<String>,
        payload: Value,
    ) -> NewDelivery {
        let id = Uuid::now_v7();
        NewDelivery {
            id,
            webhook_id,
            message_id: format!("msg_{}", id.simple()),
            event_type: event_type.to_string(),
            event_id,
            payload,
        }
    }
}

/// The events up to `to` turned into `deliveries`, if the feed's cursor is
/// still at `from`.
#[derive(Debug, Clone)]
pub struct FeedAdvance {
    pub from: Option<EventPosition>,
    pub to: EventPosition,
    pub deliveries: Vec<NewDelivery>,
}

/// One attempt, as logged.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub attempt: i32,
    pub at: DateTime<Utc>,
    /// The answer's status; None when none came.
    pub status: Option<i32>,
    pub latency_ms: i32,
    /// The first bytes of the answer.
    pub response: Option<String>,
    pub error: Option<String>,
}

/// A stored delivery, with its attempts (oldest first).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub message_id: String,
    pub event_type: String,
    pub event_id: Option<String>,
    pub payload: Value,
    pub state: DeliveryState,
    pub attempt: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub attempts: Vec<AttemptRow>,
}

/// Which attempt of which delivery a deliverer holds: every write about
/// it demands the delivery is still `delivering` under this token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryClaim {
    pub delivery_id: Uuid,
    pub token: Uuid,
    pub attempt: i32,
}

/// A claimed delivery with what sending it takes.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub claim: DeliveryClaim,
    pub webhook_id: Uuid,
    pub webhook_name: String,
    pub url: String,
    pub message_id: String,
    pub event_type: String,
    pub payload: Value,
    pub secret: String,
    /// The secret being rotated out, while it still signs.
    pub previous_secret: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
}

/// What an attempt decided, to record with it.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryStep {
    Delivered,
    RetryAt(DateTime<Utc>),
    GiveUp,
    /// The delivery failed and its webhook is disabled (a
    /// `webhook.disabled` event is written with it).
    Disable(String),
}

/// The end of one attempt.
#[derive(Debug, Clone)]
pub struct AttemptEnd {
    pub attempt: AttemptRow,
    pub step: DeliveryStep,
}
