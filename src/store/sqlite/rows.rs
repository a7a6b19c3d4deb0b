//! Values as the embedded store keeps them: timestamps as INTEGER
//! microseconds since the epoch, JSON and UUIDs as TEXT, booleans as 0/1;
//! and rows decoded into the store's types.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use super::{JobRow, RunRow};
use crate::domain::rules::HistoryEntry;
use crate::domain::RunState;

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub(crate) fn opt_micros(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(micros)
}

fn decode_err(column: &str, e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: e.to_string().into(),
    }
}

pub(crate) fn time(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    Ok(from_micros(row.try_get::<i64, _>(column)?))
}

pub(crate) fn opt_time(
    row: &SqliteRow,
    column: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    Ok(row.try_get::<Option<i64>, _>(column)?.map(from_micros))
}

pub(crate) fn json(row: &SqliteRow, column: &str) -> Result<Value, sqlx::Error> {
    json_as(row, column)
}

/// A JSON text column read as `T`.
pub(crate) fn json_as<T: serde::de::DeserializeOwned>(
    row: &SqliteRow,
    column: &str,
) -> Result<T, sqlx::Error> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| decode_err(column, e))
}

pub(crate) fn opt_json(row: &SqliteRow, column: &str) -> Result<Option<Value>, sqlx::Error> {
    match row.try_get::<Option<String>, _>(column)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| decode_err(column, e)),
    }
}

pub(crate) fn uuid(row: &SqliteRow, column: &str) -> Result<Uuid, sqlx::Error> {
    let text: String = row.try_get(column)?;
    text.parse().map_err(|e| decode_err(column, e))
}

pub(crate) fn opt_uuid(row: &SqliteRow, column: &str) -> Result<Option<Uuid>, sqlx::Error> {
    match row.try_get::<Option<String>, _>(column)? {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|e| decode_err(column, e)),
    }
}

/// JSON text for a bind (`null` for a JSON null).
pub(crate) fn json_text(value: &Value) -> String {
    value.to_string()
}

/// JSON text of an optional value; a JSON null is stored as SQL NULL, as
/// PostgreSQL's `NULLIF(..., 'null')` does.
pub(crate) fn opt_json_text(value: Option<&Value>) -> Option<String> {
    value.filter(|v| !v.is_null()).map(Value::to_string)
}

/// One history step as the JSON text to append (`json(?)`).
pub(crate) fn history_text(
    at: DateTime<Utc>,
    from: Option<RunState>,
    to: RunState,
    instance: Option<&str>,
    reason: &str,
) -> String {
    let entry = HistoryEntry {
        at,
        from,
        to,
        instance,
        reason,
    };
    serde_json::to_string(&entry).unwrap_or_else(|_| "{}".to_string())
}

/// An SQL expression: the history array in `column` with one more entry,
/// `entry` (an expression giving the entry's JSON text, or several joined
/// by `','`), appended by text. Every history is a compact JSON array that
/// this store wrote, so no JSON parse is needed: with `json_insert` the one
/// writer parsed and re-printed a run's whole history at every step.
pub(crate) fn history_append(column: &str, entry: &str) -> String {
    format!(
        "substr({column}, 1, length({column}) - 1) || iif(length({column}) > 2, ',', '') || {entry} || ']'"
    )
}

/// Rows per multi-row `VALUES` statement at most (SQLite allows 32,766
/// parameters in one). Binding values beats shipping rows as one JSON
/// text, which the writer parsed again for every column.
pub(crate) const ROWS_PER_STATEMENT: usize = 256;

/// `rows` in statement-sized chunks: [`ROWS_PER_STATEMENT`] while that
/// many are left, then the powers of two of the rest (200 = 128 + 64 + 8).
/// So a statement comes in at most nine shapes, all kept prepared; a shape
/// per batch size would have the writer compile a new statement of
/// thousands of parameters for nearly every batch.
pub(crate) fn statement_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let size = if rows.len() >= ROWS_PER_STATEMENT {
            ROWS_PER_STATEMENT
        } else {
            1 << rows.len().ilog2()
        };
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// The columns of a run, in the order [`run_from_row`] reads them.
pub(crate) const RUN_COLUMNS: &str = "run_id, job_id, handler, kwargs, trigger, scheduled_for, run_after, \
    created_at, started_at, finished_at, state, attempt, max_retries, retry_backoff_ms, timeout_ms, \
    misfire_grace_ms, lock_key, instance, lease_expires_at, cancel_requested, result, error, traceback, \
    progress, progress_updated_at, history";

pub(crate) fn run_from_row(row: &SqliteRow) -> Result<RunRow, sqlx::Error> {
    Ok(RunRow {
        run_id: uuid(row, "run_id")?,
        job_id: row.try_get("job_id")?,
        handler: row.try_get("handler")?,
        kwargs: json(row, "kwargs")?,
        trigger: row.try_get("trigger")?,
        scheduled_for: time(row, "scheduled_for")?,
        run_after: time(row, "run_after")?,
        created_at: time(row, "created_at")?,
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
        state: row.try_get("state")?,
        attempt: row.try_get("attempt")?,
        max_retries: row.try_get("max_retries")?,
        retry_backoff_ms: row.try_get("retry_backoff_ms")?,
        timeout_ms: row.try_get("timeout_ms")?,
        misfire_grace_ms: row.try_get("misfire_grace_ms")?,
        lock_key: row.try_get("lock_key")?,
        instance: row.try_get("instance")?,
        lease_expires_at: opt_time(row, "lease_expires_at")?,
        cancel_requested: row.try_get("cancel_requested")?,
        result: opt_json(row, "result")?,
        error: row.try_get("error")?,
        traceback: row.try_get("traceback")?,
        progress: opt_json(row, "progress")?,
        progress_updated_at: opt_time(row, "progress_updated_at")?,
        history: json(row, "history")?,
    })
}

