//! The events outbox on the embedded store (migrations/sqlite/0007): one
//! writer, so `seq` is commit order and the cursor needs no horizon. The
//! writer's commit hook wakes readers in this process (see `connect.rs`).

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use tokio::sync::watch;
use uuid::Uuid;

use super::rows::{self, from_micros, job_from_row, micros, run_from_row, RUN_COLUMNS, SELECT_JOB};
use super::{JobRow, RunRow, SqliteStore, StoreResult};
use crate::store::events::{EventPage, EventPosition, EventQuery, EventRow, TicketRow};

fn event_from_row(row: &SqliteRow) -> Result<EventRow, sqlx::Error> {
    Ok(EventRow {
        position: EventPosition {
            tx: 0,
            seq: row.try_get("seq")?,
            ord: 0,
        },
        event_type: row.try_get("type")?,
        at: from_micros(row.try_get("at")?),
        job_id: row.try_get("job_id")?,
        run_id: rows::opt_uuid(row, "run_id")?,
        instance: row.try_get("instance")?,
        attempt: row.try_get("attempt")?,
        from_state: row.try_get("from_state")?,
        reason: row.try_get("reason")?,
        data: rows::opt_json(row, "data")?,
    })
}

/// A JSON array of texts, for `IN (SELECT value FROM json_each(?))`.
fn json_list(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

impl SqliteStore {
    /// One page of events in `seq` order, filtered in SQL (a row per event).
    pub async fn events_page(&self, q: &EventQuery) -> StoreResult<EventPage> {
        let mut b = QueryBuilder::<Sqlite>::new(
            "SELECT seq, type, at, job_id, run_id, instance, attempt, from_state, reason, data \
             FROM events WHERE 1 = 1",
        );
        if let Some(after) = q.after {
            b.push(if q.descending {
                " AND seq < "
            } else {
                " AND seq > "
            });
            b.push_bind(after.seq);
        }
        if !q.types.is_empty() {
            b.push(" AND (type IN (SELECT value FROM json_each(")
                .push_bind(json_list(&q.types.exact))
                .push(
                    ")) OR substr(type, 1, instr(type, '.') - 1) IN (SELECT value FROM json_each(",
                )
                .push_bind(json_list(&q.types.groups))
                .push(")))");
        }
        if let Some(job_id) = &q.job_id {
            b.push(" AND job_id = ").push_bind(job_id.clone());
        }
        if let Some(run_id) = q.run_id {
            b.push(" AND run_id = ").push_bind(run_id.to_string());
        }
        b.push(if q.descending {
            " ORDER BY seq DESC LIMIT "
        } else {
            " ORDER BY seq LIMIT "
        });
        b.push_bind(q.limit);
        let rows = b.build().fetch_all(&self.readers).await?;
        let events: Vec<EventRow> = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
        Ok(EventPage {
            scanned_to: events.last().map(|e| e.position),
            events,
        })
    }

    pub async fn events_prune_before(&self, cutoff: DateTime<Utc>, limit: i64) -> StoreResult<u64> {
        let deleted = sqlx::query(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE at < ?1 LIMIT ?2)",
        )
        .bind(micros(cutoff))
        .bind(limit)
        .execute(&self.writer)
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
            "INSERT INTO event_tickets (hash, token_id, query, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(hash)
        .bind(token_id.map(|id| id.to_string()))
        .bind(query)
        .bind(micros(expires_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn event_ticket_get(&self, hash: &str) -> StoreResult<Option<TicketRow>> {
        let row = sqlx::query(
            "SELECT t.token_id, t.query, t.expires_at, \
               (t.token_id IS NOT NULL AND (a.id IS NULL OR a.revoked_at IS NOT NULL \
                 OR (a.expires_at IS NOT NULL AND a.expires_at <= ?2))) AS token_revoked \
             FROM event_tickets t LEFT JOIN api_tokens a ON a.id = t.token_id WHERE t.hash = ?1",
        )
        .bind(hash)
        .bind(micros(super::now()))
        .fetch_optional(&self.readers)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TicketRow {
            token_id: rows::opt_uuid(&row, "token_id")?,
            query: row.try_get("query")?,
            expires_at: from_micros(row.try_get("expires_at")?),
            token_revoked: row.try_get::<i64, _>("token_revoked")? != 0,
        }))
    }

    pub async fn event_tickets_prune(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let deleted = sqlx::query("DELETE FROM event_tickets WHERE expires_at < ?1")
            .bind(micros(now))
            .execute(&self.writer)
            .await?;
        Ok(deleted.rows_affected())
    }

    pub async fn run_get_many(&self, ids: &[Uuid]) -> StoreResult<Vec<RunRow>> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE run_id IN (SELECT value FROM json_each(?1))"
        ))
        .bind(json_list(&ids))
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.iter().map(run_from_row).collect::<Result<_, _>>()?)
    }

    pub async fn job_get_many(&self, ids: &[String]) -> StoreResult<Vec<JobRow>> {
        let rows = sqlx::query(&format!(
            "{SELECT_JOB} WHERE j.job_id IN (SELECT value FROM json_each(?1))"
        ))
        .bind(json_list(ids))
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.iter().map(job_from_row).collect::<Result<_, _>>()?)
    }

    /// Changes each time the writer commits a transaction that wrote events.
    pub fn event_commits(&self) -> watch::Receiver<u64> {
        self.event_commits.subscribe()
    }
}
