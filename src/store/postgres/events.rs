//! The events outbox on PostgreSQL: reading it below the visibility
//! horizon (see migrations/postgres/0010_events.sql for why that makes a
//! cursor exact), pruning it, stream tickets, and the listener that wakes
//! readers when a transaction with events commits.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::{FromRow, Postgres, QueryBuilder};
use uuid::Uuid;

use super::jobs::SELECT_JOB;
use super::runs::RUN_COLUMNS;
use super::{JobRow, PgStore, RunRow, StoreResult};
use crate::store::events::{EventPosition, EventQuery, EventRow, TicketRow};

/// The channel each transaction that writes events notifies, once.
pub const EVENTS_CHANNEL: &str = "jobsd_events";

#[derive(FromRow)]
struct Row {
    tx: i64,
    seq: i64,
    #[sqlx(rename = "type")]
    event_type: String,
    at: DateTime<Utc>,
    job_id: Option<String>,
    run_id: Option<Uuid>,
    instance: Option<String>,
    attempt: Option<i32>,
    from_state: Option<String>,
    reason: Option<String>,
}

impl From<Row> for EventRow {
    fn from(r: Row) -> Self {
        EventRow {
            position: EventPosition {
                tx: r.tx,
                seq: r.seq,
            },
            event_type: r.event_type,
            at: r.at,
            job_id: r.job_id,
            run_id: r.run_id,
            instance: r.instance,
            attempt: r.attempt,
            from_state: r.from_state,
            reason: r.reason,
        }
    }
}

impl PgStore {
    /// One page of events in cursor order, of transactions below the
    /// horizon only (every older transaction has ended).
    pub async fn events_page(&self, q: &EventQuery) -> StoreResult<Vec<EventRow>> {
        let mut b = QueryBuilder::<Postgres>::new(
            "SELECT tx, seq, type, at, job_id, run_id, instance, attempt, from_state, reason \
             FROM events WHERE tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
        );
        if let Some(after) = q.after {
            b.push(if q.descending {
                " AND (tx, seq) < ("
            } else {
                " AND (tx, seq) > ("
            });
            b.push_bind(after.tx)
                .push(", ")
                .push_bind(after.seq)
                .push(")");
        }
        if !q.types.is_empty() {
            b.push(" AND (type = ANY(")
                .push_bind(q.types.exact.clone())
                .push(") OR split_part(type, '.', 1) = ANY(")
                .push_bind(q.types.groups.clone())
                .push("))");
        }
        if let Some(job_id) = &q.job_id {
            b.push(" AND job_id = ").push_bind(job_id.clone());
        }
        if let Some(run_id) = q.run_id {
            b.push(" AND run_id = ").push_bind(run_id);
        }
        b.push(if q.descending {
            " ORDER BY tx DESC, seq DESC LIMIT "
        } else {
            " ORDER BY tx, seq LIMIT "
        });
        b.push_bind(q.limit);
        let rows: Vec<Row> = b.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(EventRow::from).collect())
    }

    /// Deletes up to `limit` events older than `cutoff`.
    pub async fn events_prune_before(&self, cutoff: DateTime<Utc>, limit: i64) -> StoreResult<u64> {
        let deleted = sqlx::query(
            "DELETE FROM events WHERE (tx, seq) IN \
               (SELECT tx, seq FROM events WHERE at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    pub async fn event_ticket_insert(
        &self,
        hash: &str,
        token_id: Option<Uuid>,
        query: &str,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO event_tickets (hash, token_id, query, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(hash)
        .bind(token_id)
        .bind(query)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn event_ticket_get(&self, hash: &str) -> StoreResult<Option<TicketRow>> {
        let row: Option<(Option<Uuid>, String, DateTime<Utc>, bool)> = sqlx::query_as(
            "SELECT t.token_id, t.query, t.expires_at, \
               (t.token_id IS NOT NULL AND (a.id IS NULL OR a.revoked_at IS NOT NULL \
                 OR a.expires_at <= now())) IS TRUE \
             FROM event_tickets t LEFT JOIN api_tokens a ON a.id = t.token_id WHERE t.hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(token_id, query, expires_at, token_revoked)| TicketRow {
            token_id,
            query,
            expires_at,
            token_revoked,
        }))
    }

    pub async fn event_tickets_prune(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let deleted = sqlx::query("DELETE FROM event_tickets WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected())
    }

    /// The runs among `ids` that still exist, in no order.
    pub async fn run_get_many(&self, ids: &[Uuid]) -> StoreResult<Vec<RunRow>> {
        Ok(sqlx::query_as::<_, RunRow>(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The jobs among `ids` that still exist, in no order.
    pub async fn job_get_many(&self, ids: &[String]) -> StoreResult<Vec<JobRow>> {
        Ok(
            sqlx::query_as::<_, JobRow>(&format!("{SELECT_JOB} WHERE j.job_id = ANY($1)"))
                .bind(ids)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// A listener on [`EVENTS_CHANNEL`].
    pub async fn listen_events(&self) -> StoreResult<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        Ok(listener)
    }
}