/// A job with its newest run and run counts (see [`job_from_row`]).
pub(crate) const SELECT_JOB: &str = "SELECT j.job_id, j.handler, j.kwargs, j.schedule_kind, j.interval_ms, j.cron, \
     j.timezone, j.start_at, j.misfire_grace_ms, j.\"coalesce\", j.max_instances, j.lock_key, j.timeout_ms, \
     j.max_retries, j.retry_backoff_ms, j.state, j.next_run_at, j.description, j.tags, j.source, \
     j.failed_run_id, j.keep_runs, j.notify, j.alerts, j.created_at, j.updated_at, j.version, \
     COALESCE((SELECT json_extract(a.state, '$.open') FROM job_alerts a WHERE a.job_id = j.job_id), '[]') AS alerts_open, \
     lr.run_id AS last_run_id, lr.state AS last_run_state, lr.scheduled_for AS last_run_scheduled_for, \
     lr.started_at AS last_run_started_at, lr.finished_at AS last_run_finished_at, \
     lr.progress AS last_run_progress, lr.progress_updated_at AS last_run_progress_updated_at, \
     (SELECT json_group_object(c.state, c.n) FROM \
        (SELECT rc.state, sum(rc.n) AS n FROM run_counts rc WHERE rc.job_id = j.job_id \
         GROUP BY rc.state HAVING sum(rc.n) <> 0 \
         UNION ALL SELECT a.state, count(*) FROM runs a INDEXED BY runs_active_job_idx \
         WHERE a.job_id = j.job_id AND a.state IN ('queued', 'running', 'waiting') \
         GROUP BY a.state) c) AS run_counts, \
     EXISTS (SELECT 1 FROM runs s WHERE s.job_id = j.job_id AND s.trigger <> 'manual') AS has_fired \
     FROM jobs j LEFT JOIN runs lr ON lr.run_id = (SELECT r.run_id FROM runs r WHERE r.job_id = j.job_id \
        ORDER BY r.created_at DESC, r.scheduled_for DESC, r.run_id DESC LIMIT 1)";

pub(crate) fn job_from_row(row: &SqliteRow) -> Result<JobRow, sqlx::Error> {
    let texts = |column: &str| -> Result<Vec<String>, sqlx::Error> {
        let list: Value = json(row, column)?;
        Ok(list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    };
    let tags = texts("tags")?;
    // No runs: NULL, as PostgreSQL's jsonb_object_agg gives.
    let run_counts =
        opt_json(row, "run_counts")?.filter(|c| c.as_object().is_some_and(|o| !o.is_empty()));
    Ok(JobRow {
        job_id: row.try_get("job_id")?,
        handler: row.try_get("handler")?,
        kwargs: json(row, "kwargs")?,
        schedule_kind: row.try_get("schedule_kind")?,
        interval_ms: row.try_get("interval_ms")?,
        cron: row.try_get("cron")?,
        timezone: row.try_get("timezone")?,
        start_at: time(row, "start_at")?,
        misfire_grace_ms: row.try_get("misfire_grace_ms")?,
        coalesce: row.try_get("coalesce")?,
        max_instances: row.try_get("max_instances")?,
        lock_key: row.try_get("lock_key")?,
        timeout_ms: row.try_get("timeout_ms")?,
        max_retries: row.try_get("max_retries")?,
        retry_backoff_ms: row.try_get("retry_backoff_ms")?,
        state: row.try_get("state")?,
        next_run_at: opt_time(row, "next_run_at")?,
        description: row.try_get("description")?,
        tags,
        source: row.try_get("source")?,
        failed_run_id: opt_uuid(row, "failed_run_id")?,
        keep_runs: row.try_get("keep_runs")?,
        notify: texts("notify")?,
        alerts: json_as(row, "alerts")?,
        alerts_open: texts("alerts_open")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        last_run_id: opt_uuid(row, "last_run_id")?,
        last_run_state: row.try_get("last_run_state")?,
        last_run_scheduled_for: opt_time(row, "last_run_scheduled_for")?,
        last_run_started_at: opt_time(row, "last_run_started_at")?,
        last_run_finished_at: opt_time(row, "last_run_finished_at")?,
        last_run_progress: opt_json(row, "last_run_progress")?,
        last_run_progress_updated_at: opt_time(row, "last_run_progress_updated_at")?,
        run_counts,
        has_fired: row.try_get("has_fired")?,
        row_version: row.try_get("version")?,
    })
}

#[cfg(test)]
mod tests {
    use super::{history_append, statement_chunks, ROWS_PER_STATEMENT};
    use crate::store::sqlite::execution::APPEND;

    #[test]
    fn chunks_are_full_statements_then_powers_of_two() {
        let sizes = |n: usize| {
            let rows = vec![0; n];
            statement_chunks(&rows)
                .map(<[i32]>::len)
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), vec![1]);
        assert_eq!(sizes(200), vec![128, 64, 8]);
        assert_eq!(sizes(ROWS_PER_STATEMENT), vec![ROWS_PER_STATEMENT]);
        assert_eq!(
            sizes(2 * ROWS_PER_STATEMENT + 3),
            vec![ROWS_PER_STATEMENT, ROWS_PER_STATEMENT, 2, 1]
        );
    }

    #[test]
    fn the_append_constant_is_history_append_of_one_bound_entry() {
        assert_eq!(APPEND, history_append("history", "?"));
    }
}
