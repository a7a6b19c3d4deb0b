//! The events outbox on PostgreSQL: reading it, pruning it, stream
//! tickets, and the listener that wakes readers when a transaction with
//! events commits.
//!
//! **Why a cursor never skips or repeats an event.** Each row of events is
//! stamped with `tx`, the id of the transaction writing it, and `seq`,
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

/// One stored event, as a row's `entries` hold it: the short keys of
/// [`job_entries`] and the service trigger, or a run's history entry
/// (`instance`, `from`, `reason`) with the ids added by [`run_entries`].
#[derive(Deserialize)]
struct Entry {
    t: String,
    at: DateTime<Utc>,
    j: Option<String>,
    r: Option<Uuid>,
    #[serde(alias = "instance")]
    i: Option<String>,
    a: Option<i32>,
    #[serde(alias = "from")]
    f: Option<String>,
    #[serde(alias = "reason")]
    w: Option<String>,
    /// An event's own data (batch events).
    d: Option<serde_json::Value>,
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
                let mut numbered: Vec<_> = row.entries.0.into_iter().enumerate().collect();
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
                        data: e.d,
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
    /// On a connection of its own, outside the pool: the process's one
    /// events listener (every reader's wake-ups) lives as long as the
    /// process, and must not keep a pooled connection from the requests
    /// and loops that need one.
    pub async fn listen_events(&self) -> StoreResult<PgListener> {
        let options = self.pool.connect_options().as_ref().clone();
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&own).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        Ok(listener)
    }
}

/// How many of a changed run's history entries its statement appended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Appended {
    /// The last `n` (an update).
    Last(u8),
    /// All of them (an insert).
    All,
}

/// The extra `RETURNING` columns of a run write that [`run_events_cte`]
/// reads, of the written table `alias`.
pub(crate) fn event_columns(alias: &str) -> String {
    format!(
        "{alias}.run_id AS ev_run, {alias}.job_id AS ev_job, {alias}.attempt AS ev_attempt, \
         {alias}.history AS ev_history"
    )
}

/// SQL: a CTE `name` writing the events that `parts` select as one row of
/// `events` (none when they select nothing, or events are off). Each part
/// is a `SELECT` of `part` (its place among the parts), `n` (the order
/// within it), `job` (the job id) and `entry` (the event's jsonb): see
/// [`run_entries`] and [`job_entries`]. One statement's events come in the
/// order of its parts.
///
/// Each write states its events itself, in its own statement, rather than
/// a trigger deriving them from the transition tables: those triggers cost
/// the drain 40 % (docs/benchmarks.md), this costs a few microseconds a
/// row.
pub(crate) fn events_cte(name: &str, parts: &[String]) -> String {
    format!(
        "{name} AS (INSERT INTO events (keys, entries) \
           SELECT array_agg(DISTINCT 'j:' || e.job), jsonb_agg(e.entry ORDER BY e.part, e.n) \
           FROM ({parts}) e WHERE events_enabled() HAVING count(*) > 0)",
        parts = parts.join(" UNION ALL "),
    )
}

/// SQL: a CTE `run_events` writing the events of [`run_entries`].
pub(crate) fn run_events_cte(source: &str, appended: Appended, retried: bool) -> String {
    events_cte("run_events", &[run_entries(0, source, appended, retried)])
}

/// SQL: an [`events_cte`] part (number `part`) with the events of the
/// history entries that the run write `source` (a CTE returning
/// [`event_columns`]) appended. A run going back to `queued` is retried
/// when `retried` (a retry, a rescue), else queued again (a hand-back, an
/// operator's requeue). A step within one state (a callback run accepted)
/// is no event.
pub(crate) fn run_entries(part: u8, source: &str, appended: Appended, retried: bool) -> String {
    let first = match appended {
        Appended::Last(n) => format!("jsonb_array_length(c.ev_history) - {n}"),
        Appended::All => "0".to_string(),
    };
    let event_type = if retried {
        "CASE WHEN x.e ->> 'to' = 'queued' THEN 'run.retried' ELSE 'run.' || (x.e ->> 'to') END"
    } else {
        "'run.' || (x.e ->> 'to')"
    };
    format!(
        "SELECT {part} AS part, x.i AS n, c.ev_job AS job, \
           jsonb_build_object('t', {event_type}, 'j', c.ev_job, 'r', c.ev_run, \
             'a', c.ev_attempt) || x.e AS entry \
         FROM {source} c, LATERAL (SELECT g.i, c.ev_history -> g.i AS e \
           FROM generate_series({first}, jsonb_array_length(c.ev_history) - 1) AS g(i)) x \
         WHERE (x.e ->> 'from') IS DISTINCT FROM (x.e ->> 'to')"
    )
}

