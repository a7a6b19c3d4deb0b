//! Batches on the embedded store (migrations/sqlite/0009): the contract of
//! src/store/postgres/batches.rs. One writer, so every decision (a fair
//! claim within `max_parallel`, an append's check, a completion) is made
//! alone inside one `BEGIN IMMEDIATE` transaction, and the counts need one
//! counter row per batch (slot 0). Foreign keys are off: deleting a batch
//! deletes its rows, counters and file names itself.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::rows::{self, micros, opt_time, statement_chunks};
use super::{now, SqliteStore, StoreError, StoreResult};
use crate::batches::rules::{self, BatchStatus, Claimable, Counts, RowState};
use crate::store::batches::{
    deltas_by_batch, written_files, BatchCountsCheck, BatchFilter, BatchRow, ClaimedRow, NewBatch,
    NewRows, RowAck, RowClaim, RowClaimSlots, RowEnd, RowFilter, RowRecord,
};
use crate::store::notify::Notice;

const CLAIM_CANDIDATES: i64 = 64;

const SELECT_BATCH: &str = "SELECT b.id, b.handler, b.context, b.max_retries, b.retry_backoff_ms, \
     b.timeout_ms, b.max_parallel, b.created_at, b.started_at, b.waitoff_at, b.aborted_at, \
     b.finished_at, b.outcome, \
     coalesce(c.total, 0) AS total, coalesce(c.queued, 0) AS queued, \
     coalesce(c.inprog, 0) AS inprog, coalesce(c.success, 0) AS success, \
     coalesce(c.failed, 0) AS failed, coalesce(c.aborted, 0) AS aborted, \
     (SELECT json_group_array(name) FROM batch_files f WHERE f.batch_id = b.id) AS output_files \
     FROM batches b LEFT JOIN batch_counts c ON c.batch_id = b.id AND c.slot = 0";

const ROW_COLUMNS: &str = "batch_id, idx, input, state, attempt, instance, result, error, \
     started_at, finished_at";

type Tx = Transaction<'static, Sqlite>;

fn decode_err(column: &str, text: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.into(),
        source: format!("unknown value {text:?}").into(),
    }
}

fn counts_from_row(row: &SqliteRow) -> Result<Counts, sqlx::Error> {
    Ok(Counts {
        total: row.try_get("total")?,
        queued: row.try_get("queued")?,
        inprog: row.try_get("inprog")?,
        success: row.try_get("success")?,
        failed: row.try_get("failed")?,
        aborted: row.try_get("aborted")?,
    })
}

fn batch_from_row(row: &SqliteRow) -> Result<BatchRow, sqlx::Error> {
    let outcome: Option<String> = row.try_get("outcome")?;
    let outcome = match outcome {
        Some(text) => Some(BatchStatus::parse(&text).ok_or_else(|| decode_err("outcome", &text))?),
        None => None,
    };
    Ok(BatchRow {
        id: rows::uuid(row, "id")?,
        handler: row.try_get("handler")?,
        context: rows::json(row, "context")?,
        max_retries: row.try_get("max_retries")?,
        retry_backoff_ms: row.try_get("retry_backoff_ms")?,
        timeout_ms: row.try_get("timeout_ms")?,
        max_parallel: row.try_get("max_parallel")?,
        counts: counts_from_row(row)?,
        created_at: rows::from_micros(row.try_get("created_at")?),
        started_at: opt_time(row, "started_at")?,
        waitoff_at: opt_time(row, "waitoff_at")?,
        aborted_at: opt_time(row, "aborted_at")?,
        finished_at: opt_time(row, "finished_at")?,
        outcome,
        output_files: {
            let mut names: Vec<String> = rows::json_as(row, "output_files")?;
            names.sort();
            names
        },
    })
}

fn row_state(row: &SqliteRow) -> Result<RowState, sqlx::Error> {
    let text: String = row.try_get("state")?;
    RowState::parse(&text).ok_or_else(|| decode_err("state", &text))
}

