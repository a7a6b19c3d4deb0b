//! The events outbox on PostgreSQL: reading it, pruning it, stream
//! tickets, and the listener that wakes readers when a transaction with
//! events commits.
//!
//! **Why a cursor never skips or repeats an event.** The triggers stamp
//! each event with `tx`, the id of the transaction writing it, and `seq`,
//! a sequence value; readers order by `(tx, seq)`. Neither is known to be
//! in commit order: a transaction that got its id first may commit last.
//! So a page shows only events with `tx` below the horizon
//! `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction id
//! still running. Every transaction below it has ended (committed, so its
//! events are all there, or rolled back, so they never will be), and every
//! transaction still running or yet to start has an id at or above it. The
//! events below the horizon are therefore final, and whatever commits later
//! sorts after them: a reader at cursor `(tx, seq)` can miss nothing by
//! going on from there. The price is latency, not loss: a transaction that
//! has written and stays open (anywhere in the cluster) holds back the
//! events of those that began after it until it ends.
//!
//! A sequence alone, or a timestamp, would not do: both are taken before
//! commit, so a reader could see 7 and 9 committed, move its cursor to 9,
//! and never see 8 commit. Serialising the writers (one lock per event)
//! would do, at the cost of every writer waiting for every other.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::postgres::PgListener;
use sqlx::{FromRow, Postgres, QueryBuilder};
use uuid::Uuid;

use super::jobs::SELECT_JOB;
use super::runs::RUN_COLUMNS;
use super::{JobRow, PgStore, RunRow, StoreResult};
use crate::store::events::{EventPage, EventPosition, EventQuery, EventRow, TicketRow};

/// The channel each transaction that writes events notifies, once.
pub const EVENTS_CHANNEL: &str = "jobsd_events";

/// One stored event, as the triggers write it into a row's `entries`.
#[derive(Deserialize)]
struct Entry {
    t: String,
    at: DateTime<Utc>,
    j: Option<String>,
    r: Option<Uuid>,
    i: Option<String>,
    a: Option<i32>,
    f: Option<String>,
    w: Option<String>,
}

#[derive(FromRow)]
struct Row {
    tx: i64,
    seq: i64,
    entries: sqlx::types::Json<Vec<Entry>>,
}

/// Rows read per round trip.
const ROWS_PER_READ: i64 = 64;
/// Events one page looks at, at most, before it returns what it found
/// (fewer than its limit, with the position it got to).
const MAX_SCANNED: usize = 100_000;

impl PgStore {
    /// One page of events in cursor order, of transactions below the
    /// horizon only. Rows are read in `(tx, seq)` order, a few at a time,
    /// and their events filtered here; a job's (or a run's job's) rows are
    /// found through `keys`.
    pub async fn events_page(&self, q: &EventQuery) -> StoreResult<EventPage> {
        let key = match (&q.job_id, q.run_id) {
            (Some(job_id), _) => Some(format!("j:{job_id}")),
            (None, Some(run_id)) => {
                let job: Option<String> =
                    sqlx::query_scalar("SELECT job_id FROM runs WHERE run_id = $1")
                        .bind(run_id)
                        .fetch_optional(&self.pool)
                        .await?;
                job.map(|j| format!("j:{j}"))
            }
            (None, None) => None,
        };
        let mut page = EventPage::default();
        // The row to read from: the cursor's own (its later events), then
        // strictly after the last row read.
        let mut from = q.after.map(|a| ((a.tx, a.seq), true));
        let mut scanned = 0usize;
        loop {
            let mut b = QueryBuilder::<Postgres>::new(
                "SELECT tx, seq, entries FROM events \
                 WHERE tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            );
            if let Some(((tx, seq), inclusive)) = from {
                b.push(match (q.descending, inclusive) {
                    (false, true) => " AND (tx, seq) >= (",
                    (false, false) => " AND (tx, seq) > (",
                    (true, true) => " AND (tx, seq) <= (",
                    (true, false) => " AND (tx, seq) < (",
                });
                b.push_bind(tx).push(", ").push_bind(seq).push(")");
            }
            if let Some(key) = &key {
                b.push(" AND keys @> ARRAY[")
                    .push_bind(key.clone())
                    .push("]");
            }
            b.push(if q.descending {
                " ORDER BY tx DESC, seq DESC LIMIT "
            } else {
                " ORDER BY tx, seq LIMIT "
            });
            b.push_bind(ROWS_PER_READ);
            let rows: Vec<Row> = b.build_query_as().fetch_all(&self.pool).await?;
            let full = rows.len() as i64 == ROWS_PER_READ;
            for row in rows {
                from = Some(((row.tx, row.seq), false));
                let entries = row.entries.0;
                let numbered = entries.into_iter().enumerate();
                let mut numbered: Vec<_> = numbered.collect();
                if q.descending {
                    numbered.reverse();
                }
                for (i, e) in numbered {
                    let position = EventPosition {
                        tx: row.tx,
                        seq: row.seq,
                        ord: i as i64 + 1,
                    };
                    if !q.is_beyond_cursor(position) {
                        continue;
                    }
                    scanned += 1;
                    page.scanned_to = Some(position);
                    let event = EventRow {
                        position,
                        event_type: e.t,
                        at: e.at,
                        job_id: e.j,
                        run_id: e.r,
                        instance: e.i,
                        attempt: e.a,
                        from_state: e.f,
                        reason: e.w,
                    };
                    if q.matches(&event) {
                        page.events.push(event);
                        if page.events.len() as i64 >= q.limit {
                            return Ok(page);
                        }
                    }
                }
            }
            if !full || scanned >= MAX_SCANNED {
                return Ok(page);
            }
        }
    }

    /// Deletes up to `limit` rows of events written before `cutoff`.
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
        Ok(
            row.map(|(token_id, query, expires_at, token_revoked)| TicketRow {
                token_id,
                query,
                expires_at,
                token_revoked,
            }),
        )
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
