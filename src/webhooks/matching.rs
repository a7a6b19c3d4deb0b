//! Which webhooks an event goes to (pure rules), and what is sent.
//!
//! A webhook that is paused or disabled gets nothing queued. Otherwise it
//! gets an event when both hold:
//! - its type filter (types and groups, as `GET /api/v1/events` takes
//!   them; empty: every type) passes the event's type, and
//! - each job filter it sets passes the event's job: `job_ids` lists the
//!   job, `tags` shares a tag with it, `handler` is its handler. An event
//!   of no job (the service paused) or of a job gone by then passes no job
//!   filter. No job filter set: every event passes.
//!
//! Whatever its filters say, a webhook that a job lists by name under
//! `notify` gets every event of that job.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::domain::event_types::TypeFilter;
use crate::store::WebhookRow;

/// What the rules look at in one event.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFacts<'a> {
    pub event_type: &'a str,
    /// When the event happened (None: not known, taken as recent).
    pub at: Option<DateTime<Utc>>,
    pub job_id: Option<&'a str>,
    /// The event's job as it is now (None: no job, or gone).
    pub job: Option<JobFacts<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct JobFacts<'a> {
    pub tags: &'a [String],
    pub handler: &'a str,
    /// The webhook names the job's `notify` lists.
    pub notify: &'a [String],
}

/// A webhook's filters, parsed once per batch of events.
#[derive(Debug, Clone)]
pub struct Subscription<'a> {
    pub webhook: &'a WebhookRow,
    types: TypeFilter,
}

impl<'a> Subscription<'a> {
    /// None for a webhook that gets nothing now (paused, disabled), or
    /// whose stored filter no longer parses (an event type removed).
    pub fn of(webhook: &'a WebhookRow) -> Option<Subscription<'a>> {
        if !webhook.is_active() {
            return None;
        }
        let types = TypeFilter::parse(&webhook.spec.event_types.join(",")).ok()?;
        Some(Subscription { webhook, types })
    }

    /// Whether the event goes to this webhook.
    pub fn wants(&self, event: &EventFacts<'_>) -> bool {
        let spec = &self.webhook.spec;
        // A webhook gets what happens from its creation on, however far
        // behind the feed runs.
        if event.at.is_some_and(|at| at < self.webhook.created_at) {
            return false;
        }
        if let Some(job) = &event.job {
            if job.notify.contains(&spec.name) {
                return true;
            }
        }
        if !self.types.matches(event.event_type) {
            return false;
        }
        let by_id = spec.job_ids.is_empty()
            || event
                .job_id
                .is_some_and(|id| spec.job_ids.iter().any(|j| j == id));
        let by_tag = spec.tags.is_empty()
            || event
                .job
                .is_some_and(|job| job.tags.iter().any(|t| spec.tags.contains(t)));
        let by_handler = spec
            .handler
            .as_deref()
            .is_none_or(|h| event.job.is_some_and(|job| job.handler == h));
        by_id && by_tag && by_handler
    }
}

/// The body of a delivery (Standard Webhooks): `type`, `timestamp` (when
/// the event happened, RFC 3339) and `data`, the event as
/// `GET /api/v1/events` shows it.
pub fn payload(event_type: &str, at: DateTime<Utc>, data: Value) -> Value {
    json!({
        "type": event_type,
        "timestamp": at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WebhookSpec;

    fn webhook(f: impl FnOnce(&mut WebhookSpec)) -> WebhookRow {
        let mut spec = WebhookSpec {
            name: "ops".into(),
            url: "http://127.0.0.1/hook".into(),
            event_types: vec![],
            job_ids: vec![],
            tags: vec![],
            handler: None,
            paused: false,
        };
        f(&mut spec);
        let now = chrono::Utc::now();
        WebhookRow {
            id: uuid::Uuid::nil(),
            spec,
            secret: "whsec_x".into(),
            previous_secret: None,
            previous_until: None,
            disabled_at: None,
            disabled_reason: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        }
    }

    const NO_NOTIFY: &[String] = &[];

    fn event<'a>(
        event_type: &'a str,
        job_id: &'a str,
        job: Option<JobFacts<'a>>,
    ) -> EventFacts<'a> {
        EventFacts {
            event_type,
            job_id: Some(job_id),
            job,
            ..EventFacts::default()
        }
    }

    #[test]
    fn events_from_before_the_webhook_existed_are_not_its() {
        let w = webhook(|_| {});
        let s = Subscription::of(&w).unwrap();
        let at = |secs: i64| EventFacts {
            at: Some(w.created_at + chrono::Duration::seconds(secs)),
            ..event("run.failed", "a", None)
        };
        assert!(!s.wants(&at(-1)));
        assert!(s.wants(&at(0)));
        assert!(s.wants(&at(1)));
    }

    #[test]
    fn no_filter_takes_everything() {
        let w = webhook(|_| {});
        let s = Subscription::of(&w).unwrap();
        assert!(s.wants(&event("run.failed", "a", None)));
        assert!(s.wants(&EventFacts {
            event_type: "service.paused",
            ..EventFacts::default()
        }));
    }

    #[test]
    fn type_and_job_filters_all_apply() {
        let tags = vec!["billing".to_string()];
        let job = JobFacts {
            tags: &tags,
            handler: "http",
            notify: NO_NOTIFY,
        };
        let w = webhook(|s| {
            s.event_types = vec!["run.failed".into(), "job.".into()];
            s.tags = vec!["billing".into(), "ops".into()];
            s.handler = Some("http".into());
        });
        let s = Subscription::of(&w).unwrap();
        assert!(s.wants(&event("run.failed", "a", Some(job))));
        assert!(s.wants(&event("job.deleted", "a", Some(job))));
        assert!(!s.wants(&event("run.succeeded", "a", Some(job))));
        // The job is gone: its tags and handler are unknown.
        assert!(!s.wants(&event("run.failed", "a", None)));
        let other = JobFacts {
            handler: "log",
            ..job
        };
        assert!(!s.wants(&event("run.failed", "a", Some(other))));
        let w = webhook(|s| s.job_ids = vec!["a".into()]);
        let s = Subscription::of(&w).unwrap();
        assert!(s.wants(&event("run.failed", "a", None)));
        assert!(!s.wants(&event("run.failed", "b", None)));
        assert!(!s.wants(&EventFacts {
            event_type: "service.paused",
            ..EventFacts::default()
        }));
    }

    #[test]
    fn notify_overrides_filters_but_not_pause() {
        let notify = vec!["ops".to_string()];
        let job = JobFacts {
            tags: &[],
            handler: "log",
            notify: &notify,
        };
        let w = webhook(|s| {
            s.event_types = vec!["job.".into()];
            s.job_ids = vec!["other".into()];
        });
        let s = Subscription::of(&w).unwrap();
        assert!(s.wants(&event("run.succeeded", "a", Some(job))));
        let paused = webhook(|s| s.paused = true);
        assert!(Subscription::of(&paused).is_none());
        let mut disabled = webhook(|_| {});
        disabled.disabled_at = Some(chrono::Utc::now());
        assert!(Subscription::of(&disabled).is_none());
    }

    #[test]
    fn the_payload_is_type_timestamp_and_data() {
        let at = "2026-12-03T10:00:00.5Z".parse().unwrap();
        let body = payload("run.failed", at, json!({"x": 1}));
        assert_eq!(
            body,
            json!({"type": "run.failed", "timestamp": "2026-12-03T10:00:00.500000Z", "data": {"x": 1}})
        );
    }
}