fn record_from_row(row: &SqliteRow) -> Result<RowRecord, sqlx::Error> {
    Ok(RowRecord {
        batch_id: rows::uuid(row, "batch_id")?,
        idx: row.try_get("idx")?,
        input: rows::json(row, "input")?,
        state: row_state(row)?,
        attempt: row.try_get("attempt")?,
        instance: row.try_get("instance")?,
        result: rows::opt_json(row, "result")?,
        error: row.try_get("error")?,
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
    })
}

async fn apply_counts(tx: &mut Tx, deltas: &[(Uuid, Counts)]) -> StoreResult<()> {
    for (id, d) in deltas {
        sqlx::query(
            "INSERT INTO batch_counts (batch_id, slot, total, queued, inprog, success, failed, aborted) \
             VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (batch_id, slot) DO UPDATE SET \
               total = total + excluded.total, queued = queued + excluded.queued, \
               inprog = inprog + excluded.inprog, success = success + excluded.success, \
               failed = failed + excluded.failed, aborted = aborted + excluded.aborted",
        )
        .bind(id.to_string())
        .bind(d.total)
        .bind(d.queued)
        .bind(d.inprog)
        .bind(d.success)
        .bind(d.failed)
        .bind(d.aborted)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn counts_of(tx: &mut Tx, id: Uuid) -> StoreResult<Counts> {
    let row = sqlx::query(
        "SELECT total, queued, inprog, success, failed, aborted FROM batch_counts \
         WHERE batch_id = ?1 AND slot = 0",
    )
    .bind(id.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match row {
        Some(r) => counts_from_row(&r)?,
        None => Counts::default(),
    })
}

async fn write_event(tx: &mut Tx, event_type: &str, data: &Value) -> StoreResult<()> {
    sqlx::query("INSERT INTO events (type, at, data) VALUES (?1, ?2, ?3)")
        .bind(event_type)
        .bind(micros(now()))
        .bind(data.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_rows(
    tx: &mut Tx,
    table: &str,
    key: &str,
    first: i64,
    rows: &[Value],
    at: Option<i64>,
) -> StoreResult<()> {
    let mut n = first;
    for chunk in statement_chunks(rows) {
        let mut b = QueryBuilder::<Sqlite>::new(match at {
            Some(_) => format!("INSERT INTO {table} (batch_id, idx, input, available_at) "),
            None => format!("INSERT INTO {table} (upload_id, n, input) "),
        });
        b.push_values(chunk, |mut v, row| {
            v.push_bind(key.to_string())
                .push_bind(n)
                .push_bind(row.to_string());
            if let Some(at) = at {
                v.push_bind(at);
            }
            n += 1;
        });
        b.build().execute(&mut **tx).await?;
    }
    Ok(())
}

async fn publish(tx: &mut Tx, batch_id: Uuid, base: i64, rows: NewRows<'_>) -> StoreResult<i64> {
    let at = micros(now());
    let n = match rows {
        NewRows::Inline(rows) => {
            insert_rows(
                tx,
                "batch_rows",
                &batch_id.to_string(),
                base,
                rows,
                Some(at),
            )
            .await?;
            rows.len() as i64
        }
        NewRows::Staged(upload) => {
            let gone = sqlx::query("DELETE FROM batch_uploads WHERE id = ?1")
                .bind(upload.to_string())
                .execute(&mut **tx)
                .await?;
            if gone.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            let n = sqlx::query(
                "INSERT INTO batch_rows (batch_id, idx, input, available_at) \
                 SELECT ?1, ?2 + n, input, ?4 FROM batch_staged_rows WHERE upload_id = ?3",
            )
            .bind(batch_id.to_string())
            .bind(base)
            .bind(upload.to_string())
            .bind(at)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM batch_staged_rows WHERE upload_id = ?1")
                .bind(upload.to_string())
                .execute(&mut **tx)
                .await?;
            n as i64
        }
    };
    sqlx::query("UPDATE batches SET next_idx = next_idx + ?2 WHERE id = ?1")
        .bind(batch_id.to_string())
        .bind(n)
        .execute(&mut **tx)
        .await?;
    apply_counts(tx, &[(batch_id, Counts::moved(None, RowState::Queued, n))]).await?;
    Ok(n)
}

/// Stores the output files of the successful ends among `ends` that were
/// `written` (see `PgStore`'s `store_files`), each fenced by its claim and
/// the row's `success`, and adds their names to the batch's. No statement
/// when no end has files.
async fn store_files(
    tx: &mut Tx,
    ends: &[(RowClaim, RowEnd)],
    written: &[(Uuid, i64)],
) -> StoreResult<()> {
    for (c, files) in written_files(ends, written) {
        let stored = sqlx::query(
            "UPDATE batch_rows SET files = ?5 \
             WHERE batch_id = ?1 AND idx = ?2 AND attempt = ?3 AND instance = ?4 \
               AND state = 'success'",
        )
        .bind(c.batch_id.to_string())
        .bind(c.idx)
        .bind(c.attempt)
        .bind(&c.instance)
        .bind(files.to_json().to_string())
        .execute(&mut **tx)
        .await?;
        if stored.rows_affected() == 0 {
            continue;
        }
        for name in files.names() {
            sqlx::query(
                "INSERT INTO batch_files (batch_id, name) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )
            .bind(c.batch_id.to_string())
            .bind(name)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// The batch facts a decision needs: (waitoff, aborted, finished).
async fn facts(tx: &mut Tx, id: Uuid) -> StoreResult<(bool, bool, bool)> {
    let row = sqlx::query(
        "SELECT waitoff_at IS NOT NULL AS waitoff, aborted_at IS NOT NULL AS aborted, \
           finished_at IS NOT NULL AS finished FROM batches WHERE id = ?1",
    )
    .bind(id.to_string())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    Ok((
        row.try_get("waitoff")?,
        row.try_get("aborted")?,
        row.try_get("finished")?,
    ))
}

/// Completes `ids` that are final now (see `PgStore::batch_settle`).
async fn settle(tx: &mut Tx, ids: &[Uuid]) -> StoreResult<Vec<BatchRow>> {
    let mut done = Vec::new();
    for id in ids {
        let Ok((waitoff, aborted, finished)) = facts(tx, *id).await else {
            continue;
        };
        if finished || !(waitoff || aborted) {
            continue;
        }
        let at = micros(now());
        if aborted {
            let swept = sqlx::query(
                "UPDATE batch_rows SET state = 'aborted', finished_at = ?2 \
                 WHERE batch_id = ?1 AND state = 'queued'",
            )
            .bind(id.to_string())
            .bind(at)
            .execute(&mut **tx)
            .await?
            .rows_affected() as i64;
            apply_counts(
                tx,
                &[(
                    *id,
                    Counts::moved(Some(RowState::Queued), RowState::Aborted, swept),
                )],
            )
            .await?;
        }
        let c = counts_of(tx, *id).await?;
        if !rules::completes(&c, waitoff, aborted) {
            continue;
        }
        let outcome = if aborted {
            BatchStatus::Aborted
        } else {
            rules::final_outcome(&c)
        };
        sqlx::query(
            "UPDATE batches SET outcome = ?2, finished_at = ?3, \
               started_at = coalesce(started_at, ?3) WHERE id = ?1",
        )
        .bind(id.to_string())
        .bind(outcome.as_str())
        .bind(at)
        .execute(&mut **tx)
        .await?;
        let row = sqlx::query(&format!("{SELECT_BATCH} WHERE b.id = ?1"))
            .bind(id.to_string())
            .fetch_one(&mut **tx)
            .await?;
        let batch = batch_from_row(&row)?;
        write_event(tx, "batch.completed", &batch.summary()).await?;
        done.push(batch);
    }
    Ok(done)
}

impl SqliteStore {
    pub async fn batch_create(&self, new: &NewBatch, rows: NewRows<'_>) -> StoreResult<BatchRow> {
        let mut tx = self.write().await?;
        let at = micros(now());
        sqlx::query(
            "INSERT INTO batches (id, handler, context, max_retries, retry_backoff_ms, timeout_ms, \
               max_parallel, created_at, waitoff_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, CASE WHEN ?9 THEN ?8 END)",
        )
        .bind(new.id.to_string())
        .bind(&new.handler)
        .bind(new.context.to_string())
        .bind(new.max_retries)
        .bind(new.retry_backoff_ms)
        .bind(new.timeout_ms)
        .bind(new.max_parallel)
        .bind(at)
        .bind(new.waitoff)
        .execute(&mut *tx)
        .await
        .map_err(|e| super::conflict_on_unique(e, || format!("batch {} exists", new.id)))?;
        let n = publish(&mut tx, new.id, 0, rows).await?;
        write_event(
            &mut tx,
            "batch.created",
            &serde_json::json!({"batch_id": new.id, "handler": new.handler, "rows": n}),
        )
        .await?;
        settle(&mut tx, &[new.id]).await?;
        tx.commit().await?;
        if n > 0 {
            self.send(&Notice::runs_queued());
        }
        self.batch_get(new.id).await
    }

    pub async fn batch_append(&self, id: Uuid, rows: NewRows<'_>) -> StoreResult<BatchRow> {
        let mut tx = self.write().await?;
        let (waitoff, aborted, finished) = facts(&mut tx, id).await?;
        if let Some(why) = rules::append_refusal(waitoff, aborted, finished) {
            return Err(StoreError::Conflict(why.to_string()));
        }
        let base: i64 = sqlx::query_scalar("SELECT next_idx FROM batches WHERE id = ?1")
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let n = publish(&mut tx, id, base, rows).await?;
        tx.commit().await?;
        if n > 0 {
            self.send(&Notice::runs_queued());
        }
        self.batch_get(id).await
    }

    pub async fn batch_upload_begin(&self) -> StoreResult<Uuid> {
        let id = Uuid::now_v7();
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO batch_uploads (id, created_at) VALUES (?1, ?2)")
            .bind(id.to_string())
            .bind(micros(now()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn batch_upload_stage(
        &self,
        upload: Uuid,
        first: i64,
        rows: &[Value],
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        insert_rows(
            &mut tx,
            "batch_staged_rows",
            &upload.to_string(),
            first,
            rows,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn batch_upload_discard(&self, upload: Uuid) -> StoreResult<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM batch_staged_rows WHERE upload_id = ?1")
            .bind(upload.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM batch_uploads WHERE id = ?1")
            .bind(upload.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn batch_uploads_prune_before(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM batch_uploads WHERE created_at < ?1")
                .bind(micros(cutoff))
                .fetch_all(&self.readers)
                .await?;
        for id in &ids {
            if let Ok(id) = id.parse() {
                self.batch_upload_discard(id).await?;
            }
        }
        Ok(ids.len() as u64)
    }

    pub async fn batch_get(&self, id: Uuid) -> StoreResult<BatchRow> {
        let row = sqlx::query(&format!("{SELECT_BATCH} WHERE b.id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.readers)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(batch_from_row(&row)?)
    }

    pub async fn batch_list(&self, f: &BatchFilter) -> StoreResult<Vec<BatchRow>> {
        let mut b = QueryBuilder::<Sqlite>::new(SELECT_BATCH);
        b.push(" WHERE 1 = 1");
        match f.status {
            Some(BatchStatus::Queued) => {
                b.push(" AND b.outcome IS NULL AND b.started_at IS NULL");
            }
            Some(BatchStatus::Inprog) => {
                b.push(" AND b.outcome IS NULL AND b.started_at IS NOT NULL");
            }
            Some(s) => {
                b.push(" AND b.outcome = ").push_bind(s.as_str());
            }
            None => {}
        }
        if let Some(h) = &f.handler {
            b.push(" AND b.handler = ").push_bind(h.clone());
        }
        if let Some((at, id)) = f.before {
            b.push(" AND (b.created_at < ")
                .push_bind(micros(at))
                .push(" OR (b.created_at = ")
                .push_bind(micros(at))
                .push(" AND b.id < ")
                .push_bind(id.to_string())
                .push("))");
        }
        b.push(" ORDER BY b.created_at DESC, b.id DESC LIMIT ")
            .push_bind(f.limit);
        let rows = b.build().fetch_all(&self.readers).await?;
        Ok(rows.iter().map(batch_from_row).collect::<Result<_, _>>()?)
    }

    pub async fn batch_waitoff(&self, id: Uuid) -> StoreResult<BatchRow> {
        let mut tx = self.write().await?;
        let found =
            sqlx::query("UPDATE batches SET waitoff_at = coalesce(waitoff_at, ?2) WHERE id = ?1")
                .bind(id.to_string())
                .bind(micros(now()))
                .execute(&mut *tx)
                .await?;
        if found.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        settle(&mut tx, &[id]).await?;
        tx.commit().await?;
        self.batch_get(id).await
    }

    pub async fn batch_abort(&self, id: Uuid, cancel_running: bool) -> StoreResult<BatchRow> {
        let mut tx = self.write().await?;
        let (_, aborted, finished) = facts(&mut tx, id).await?;
        if finished && !aborted {
            return Err(StoreError::Conflict("the batch is final".into()));
        }
        let at = micros(now());
        if !aborted {
            sqlx::query("UPDATE batches SET aborted_at = ?2, outcome = 'aborted' WHERE id = ?1")
                .bind(id.to_string())
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        let swept = sqlx::query(
            "UPDATE batch_rows SET state = 'aborted', finished_at = ?2 \
             WHERE batch_id = ?1 AND state = 'queued'",
        )
        .bind(id.to_string())
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        if cancel_running {
            sqlx::query(
                "UPDATE batch_rows SET cancel_requested = 1 WHERE batch_id = ?1 AND state = 'inprog'",
            )
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        apply_counts(
            &mut tx,
            &[(
                id,
                Counts::moved(Some(RowState::Queued), RowState::Aborted, swept),
            )],
        )
        .await?;
        if !aborted {
            write_event(
                &mut tx,
                "batch.aborted",
                &serde_json::json!({"batch_id": id, "rows_aborted": swept,
                    "cancel_running": cancel_running}),
            )
            .await?;
        }
        settle(&mut tx, &[id]).await?;
        tx.commit().await?;
        self.batch_get(id).await
    }

    pub async fn batch_delete(&self, id: Uuid) -> StoreResult<()> {
        let mut tx = self.write().await?;
        let (_, _, finished) = facts(&mut tx, id).await?;
        if !finished {
            return Err(StoreError::Conflict(
                "the batch is not final; abort it first".into(),
            ));
        }
        for table in ["batch_rows", "batch_counts", "batch_files"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE batch_id = ?1"))
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM batches WHERE id = ?1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn batch_rows_list(&self, id: Uuid, f: &RowFilter) -> StoreResult<Vec<RowRecord>> {
        let mut b = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {ROW_COLUMNS} FROM batch_rows WHERE batch_id = "
        ));
        b.push_bind(id.to_string());
        if let Some(s) = f.state {
            b.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(after) = f.after_idx {
            b.push(" AND idx > ").push_bind(after);
        }
        b.push(" ORDER BY idx LIMIT ").push_bind(f.limit);
        let rows = b.build().fetch_all(&self.readers).await?;
        Ok(rows.iter().map(record_from_row).collect::<Result<_, _>>()?)
    }

    pub async fn batch_output_page(
        &self,
        id: Uuid,
        after: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Value)>> {
        let rows = sqlx::query(
            "SELECT idx, result FROM batch_rows WHERE batch_id = ?1 AND idx > ?2 \
               AND state = 'success' AND result IS NOT NULL AND result <> 'null' \
             ORDER BY idx LIMIT ?3",
        )
        .bind(id.to_string())
        .bind(after.unwrap_or(-1))
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("idx")?, rows::json(r, "result")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn batch_file_page(
        &self,
        id: Uuid,
        name: &str,
        after: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Vec<String>)>> {
        // Names are `[A-Za-z0-9._-]` (`files::valid_name`): quoted, a path
        // key needs no escaping.
        let path = format!("$.\"{name}\"");
        let rows = sqlx::query(
            "SELECT idx, json_extract(files, ?2) AS lines FROM batch_rows \
             WHERE batch_id = ?1 AND idx > ?3 AND state = 'success' \
               AND files IS NOT NULL AND json_type(files, ?2) = 'array' \
             ORDER BY idx LIMIT ?4",
        )
        .bind(id.to_string())
        .bind(path)
        .bind(after.unwrap_or(-1))
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("idx")?, rows::json_as(r, "lines")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn batch_rows_claim(&self, slots: &RowClaimSlots) -> StoreResult<Vec<ClaimedRow>> {
        if slots.limit <= 0 {
            return Ok(Vec::new());
        }
        // A read first, off the one writer: a replica with no batch open
        // (every claim cycle of a runs-only workload) never takes it.
        let any: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM batches b JOIN batch_counts c ON c.batch_id = b.id AND c.slot = 0 \
             WHERE b.outcome IS NULL AND b.finished_at IS NULL AND c.queued > 0 LIMIT 1",
        )
        .fetch_optional(&self.readers)
        .await?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let candidates = sqlx::query(
            "SELECT b.id, b.handler, b.context, b.max_retries, b.retry_backoff_ms, b.timeout_ms, \
               b.max_parallel, b.started_at IS NOT NULL AS started, c.queued, c.inprog \
             FROM batches b JOIN batch_counts c ON c.batch_id = b.id AND c.slot = 0 \
             WHERE b.outcome IS NULL AND b.finished_at IS NULL AND c.queued > 0 \
             ORDER BY b.created_at, b.id LIMIT ?1",
        )
        .bind(CLAIM_CANDIDATES)
        .fetch_all(&mut *tx)
        .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let wants: Vec<Claimable> = candidates
            .iter()
            .map(|r| {
                let queued: i64 = r.try_get("queued")?;
                let inprog: i64 = r.try_get("inprog")?;
                let max: Option<i64> = r.try_get("max_parallel")?;
                Ok(Claimable {
                    queued,
                    room: max.map(|m| (m - inprog).max(0)),
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let shares = rules::share(slots.limit, &wants, slots.turn);
        let at = micros(now());
        let lease_until = at + slots.lease_ms * 1000;
        let mut claimed = Vec::new();
        let mut deltas = Vec::new();
        for (r, n) in candidates.iter().zip(&shares) {
            if *n == 0 {
                continue;
            }
            let id = rows::uuid(r, "id")?;
            let context = rows::json(r, "context")?;
            let handler: String = r.try_get("handler")?;
            if !r.try_get::<bool, _>("started")? {
                sqlx::query("UPDATE batches SET started_at = ?2 WHERE id = ?1")
                    .bind(id.to_string())
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            let got = sqlx::query(
                "UPDATE batch_rows SET state = 'inprog', attempt = attempt + 1, instance = ?3, \
                   lease_expires_at = ?4, started_at = ?5, cancel_requested = 0 \
                 WHERE batch_id = ?1 AND idx IN (SELECT idx FROM batch_rows \
                   WHERE batch_id = ?1 AND state = 'queued' AND available_at <= ?5 \
                   ORDER BY idx LIMIT ?2) \
                 RETURNING idx, input, attempt",
            )
            .bind(id.to_string())
            .bind(*n)
            .bind(&slots.instance)
            .bind(lease_until)
            .bind(at)
            .fetch_all(&mut *tx)
            .await?;
            deltas.push((
                id,
                Counts::moved(Some(RowState::Queued), RowState::Inprog, got.len() as i64),
            ));
            let mut got = got
                .iter()
                .map(|g| {
                    Ok(ClaimedRow {
                        claim: RowClaim {
                            batch_id: id,
                            idx: g.try_get("idx")?,
                            attempt: g.try_get("attempt")?,
                            instance: slots.instance.clone(),
                        },
                        input: rows::json(g, "input")?,
                        handler: handler.clone(),
                        context: context.clone(),
                        max_retries: r.try_get("max_retries")?,
                        retry_backoff_ms: r.try_get("retry_backoff_ms")?,
                        timeout_ms: r.try_get("timeout_ms")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            got.sort_by_key(|c| c.claim.idx);
            claimed.extend(got);
        }
        apply_counts(&mut tx, &deltas_by_batch(deltas)).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    pub async fn batch_rows_heartbeat(
        &self,
        instance: &str,
        lease_ms: i64,
        held: &[RowClaim],
    ) -> StoreResult<Vec<RowAck>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let until = micros(now()) + lease_ms * 1000;
        let mut acks = Vec::new();
        let mut sorted: Vec<&RowClaim> = held.iter().collect();
        sorted.sort_by_key(|c| (c.batch_id, c.idx));
        for c in sorted {
            let row = sqlx::query(
                "UPDATE batch_rows SET lease_expires_at = ?5 \
                 WHERE batch_id = ?1 AND idx = ?2 AND attempt = ?3 AND instance = ?4 \
                   AND state = 'inprog' RETURNING cancel_requested",
            )
            .bind(c.batch_id.to_string())
            .bind(c.idx)
            .bind(c.attempt)
            .bind(instance)
            .bind(until)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                acks.push(RowAck {
                    batch_id: c.batch_id,
                    idx: c.idx,
                    attempt: c.attempt,
                    cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
                });
            }
        }
        tx.commit().await?;
        Ok(acks)
    }

    pub async fn batch_rows_finish(
        &self,
        ends: &[(RowClaim, RowEnd)],
    ) -> StoreResult<Vec<(Uuid, i64)>> {
        if ends.is_empty() {
            return Ok(Vec::new());
        }
        let at = micros(now());
        // A row of `VALUES` per end, computed here: (batch, row, attempt,
        // instance) fence it; the state, result and error it writes;
        // `finished_at` (none when queued again), `available_at` (the
        // backoff's end when queued again, else kept) and whether the
        // attempt is handed back uncounted.
        let values: Vec<_> = ends
            .iter()
            .map(|(c, e)| {
                let (result, error, delay_ms, back) = match e {
                    RowEnd::Success { result: v, .. } => {
                        (rows::opt_json_text(v.as_ref()), None, 0, false)
                    }
                    RowEnd::Failed(err) | RowEnd::Aborted(err) => {
                        (None, Some(err.clone()), 0, false)
                    }
                    RowEnd::Retry { delay_ms, error } => {
                        (None, Some(error.clone()), *delay_ms, false)
                    }
                    RowEnd::HandBack => (None, None, 0, true),
                };
                let queued = e.state() == RowState::Queued;
                let finished = (!queued).then_some(at);
                let available = queued.then_some(at + delay_ms * 1000);
                (c, e.state(), result, error, finished, available, back)
            })
            .collect();
        let mut tx = self.write().await?;
        let mut written = Vec::with_capacity(ends.len());
        let mut moves = Vec::with_capacity(ends.len());
        let mut requeued = false;
        for chunk in statement_chunks(&values) {
            let mut update = QueryBuilder::<Sqlite>::new(
                "WITH e (batch_id, idx, attempt, instance, state, result, error, finished_at, \
                 available_at, back) AS (",
            );
            update.push_values(
                chunk,
                |mut row, (c, state, result, error, fin, avail, back)| {
                    row.push_bind(c.batch_id.to_string())
                        .push_bind(c.idx)
                        .push_bind(c.attempt)
                        .push_bind(&c.instance)
                        .push_bind(state.as_str())
                        .push_bind(result)
                        .push_bind(error)
                        .push_bind(fin)
                        .push_bind(avail)
                        .push_bind(back);
                },
            );
            update.push(
                ") UPDATE batch_rows SET state = e.state, result = e.result, error = e.error, \
                   finished_at = e.finished_at, \
                   available_at = coalesce(e.available_at, batch_rows.available_at), \
                   attempt = batch_rows.attempt - e.back, \
                   instance = CASE WHEN e.state = 'queued' THEN NULL ELSE batch_rows.instance END, \
                   lease_expires_at = NULL, cancel_requested = 0 \
                 FROM e WHERE batch_rows.batch_id = e.batch_id AND batch_rows.idx = e.idx \
                   AND batch_rows.attempt = e.attempt AND batch_rows.instance = e.instance \
                   AND batch_rows.state = 'inprog' \
                 RETURNING batch_rows.batch_id, batch_rows.idx, batch_rows.state",
            );
            for row in update.build().fetch_all(&mut *tx).await? {
                let id = rows::uuid(&row, "batch_id")?;
                let text: String = row.try_get("state")?;
                let state = RowState::parse(&text).ok_or_else(|| decode_err("state", &text))?;
                requeued |= state == RowState::Queued;
                written.push((id, row.try_get("idx")?));
                moves.push((id, Counts::moved(Some(RowState::Inprog), state, 1)));
            }
        }
        let deltas = deltas_by_batch(moves);
        store_files(&mut tx, ends, &written).await?;
        apply_counts(&mut tx, &deltas).await?;
        let touched: Vec<Uuid> = deltas.iter().map(|(id, _)| *id).collect();
        settle(&mut tx, &touched).await?;
        tx.commit().await?;
        if requeued {
            self.send(&Notice::runs_queued());
        }
        Ok(written)
    }

    pub async fn batch_rows_rescue_expired(&self, limit: i64) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        let at = micros(now());
        let rows = sqlx::query(
            "SELECT r.batch_id, r.idx, r.attempt, b.max_retries FROM batch_rows r \
               JOIN batches b ON b.id = r.batch_id \
             WHERE r.state = 'inprog' AND r.lease_expires_at < ?1 \
             ORDER BY r.batch_id, r.idx LIMIT ?2",
        )
        .bind(at)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut moves = Vec::new();
        for r in &rows {
            let id = rows::uuid(r, "batch_id")?;
            let idx: i64 = r.try_get("idx")?;
            let to = rules::rescue(r.try_get("attempt")?, r.try_get("max_retries")?);
            sqlx::query(
                "UPDATE batch_rows SET state = ?3, instance = NULL, lease_expires_at = NULL, \
                   error = 'lease expired: the instance running it stopped renewing', \
                   finished_at = CASE WHEN ?3 = 'queued' THEN NULL ELSE ?4 END, available_at = ?4 \
                 WHERE batch_id = ?1 AND idx = ?2",
            )
            .bind(id.to_string())
            .bind(idx)
            .bind(to.as_str())
            .bind(at)
            .execute(&mut *tx)
            .await?;
            moves.push((id, Counts::moved(Some(RowState::Inprog), to, 1)));
        }
        let deltas = deltas_by_batch(moves);
        apply_counts(&mut tx, &deltas).await?;
        let touched: Vec<Uuid> = deltas.iter().map(|(id, _)| *id).collect();
        settle(&mut tx, &touched).await?;
        tx.commit().await?;
        self.send(&Notice::runs_queued());
        Ok(rows.len() as u64)
    }

    pub async fn batch_settle(&self, ids: &[Uuid]) -> StoreResult<Vec<BatchRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let done = settle(&mut tx, ids).await?;
        tx.commit().await?;
        Ok(done)
    }

    pub async fn batches_unsettled(&self, limit: i64) -> StoreResult<Vec<Uuid>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM batches WHERE finished_at IS NULL \
               AND (waitoff_at IS NOT NULL OR aborted_at IS NOT NULL) ORDER BY created_at LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
    }

    pub async fn batches_prune_finished_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "DELETE FROM batch_rows WHERE (batch_id, idx) IN (SELECT r.batch_id, r.idx \
               FROM batches b JOIN batch_rows r ON r.batch_id = b.id \
               WHERE b.finished_at < ?1 LIMIT ?2)",
        )
        .bind(micros(cutoff))
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let mut batches = 0;
        if (rows as i64) < limit {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM batches b WHERE finished_at < ?1 \
                   AND NOT EXISTS (SELECT 1 FROM batch_rows r WHERE r.batch_id = b.id) LIMIT ?2",
            )
            .bind(micros(cutoff))
            .bind(limit - rows as i64)
            .fetch_all(&mut *tx)
            .await?;
            for id in &ids {
                for table in ["batch_counts", "batch_files"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE batch_id = ?1"))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("DELETE FROM batches WHERE id = ?1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            batches = ids.len() as u64;
        }
        tx.commit().await?;
        Ok(rows + batches)
    }

    pub async fn batch_counts_check(&self, id: Uuid) -> StoreResult<BatchCountsCheck> {
        let counters = self.batch_get(id).await?.counts;
        let by_state: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM batch_rows WHERE batch_id = ?1 GROUP BY state",
        )
        .bind(id.to_string())
        .fetch_all(&self.readers)
        .await?;
        let mut rows = Counts::default();
        for (state, n) in by_state {
            let state = RowState::parse(&state).ok_or_else(|| decode_err("state", &state))?;
            rows = rows.plus(&Counts::moved(None, state, n));
        }
        Ok(BatchCountsCheck { counters, rows })
    }
}
