//! LISTEN/NOTIFY channels that wake schedulers and workers on every replica
//! at once; each loop still polls on a bounded interval in case a
//! notification is lost (e.g. while a connection was being re-established).

use sqlx::postgres::PgListener;
use sqlx::{Executor, Postgres};

use super::{Store, StoreResult};

/// What a `JobsChanged` notification tells the schedulers, so a burst of
/// job creations does not make every replica query the database each time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireHint {
    /// Something changed: look again (payload `""`).
    Recheck,
    /// Nothing new will fire (e.g. only paused jobs were created): `"none"`.
    Nothing,
    /// The earliest new fire time, in milliseconds since the epoch.
    EarliestAt(i64),
}

impl FireHint {
    pub fn parse(payload: &str) -> FireHint {
        match payload {
            "none" => FireHint::Nothing,
            other => other
                .parse()
                .map_or(FireHint::Recheck, FireHint::EarliestAt),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Jobs were created, changed, paused or resumed, or the service was
    /// paused or resumed. The payload is a [`FireHint`].
    JobsChanged,
    /// Runs were queued: workers should claim.
    RunsQueued,
    /// A run is to be cancelled: the payload is its id.
    RunCancel,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Channel::JobsChanged => "jobsd_jobs_changed",
            Channel::RunsQueued => "jobsd_runs_queued",
            Channel::RunCancel => "jobsd_run_cancel",
        }
    }
}

/// Sends a notification within the caller's transaction (delivered on commit).
pub async fn send<'e, E>(executor: E, channel: Channel, payload: &str) -> StoreResult<()>
where
    E: Executor<'e, Database = Postgres>,
{
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel.name())
        .bind(payload)
        .execute(executor)
        .await?;
    Ok(())
}

impl Store {
    /// A listener subscribed to `channels`. It reconnects by itself after a
    /// lost connection (notifications sent meanwhile are lost; callers poll).
    pub async fn listen(&self, channels: &[Channel]) -> StoreResult<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        let names: Vec<&str> = channels.iter().map(|c| c.name()).collect();
        listener.listen_all(names).await?;
        Ok(listener)
    }
}

/// The next notification as (channel, payload). Without a listener it
/// never returns (callers poll on a timer beside it); after a listener
/// error it pauses briefly and returns `None`.
pub async fn next(listener: &mut Option<PgListener>) -> Option<(Channel, String)> {
    let Some(l) = listener.as_mut() else {
        return std::future::pending().await;
    };
    match l.recv().await {
        Ok(n) => {
            let channel = [
                Channel::JobsChanged,
                Channel::RunsQueued,
                Channel::RunCancel,
            ]
            .into_iter()
            .find(|c| c.name() == n.channel())?;
            Some((channel, n.payload().to_string()))
        }
        Err(e) => {
            tracing::warn!(error = %e, "notification listener failed; polling until it reconnects");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            None
        }
    }
}
