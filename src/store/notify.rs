//! Wake-ups for the schedulers and workers: what a committed change tells
//! them, as one [`Notice`] per transaction. PostgreSQL carries notices to
//! every replica through one LISTEN/NOTIFY channel (a typed, unambiguous
//! encoding, [`Notice::encode`]; no job id is ever read as a hint); the
//! embedded store through an in-process broadcast. Each loop still polls on
//! a bounded interval in case a notice is lost (e.g. while a connection was
//! re-opened).

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// What a change tells the schedulers, so a burst of job creations does not
/// make every replica query the database each time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireHint {
    /// Something changed that may fire at any time: look again.
    Recheck,
    /// The earliest new fire time, in milliseconds since the epoch.
    EarliestAt(i64),
}

/// One notification: what changed, for whom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notice {
    /// For the schedulers: jobs (or the service switch) changed.
    pub jobs: Option<FireHint>,
    /// For the workers: runs were queued, or a lock key was released.
    pub runs_queued: bool,
    /// For the workers: runs to stop where they run.
    pub cancel: Vec<Uuid>,
}

impl Notice {
    pub fn jobs(hint: FireHint) -> Notice {
        Notice {
            jobs: Some(hint),
            ..Notice::default()
        }
    }

    /// For the schedulers: a job (now) fires next at `next`; nothing new
    /// fires when it is `None` (a pause, a completion), which wakes nobody.
    pub fn fires_at(next: Option<DateTime<Utc>>) -> Notice {
        Notice {
            jobs: next.map(|t| FireHint::EarliestAt(t.timestamp_millis())),
            ..Notice::default()
        }
    }

    pub fn runs_queued() -> Notice {
        Notice {
            runs_queued: true,
            ..Notice::default()
        }
    }

    pub fn cancel(run_id: Uuid) -> Notice {
        Notice {
            cancel: vec![run_id],
            ..Notice::default()
        }
    }

    /// Whether it wakes anybody (an empty notice is not sent).
    pub fn is_empty(&self) -> bool {
        self.jobs.is_none() && !self.runs_queued && self.cancel.is_empty()
    }

    /// Space-separated tokens: `jobs`, `jobs@<ms>`, `queued`, `cancel=<uuid>`.
    pub fn encode(&self) -> String {
        let mut tokens = Vec::new();
        match self.jobs {
            Some(FireHint::Recheck) => tokens.push("jobs".to_string()),
            Some(FireHint::EarliestAt(ms)) => tokens.push(format!("jobs@{ms}")),
            None => {}
        }
        if self.runs_queued {
            tokens.push("queued".to_string());
        }
        tokens.extend(self.cancel.iter().map(|id| format!("cancel={id}")));
        tokens.join(" ")
    }

    /// The inverse of [`Notice::encode`]. A token it does not know (from a
    /// newer replica, say) makes it wake everybody, which is always safe.
    pub fn parse(payload: &str) -> Notice {
        let mut notice = Notice::default();
        for token in payload.split_ascii_whitespace() {
            if token == "jobs" {
                notice.jobs = Some(FireHint::Recheck);
            } else if let Some(ms) = token.strip_prefix("jobs@") {
                let hint = ms.parse().map_or(FireHint::Recheck, FireHint::EarliestAt);
                notice.jobs = Some(match (notice.jobs, hint) {
                    (Some(FireHint::EarliestAt(a)), FireHint::EarliestAt(b)) => {
                        FireHint::EarliestAt(a.min(b))
                    }
                    (Some(FireHint::Recheck), _) => FireHint::Recheck,
                    (_, hint) => hint,
                });
            } else if token == "queued" {
                notice.runs_queued = true;
            } else if let Some(id) = token.strip_prefix("cancel=").and_then(|s| s.parse().ok()) {
                notice.cancel.push(id);
            } else {
                return Notice::everything();
            }
        }
        notice
    }

    /// What a listener assumes when it may have missed notifications.
    pub fn everything() -> Notice {
        Notice {
            jobs: Some(FireHint::Recheck),
            runs_queued: true,
            cancel: Vec::new(),
        }
    }
}

/// Where a loop receives notices.
pub enum Listener {
    Postgres(sqlx::postgres::PgListener),
    Local(tokio::sync::broadcast::Receiver<Notice>),
}

/// The next notice. Without a listener it never returns (callers poll on a
/// timer beside it); after a listener error it pauses briefly and returns
/// [`Notice::everything`], since notices may have been lost.
pub async fn next(listener: &mut Option<Listener>) -> Notice {
    match listener.as_mut() {
        None => std::future::pending().await,
        Some(Listener::Postgres(l)) => super::postgres::notify::next(l).await,
        Some(Listener::Local(rx)) => match rx.recv().await {
            Ok(notice) => notice,
            // Fell behind: notices were dropped, so assume everything.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Notice::everything(),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending().await,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_job_ids_are_never_hints() {
        let id = Uuid::now_v7();
        let all = Notice {
            jobs: Some(FireHint::EarliestAt(1_893_456_010_000)),
            runs_queued: true,
            cancel: vec![id],
        };
        assert_eq!(Notice::parse(&all.encode()), all);
        for notice in [
            Notice::jobs(FireHint::Recheck),
            Notice::runs_queued(),
            Notice::cancel(id),
            Notice::default(),
        ] {
            assert_eq!(Notice::parse(&notice.encode()), notice);
        }
        // What the old encoding read wrongly: a job named "none" or "12345"
        // is no payload of this one; anything unknown wakes everybody.
        assert_eq!(Notice::parse("none"), Notice::everything());
        assert_eq!(Notice::parse("12345"), Notice::everything());
        assert_eq!(Notice::parse("jobs@junk").jobs, Some(FireHint::Recheck));
        assert_eq!(
            Notice::parse("jobs@20 jobs@10").jobs,
            Some(FireHint::EarliestAt(10))
        );
        assert!(Notice::default().is_empty());
    }
}
