//! PostgreSQL's delivery of [`Notice`]s: one LISTEN/NOTIFY channel shared
//! by every replica. A transaction sends at most one notification:
//! PostgreSQL serializes the commits of transactions that notify, so one per
//! transaction is the most it should cost.

use sqlx::postgres::PgListener;
use sqlx::{Executor, Postgres};

use super::{PgStore, StoreResult};
pub(crate) use crate::store::notify::{FireHint, Notice};

/// The one channel jobsd notifies on.
pub const CHANNEL: &str = "jobsd_wake";

/// Sends `notice` within the caller's transaction (delivered on commit), as
/// its own statement; an empty notice sends nothing.
pub async fn send<'e, E>(executor: E, notice: &Notice) -> StoreResult<()>
where
    E: Executor<'e, Database = Postgres>,
{
    if notice.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(notice.encode())
        .execute(executor)
        .await?;
    Ok(())
}

impl PgStore {
    /// A listener on the channel. It reconnects by itself after a lost
    /// connection (notifications sent meanwhile are lost; callers poll).
    pub async fn listen(&self) -> StoreResult<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }

    /// Sends `notice` on its own (after a commit whose changes it announces).
    pub async fn notify(&self, notice: &Notice) -> StoreResult<()> {
        send(&self.pool, notice).await
    }
}

/// The next notification on `l`; after a listener error it pauses briefly
/// and returns [`Notice::everything`], since notifications may have been lost.
pub(crate) async fn next(l: &mut PgListener) -> Notice {
    match l.recv().await {
        Ok(n) if n.channel() == CHANNEL => Notice::parse(n.payload()),
        Ok(_) => Notice::default(),
        Err(e) => {
            tracing::warn!(error = %e, "notification listener failed; polling until it reconnects");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            Notice::everything()
        }
    }
}