/// The type of the event of a job written from state `old` to `new` (SQL
/// expressions): a change of state is a pause, a resume or a completion;
/// any other write an update.
pub(crate) fn job_change_type(old: &str, new: &str) -> String {
    format!(
        "CASE WHEN {new} = {old} THEN 'job.updated' WHEN {new} = 'paused' THEN 'job.paused' \
           WHEN {new} = 'completed' THEN 'job.completed' ELSE 'job.resumed' END"
    )
}

/// SQL: an [`events_cte`] part (number `part`) with one event per row of
/// `source` (a CTE returning `job_id`) where `when` holds: of type
/// `event_type`, at `at`, from state `from` (SQL expressions over `c`,
/// the row).
pub(crate) fn job_entries(
    part: u8,
    source: &str,
    event_type: &str,
    at: &str,
    from: &str,
    when: &str,
) -> String {
    format!(
        "SELECT {part} AS part, 0 AS n, c.job_id AS job, \
           jsonb_strip_nulls(jsonb_build_object('t', {event_type}, 'at', {at}, 'j', c.job_id, \
             'f', {from})) AS entry \
         FROM {source} c WHERE {when}"
    )
}

/// `statement` (an `INSERT` or `UPDATE` of `runs`, written as `alias`,
/// without its `RETURNING`) returning `returning` (bare or `alias.`
/// qualified columns), with its events written by the same statement
/// ([`run_events_cte`]). Executed, it reports the rows it changed.
pub(crate) fn with_run_events(
    statement: &str,
    alias: &str,
    returning: &str,
    appended: Appended,
    retried: bool,
) -> String {
    let names: Vec<&str> = returning
        .split(',')
        .map(|c| {
            let c = c.trim();
            c.strip_prefix(alias)
                .and_then(|c| c.strip_prefix('.'))
                .unwrap_or(c)
        })
        .collect();
    format!(
        "WITH changed AS ({statement} RETURNING {returning}, {columns}), {events} \
         SELECT {names} FROM changed",
        columns = event_columns(alias),
        events = run_events_cte("changed", appended, retried),
        names = names.join(", "),
    )
}

/// SQL: a CTE `progress_events` writing a `run.progress` event for each row
/// of `source` (returning `run_id`, `attempt`, `ev_job`, `ev_instance`,
/// `ev_at`) where `when` holds.
pub(crate) fn progress_events_cte(source: &str, when: &str) -> String {
    format!(
        "progress_events AS (INSERT INTO events (keys, entries) \
           SELECT array_agg(DISTINCT 'j:' || c.ev_job), \
             jsonb_agg(jsonb_build_object('t', 'run.progress', 'at', c.ev_at, 'j', c.ev_job, \
               'r', c.run_id, 'i', c.ev_instance, 'a', c.attempt)) \
           FROM {source} c WHERE events_enabled() AND {when} HAVING count(*) > 0)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_write_returns_its_own_columns_by_name() {
        let sql = with_run_events(
            "UPDATE runs r SET state = 'queued'",
            "r",
            "r.run_id, r.attempt, cancel_requested",
            Appended::Last(1),
            false,
        );
        assert!(sql.starts_with("WITH changed AS (UPDATE runs r SET state = 'queued' RETURNING r.run_id, r.attempt, cancel_requested, r.run_id AS ev_run"), "{sql}");
        assert!(
            sql.ends_with("SELECT run_id, attempt, cancel_requested FROM changed"),
            "{sql}"
        );
        assert!(
            sql.contains("jsonb_array_length(c.ev_history) - 1"),
            "{sql}"
        );
    }
}
