//! Batches on PostgreSQL (migrations/postgres/0012). Rows are claimed in
//! chunks with `FOR UPDATE SKIP LOCKED` by any replica; counts are
//! sharded counter rows (`batch_counts`, one random slot per transaction)
//! that each transaction changing rows adds its exact deltas to.
//!
//! Lock order, in every statement: the `batches` row (only where a
//! batch-wide decision is made: a claim of a batch with `max_parallel`,
//! an append, an abort, a completion), then `batch_rows` ordered by
//! `(batch_id, idx)`, then (row ends with output files only) `batch_files`
//! ordered by `(batch_id, name)`, then `batch_counts` ordered by
//! `(batch_id, slot)`.
//! Heartbeats and row ends lock rows through an ordered `FOR UPDATE`
//! first, so the two never deadlock. A batch-wide decision locks the
//! `batches` row `FOR NO KEY UPDATE`, never `FOR UPDATE`: every counter
//! write's foreign key check takes `FOR KEY SHARE` on it (after that
//! transaction's row locks), which `FOR UPDATE` would block, and an abort
//! waiting for those row locks would then deadlock with it.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::{PgStore, StoreError, StoreResult};
use crate::batches::rules::{self, BatchStatus, Claimable, Counts, RowState};
use crate::store::batches::{
    deltas_by_batch, written_files, BatchCountsCheck, BatchFilter, BatchRow, ClaimedRow, NewBatch,
    NewRows, RowAck, RowClaim, RowClaimSlots, RowEnd, RowFilter, RowRecord,
};
use crate::store::notify::Notice;

/// Counter rows per batch: enough that concurrent writers rarely pick the
/// same one, few enough that a read sums them at no cost.
const SLOTS: i32 = 16;

/// Batches a claim looks at, oldest first.
const CLAIM_CANDIDATES: i64 = 64;

/// One batch's claim: `$1` the batch, `$2` how many rows, `$3` the
/// instance, `$4` the lease in ms. The first `$2` queued rows, taken as
/// the index range they span: one statement and one snapshot, so exactly
/// those rows, each locked only by its update (claims of a batch take
/// turns on its row; a row an older replica's claim, which locks rows
/// without taking that turn, holds is re-checked after its commit and
/// skipped). The range's bounds are init plans, so the plan is a range
/// scan with or without statistics: a join to the picked rows is planned,
/// while a new batch's rows have none, as a scan of the whole batch per
/// picked row (`tests/integration/plans.rs`).
pub(crate) const ROW_CLAIM_SQL: &str = "WITH picked AS MATERIALIZED (SELECT idx FROM batch_rows \
       WHERE batch_id = $1 AND state = 'queued' AND available_at <= now() \
       ORDER BY idx LIMIT $2) \
     UPDATE batch_rows r SET state = 'inprog', attempt = r.attempt + 1, instance = $3, \
       lease_expires_at = now() + $4 * interval '1 millisecond', started_at = now(), \
       cancel_requested = false \
     WHERE r.batch_id = $1 AND r.idx >= (SELECT min(idx) FROM picked) \
       AND r.idx <= (SELECT max(idx) FROM picked) \
       AND r.state = 'queued' AND r.available_at <= now() \
     RETURNING r.idx, r.input, r.attempt";

/// The row ends' plan: the generic one, from the first execution, a
/// nested loop over the ends in their order, each row found by primary
/// key and locked by its update. A custom plan, while a new batch's rows
/// have no statistics, hashes every running row of the table for each
/// group of ends; with statistics, a bitmap plan ANDs each row's key with
/// the whole running-rows (leases) index, dead entries included, which
/// made a 300,000-row batch 20x slower. Hence no bitmap scans either.
/// It also commits without waiting for the WAL flush (see
/// [`PgStore::batch_rows_finish`]); all three in one round trip.
pub(crate) const ROW_FINISH_SETTINGS: &str =
    "SELECT set_config('plan_cache_mode', 'force_generic_plan', true), \
       set_config('enable_bitmapscan', 'off', true), \
       set_config('synchronous_commit', 'off', true)";

/// A group of row ends, each fenced by its claim: `$1`..`$9` arrays of
/// batch, row, attempt, instance, new state, result (JSON text), error,
/// backoff ms and whether the attempt is handed back uncounted.
pub(crate) const ROW_FINISH_SQL: &str =
    "UPDATE batch_rows r SET state = e.st, result = e.res::jsonb, error = e.err, \
       finished_at = CASE WHEN e.st = 'queued' THEN NULL ELSE now() END, \
       available_at = CASE WHEN e.st = 'queued' \
         THEN now() + e.delay * interval '1 millisecond' ELSE r.available_at END, \
       attempt = CASE WHEN e.back THEN r.attempt - 1 ELSE r.attempt END, \
       instance = CASE WHEN e.st = 'queued' THEN NULL ELSE r.instance END, \
       lease_expires_at = NULL, cancel_requested = false \
     FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::text[], $5::text[], \
       $6::text[], $7::text[], $8::bigint[], $9::bool[]) \
       AS e(b, i, a, inst, st, res, err, delay, back) \
     WHERE r.batch_id = e.b AND r.idx = e.i AND r.attempt = e.a AND r.instance = e.inst \
       AND r.state = 'inprog' \
     RETURNING r.batch_id, r.idx, r.state";

const SELECT_BATCH: &str = "SELECT b.id, b.handler, b.context, b.max_retries, b.retry_backoff_ms, \
     b.timeout_ms, b.max_parallel, b.created_at, b.started_at, b.waitoff_at, b.aborted_at, \
     b.finished_at, b.outcome, c.total, c.queued, c.inprog, c.success, c.failed, c.aborted, \
     ARRAY(SELECT name FROM batch_files f WHERE f.batch_id = b.id) AS output_files \
     FROM batches b CROSS JOIN LATERAL (SELECT coalesce(sum(total), 0)::bigint AS total, \
       coalesce(sum(queued), 0)::bigint AS queued, coalesce(sum(inprog), 0)::bigint AS inprog, \
       coalesce(sum(success), 0)::bigint AS success, coalesce(sum(failed), 0)::bigint AS failed, \
       coalesce(sum(aborted), 0)::bigint AS aborted \
       FROM batch_counts WHERE batch_id = b.id) c";

const ROW_COLUMNS: &str = "batch_id, idx, input, state, attempt, instance, result, error, \
     started_at, finished_at";

fn decode_err(column: &str, text: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.into(),
        source: format!("unknown value {text:?}").into(),
    }
}

fn batch_from_row(row: &PgRow) -> Result<BatchRow, sqlx::Error> {
    let outcome: Option<String> = row.try_get("outcome")?;
    let outcome = match outcome {
        Some(text) => Some(BatchStatus::parse(&text).ok_or_else(|| decode_err("outcome", &text))?),
        None => None,
    };
    Ok(BatchRow {
        id: row.try_get("id")?,
        handler: row.try_get("handler")?,
        context: row.try_get::<sqlx::types::Json<Value>, _>("context")?.0,
        max_retries: row.try_get("max_retries")?,
        retry_backoff_ms: row.try_get("retry_backoff_ms")?,
        timeout_ms: row.try_get("timeout_ms")?,
        max_parallel: row.try_get("max_parallel")?,
        counts: Counts {
            total: row.try_get("total")?,
            queued: row.try_get("queued")?,
            inprog: row.try_get("inprog")?,
            success: row.try_get("success")?,
            failed: row.try_get("failed")?,
            aborted: row.try_get("aborted")?,
        },
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        waitoff_at: row.try_get("waitoff_at")?,
        aborted_at: row.try_get("aborted_at")?,
        finished_at: row.try_get("finished_at")?,
        outcome,
        output_files: sorted(row.try_get("output_files")?),
    })
}

/// File names in byte order, whatever the database's collation.
fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

fn row_state(row: &PgRow) -> Result<RowState, sqlx::Error> {
    let text: String = row.try_get("state")?;
    RowState::parse(&text).ok_or_else(|| decode_err("state", &text))
}

fn record_from_row(row: &PgRow) -> Result<RowRecord, sqlx::Error> {
    Ok(RowRecord {
        batch_id: row.try_get("batch_id")?,
        idx: row.try_get("idx")?,
        input: row.try_get::<sqlx::types::Json<Value>, _>("input")?.0,
        state: row_state(row)?,
        attempt: row.try_get("attempt")?,
        instance: row.try_get("instance")?,
        result: row
            .try_get::<Option<sqlx::types::Json<Value>>, _>("result")?
            .map(|j| j.0),
        error: row.try_get("error")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// Adds `deltas` (sorted by batch id) to one random counter slot of each.
async fn apply_counts(
    tx: &mut Transaction<'static, Postgres>,
    deltas: &[(Uuid, Counts)],
) -> StoreResult<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let slot: i32 = rand::random::<u32>() as i32 % SLOTS;
    let col = |f: fn(&Counts) -> i64| deltas.iter().map(|(_, d)| f(d)).collect::<Vec<i64>>();
    let ids: Vec<Uuid> = deltas.iter().map(|(id, _)| *id).collect();
    sqlx::query(
        "INSERT INTO batch_counts (batch_id, slot, total, queued, inprog, success, failed, aborted) \
         SELECT b, $2, t, q, i, s, f, a \
         FROM unnest($1::uuid[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], \
           $7::bigint[], $8::bigint[]) AS x(b, t, q, i, s, f, a) ORDER BY b \
         ON CONFLICT (batch_id, slot) DO UPDATE SET \
           total = batch_counts.total + EXCLUDED.total, \
           queued = batch_counts.queued + EXCLUDED.queued, \
           inprog = batch_counts.inprog + EXCLUDED.inprog, \
           success = batch_counts.success + EXCLUDED.success, \
           failed = batch_counts.failed + EXCLUDED.failed, \
           aborted = batch_counts.aborted + EXCLUDED.aborted",
    )
    .bind(&ids)
    .bind(slot)
    .bind(col(|d| d.total))
    .bind(col(|d| d.queued))
    .bind(col(|d| d.inprog))
    .bind(col(|d| d.success))
    .bind(col(|d| d.failed))
    .bind(col(|d| d.aborted))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The summed counts of `ids` (as this transaction sees them).
async fn counts_of(
    tx: &mut Transaction<'static, Postgres>,
    ids: &[Uuid],
) -> StoreResult<std::collections::HashMap<Uuid, Counts>> {
    let rows = sqlx::query(
        "SELECT batch_id, sum(total)::bigint AS total, sum(queued)::bigint AS queued, \
           sum(inprog)::bigint AS inprog, sum(success)::bigint AS success, \
           sum(failed)::bigint AS failed, sum(aborted)::bigint AS aborted \
         FROM batch_counts WHERE batch_id = ANY($1) GROUP BY batch_id",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = std::collections::HashMap::new();
    for row in rows {
        out.insert(
            row.try_get("batch_id")?,
            Counts {
                total: row.try_get("total")?,
                queued: row.try_get("queued")?,
                inprog: row.try_get("inprog")?,
                success: row.try_get("success")?,
                failed: row.try_get("failed")?,
                aborted: row.try_get("aborted")?,
            },
        );
    }
    Ok(out)
}

/// Writes one event of `event_type` with `data`, in `tx`.
async fn write_event(
    tx: &mut Transaction<'static, Postgres>,
    event_type: &str,
    data: &Value,
) -> StoreResult<()> {
    sqlx::query(
        "SELECT events_write(jsonb_build_array(jsonb_build_object('t', $1::text, 'at', now(), \
           'd', $2::jsonb))) WHERE events_enabled()",
    )
    .bind(event_type)
    .bind(sqlx::types::Json(data))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stores the output files of the successful ends among `ends` that were
/// `written` (in this transaction, whose row locks they hold), each fenced
/// by its claim and the row's `success`, and adds their names to the
/// batch's (`batch_files`, in (batch, name) order). No statement when no
/// end has files.
async fn store_files(
    tx: &mut Transaction<'static, Postgres>,
    ends: &[(RowClaim, RowEnd)],
    written: &[(Uuid, i64)],
) -> StoreResult<()> {
    let with = written_files(ends, written);
    if with.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = with.iter().map(|(c, _)| c.batch_id).collect();
    let idxs: Vec<i64> = with.iter().map(|(c, _)| c.idx).collect();
    let attempts: Vec<i32> = with.iter().map(|(c, _)| c.attempt).collect();
    let instances: Vec<&str> = with.iter().map(|(c, _)| c.instance.as_str()).collect();
    let files: Vec<String> = with.iter().map(|(_, f)| f.to_json().to_string()).collect();
    sqlx::query(
        "WITH f AS (UPDATE batch_rows r SET files = x.f::jsonb \
           FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::text[], $5::text[]) \
             AS x(b, i, a, inst, f) \
           WHERE r.batch_id = x.b AND r.idx = x.i AND r.attempt = x.a AND r.instance = x.inst \
             AND r.state = 'success' \
           RETURNING r.batch_id, r.files) \
         INSERT INTO batch_files (batch_id, name) \
         SELECT DISTINCT f.batch_id, n.name FROM f, jsonb_object_keys(f.files) AS n(name) \
         ORDER BY 1, 2 ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&idxs)
    .bind(&attempts)
    .bind(&instances)
    .bind(&files)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts `rows` as rows `base..` of `batch_id`; how many.
async fn publish(
    tx: &mut Transaction<'static, Postgres>,
    batch_id: Uuid,
    base: i64,
    rows: NewRows<'_>,
) -> StoreResult<i64> {
    let n = match rows {
        NewRows::Inline(rows) => {
            if rows.is_empty() {
                return Ok(0);
            }
            sqlx::query(
                "INSERT INTO batch_rows (batch_id, idx, input) \
                 SELECT $1, $2 + x.n - 1, x.v FROM jsonb_array_elements($3::jsonb) \
                   WITH ORDINALITY AS x(v, n)",
            )
            .bind(batch_id)
            .bind(base)
            .bind(sqlx::types::Json(rows))
            .execute(&mut **tx)
            .await?
            .rows_affected()
        }
        NewRows::Staged(upload) => {
            let exists: Option<Uuid> =
                sqlx::query_scalar("DELETE FROM batch_uploads WHERE id = $1 RETURNING id")
                    .bind(upload)
                    .fetch_optional(&mut **tx)
                    .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound);
            }
            let n = sqlx::query(
                "INSERT INTO batch_rows (batch_id, idx, input) \
                 SELECT $1, $2 + n, input FROM batch_staged_rows WHERE upload_id = $3",
            )
            .bind(batch_id)
            .bind(base)
            .bind(upload)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM batch_staged_rows WHERE upload_id = $1")
                .bind(upload)
                .execute(&mut **tx)
                .await?;
            n
        }
    };
    let n = n as i64;
    sqlx::query("UPDATE batches SET next_idx = next_idx + $2 WHERE id = $1")
        .bind(batch_id)
        .bind(n)
        .execute(&mut **tx)
        .await?;
    apply_counts(tx, &[(batch_id, Counts::moved(None, RowState::Queued, n))]).await?;
    Ok(n)
}

impl PgStore {
    /// Stores a batch and its first rows, all or nothing, with its
    /// `batch.created` event.
    pub async fn batch_create(&self, new: &NewBatch, rows: NewRows<'_>) -> StoreResult<BatchRow> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO batches (id, handler, context, max_retries, retry_backoff_ms, timeout_ms, \
               max_parallel, waitoff_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $8 THEN now() END)",
        )
        .bind(new.id)
        .bind(&new.handler)
        .bind(sqlx::types::Json(&new.context))
        .bind(new.max_retries)
        .bind(new.retry_backoff_ms)
        .bind(new.timeout_ms)
        .bind(new.max_parallel)
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
        tx.commit().await?;
        if n > 0 {
            self.notify(&Notice::runs_queued()).await?;
        }
        self.batch_settle(&[new.id]).await?;
        self.batch_get(new.id).await
    }

    /// Appends rows; `Conflict` once wait-off is set, or the batch is
    /// aborted or final.
    pub async fn batch_append(&self, id: Uuid, rows: NewRows<'_>) -> StoreResult<BatchRow> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT waitoff_at IS NOT NULL AS waitoff, aborted_at IS NOT NULL AS aborted, \
               finished_at IS NOT NULL AS finished FROM batches WHERE id = $1 FOR NO KEY UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        if let Some(why) = rules::append_refusal(
            row.try_get("waitoff")?,
            row.try_get("aborted")?,
            row.try_get("finished")?,
        ) {
            return Err(StoreError::Conflict(why.to_string()));
        }
        let base: i64 = sqlx::query_scalar("SELECT next_idx FROM batches WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let n = publish(&mut tx, id, base, rows).await?;
        tx.commit().await?;
        if n > 0 {
            self.notify(&Notice::runs_queued()).await?;
        }
        self.batch_get(id).await
    }

    /// Starts an upload to stage rows under.
    pub async fn batch_upload_begin(&self) -> StoreResult<Uuid> {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO batch_uploads (id) VALUES ($1)")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    /// Stages `rows` as rows `first..` of an upload.
    pub async fn batch_upload_stage(
        &self,
        upload: Uuid,
        first: i64,
        rows: &[Value],
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO batch_staged_rows (upload_id, n, input) \
             SELECT $1, $2 + x.n - 1, x.v FROM jsonb_array_elements($3::jsonb) \
               WITH ORDINALITY AS x(v, n)",
        )
        .bind(upload)
        .bind(first)
        .bind(sqlx::types::Json(rows))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops an upload and what it staged.
    pub async fn batch_upload_discard(&self, upload: Uuid) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM batch_staged_rows WHERE upload_id = $1")
            .bind(upload)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM batch_uploads WHERE id = $1")
            .bind(upload)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes uploads begun before `cutoff` (abandoned) and their rows.
    pub async fn batch_uploads_prune_before(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        let ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM batch_uploads WHERE created_at < $1")
                .bind(cutoff)
                .fetch_all(&self.pool)
                .await?;
        for id in &ids {
            self.batch_upload_discard(*id).await?;
        }
        Ok(ids.len() as u64)
    }

    pub async fn batch_get(&self, id: Uuid) -> StoreResult<BatchRow> {
        let row = sqlx::query(&format!("{SELECT_BATCH} WHERE b.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(batch_from_row(&row)?)
    }

    /// Batches, newest first.
    pub async fn batch_list(&self, f: &BatchFilter) -> StoreResult<Vec<BatchRow>> {
        let mut b = sqlx::QueryBuilder::<Postgres>::new(SELECT_BATCH);
        b.push(" WHERE true");
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
            b.push(" AND (b.created_at, b.id) < (")
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        b.push(" ORDER BY b.created_at DESC, b.id DESC LIMIT ")
            .push_bind(f.limit);
        let rows = b.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(batch_from_row).collect::<Result<_, _>>()?)
    }

    /// Sets wait-off (kept if set already) and completes the batch if
    /// every row is final.
    pub async fn batch_waitoff(&self, id: Uuid) -> StoreResult<BatchRow> {
        let found = sqlx::query(
            "UPDATE batches SET waitoff_at = coalesce(waitoff_at, now()) WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        if found.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.batch_settle(&[id]).await?;
        self.batch_get(id).await
    }

    /// Aborts a batch: its queued rows become `aborted` at once, and with
    /// `cancel_running` its running rows are asked to stop (they end
    /// `aborted`). `Conflict` when it is final already (not aborted).
    pub async fn batch_abort(&self, id: Uuid, cancel_running: bool) -> StoreResult<BatchRow> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT aborted_at IS NOT NULL AS aborted, finished_at IS NOT NULL AS finished \
             FROM batches WHERE id = $1 FOR NO KEY UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let (aborted, finished): (bool, bool) = (row.try_get("aborted")?, row.try_get("finished")?);
        if finished && !aborted {
            return Err(StoreError::Conflict("the batch is final".into()));
        }
        if !aborted {
            sqlx::query("UPDATE batches SET aborted_at = now(), outcome = 'aborted' WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let swept = sqlx::query(
            "UPDATE batch_rows SET state = 'aborted', finished_at = now() \
             WHERE batch_id = $1 AND state = 'queued'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        if cancel_running {
            sqlx::query(
                "WITH l AS (SELECT idx FROM batch_rows WHERE batch_id = $1 AND state = 'inprog' \
                   ORDER BY idx FOR UPDATE) \
                 UPDATE batch_rows r SET cancel_requested = true FROM l \
                 WHERE r.batch_id = $1 AND r.idx = l.idx",
            )
            .bind(id)
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
        tx.commit().await?;
        self.batch_settle(&[id]).await?;
        self.batch_get(id).await
    }

    /// Deletes a final batch and its rows; `Conflict` while it is not final.
    pub async fn batch_delete(&self, id: Uuid) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let finished: Option<bool> = sqlx::query_scalar(
            "SELECT finished_at IS NOT NULL FROM batches WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        match finished {
            None => return Err(StoreError::NotFound),
            Some(false) => {
                return Err(StoreError::Conflict(
                    "the batch is not final; abort it first".into(),
                ))
            }
            Some(true) => {}
        }
        sqlx::query("DELETE FROM batches WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rows of a batch in row order.
    pub async fn batch_rows_list(&self, id: Uuid, f: &RowFilter) -> StoreResult<Vec<RowRecord>> {
        let mut b = sqlx::QueryBuilder::<Postgres>::new(format!(
            "SELECT {ROW_COLUMNS} FROM batch_rows WHERE batch_id = "
        ));
        b.push_bind(id);
        if let Some(s) = f.state {
            b.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(after) = f.after_idx {
            b.push(" AND idx > ").push_bind(after);
        }
        b.push(" ORDER BY idx LIMIT ").push_bind(f.limit);
        let rows = b.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(record_from_row).collect::<Result<_, _>>()?)
    }

    /// The next `limit` outputs after row `after`: succeeded rows whose
    /// result is not null, in row order.
    pub async fn batch_output_page(
        &self,
        id: Uuid,
        after: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Value)>> {
        let rows = sqlx::query(
            "SELECT idx, result FROM batch_rows WHERE batch_id = $1 AND idx > $2 \
               AND state = 'success' AND result IS NOT NULL AND result <> 'null'::jsonb \
             ORDER BY idx LIMIT $3",
        )
        .bind(id)
        .bind(after.unwrap_or(-1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("idx")?,
                    r.try_get::<sqlx::types::Json<Value>, _>("result")?.0,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The next `limit` rows' lines of file `name` after row `after`:
    /// succeeded rows that gave it lines, in row order.
    pub async fn batch_file_page(
        &self,
        id: Uuid,
        name: &str,
        after: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Vec<String>)>> {
        let rows = sqlx::query(
            "SELECT idx, files -> $2 AS lines FROM batch_rows WHERE batch_id = $1 AND idx > $3 \
               AND state = 'success' AND files ? $2 \
             ORDER BY idx LIMIT $4",
        )
        .bind(id)
        .bind(name)
        .bind(after.unwrap_or(-1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("idx")?,
                    r.try_get::<sqlx::types::Json<Vec<String>>, _>("lines")?.0,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Claims up to `slots.limit` queued rows, shared fairly between the
    /// open batches that have some (`rules::share`), within each batch's
    /// `max_parallel` across replicas.
    pub async fn batch_rows_claim(&self, slots: &RowClaimSlots) -> StoreResult<Vec<ClaimedRow>> {
        if slots.limit <= 0 {
            return Ok(Vec::new());
        }
        let candidates = sqlx::query(
            "SELECT b.id, b.handler, b.context, b.max_retries, b.retry_backoff_ms, b.timeout_ms, \
               b.max_parallel, b.started_at IS NOT NULL AS started, \
               sum(c.queued)::bigint AS queued, sum(c.inprog)::bigint AS inprog \
             FROM batches b JOIN batch_counts c ON c.batch_id = b.id \
             WHERE b.outcome IS NULL AND b.finished_at IS NULL \
             GROUP BY b.id HAVING sum(c.queued) > 0 \
             ORDER BY b.created_at, b.id LIMIT $1",
        )
        .bind(CLAIM_CANDIDATES)
        .fetch_all(&self.pool)
        .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        struct Candidate {
            id: Uuid,
            handler: String,
            context: Value,
            max_retries: i32,
            retry_backoff_ms: i64,
            timeout_ms: Option<i64>,
            max_parallel: Option<i32>,
            started: bool,
            queued: i64,
            inprog: i64,
        }
        let mut list = Vec::with_capacity(candidates.len());
        for r in &candidates {
            list.push(Candidate {
                id: r.try_get("id")?,
                handler: r.try_get("handler")?,
                context: r.try_get::<sqlx::types::Json<Value>, _>("context")?.0,
                max_retries: r.try_get("max_retries")?,
                retry_backoff_ms: r.try_get("retry_backoff_ms")?,
                timeout_ms: r.try_get("timeout_ms")?,
                max_parallel: r.try_get("max_parallel")?,
                started: r.try_get("started")?,
                queued: r.try_get("queued")?,
                inprog: r.try_get("inprog")?,
            });
        }
        let mut tx = self.pool.begin().await?;
        // A lost claim is a row run again (at least once, as rows are):
        // after a database crash its rows are queued again and its ends,
        // fenced by state and attempt, write nothing. So claims, like row
        // ends, do not wait for the WAL flush.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        // Claims of a batch take turns on its row: the rows a claim picks
        // are then not locked one by one (see the claim statement below),
        // and a bounded batch's running count cannot move under a claim.
        let mut lock: Vec<Uuid> = list.iter().map(|c| c.id).collect();
        lock.sort();
        let open: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM batches WHERE id = ANY($1) AND outcome IS NULL ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(&lock)
        .fetch_all(&mut *tx)
        .await?;
        list.retain(|c| open.contains(&c.id));
        let bounded: Vec<Uuid> = list
            .iter()
            .filter(|c| c.max_parallel.is_some())
            .map(|c| c.id)
            .collect();
        if !bounded.is_empty() {
            let now = counts_of(&mut tx, &bounded).await?;
            for c in list.iter_mut() {
                if let Some(n) = now.get(&c.id) {
                    c.inprog = n.inprog;
                    c.queued = n.queued;
                }
            }
        }
        let wants: Vec<Claimable> = list
            .iter()
            .map(|c| Claimable {
                queued: c.queued,
                room: c.max_parallel.map(|m| (m as i64 - c.inprog).max(0)),
            })
            .collect();
        let shares = rules::share(slots.limit, &wants, slots.turn);
        let unstarted: Vec<Uuid> = list
            .iter()
            .zip(&shares)
            .filter(|(c, n)| !c.started && **n > 0)
            .map(|(c, _)| c.id)
            .collect();
        if !unstarted.is_empty() {
            sqlx::query(
                "UPDATE batches SET started_at = now() WHERE id = ANY($1) AND started_at IS NULL",
            )
            .bind(&unstarted)
            .execute(&mut *tx)
            .await?;
        }
        let mut claimed = Vec::new();
        let mut deltas = Vec::new();
        for (c, n) in list.iter().zip(&shares) {
            if *n == 0 {
                continue;
            }
            let rows = sqlx::query(ROW_CLAIM_SQL)
                .bind(c.id)
                .bind(*n)
                .bind(&slots.instance)
                .bind(slots.lease_ms)
                .fetch_all(&mut *tx)
                .await?;
            deltas.push((
                c.id,
                Counts::moved(Some(RowState::Queued), RowState::Inprog, rows.len() as i64),
            ));
            for r in rows {
                claimed.push(ClaimedRow {
                    claim: RowClaim {
                        batch_id: c.id,
                        idx: r.try_get("idx")?,
                        attempt: r.try_get("attempt")?,
                        instance: slots.instance.clone(),
                    },
                    input: r.try_get::<sqlx::types::Json<Value>, _>("input")?.0,
                    handler: c.handler.clone(),
                    context: c.context.clone(),
                    max_retries: c.max_retries,
                    retry_backoff_ms: c.retry_backoff_ms,
                    timeout_ms: c.timeout_ms,
                });
            }
        }
        apply_counts(&mut tx, &deltas_by_batch(deltas)).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Renews the leases of rows this instance holds; an ack per row still
    /// held, saying whether an abort asked it to stop.
    pub async fn batch_rows_heartbeat(
        &self,
        instance: &str,
        lease_ms: i64,
        held: &[RowClaim],
    ) -> StoreResult<Vec<RowAck>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = held.iter().map(|c| c.batch_id).collect();
        let idxs: Vec<i64> = held.iter().map(|c| c.idx).collect();
        let attempts: Vec<i32> = held.iter().map(|c| c.attempt).collect();
        let rows = sqlx::query(
            "WITH held AS (SELECT r.batch_id, r.idx FROM batch_rows r \
               JOIN unnest($1::uuid[], $2::bigint[], $3::int[]) AS h(b, i, a) \
                 ON r.batch_id = h.b AND r.idx = h.i AND r.attempt = h.a \
               WHERE r.state = 'inprog' AND r.instance = $4 \
               ORDER BY r.batch_id, r.idx FOR UPDATE OF r) \
             UPDATE batch_rows r SET lease_expires_at = now() + $5 * interval '1 millisecond' \
             FROM held WHERE r.batch_id = held.batch_id AND r.idx = held.idx \
             RETURNING r.batch_id, r.idx, r.attempt, r.cancel_requested",
        )
        .bind(&ids)
        .bind(&idxs)
        .bind(&attempts)
        .bind(instance)
        .bind(lease_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RowAck {
                    batch_id: r.try_get("batch_id")?,
                    idx: r.try_get("idx")?,
                    attempt: r.try_get("attempt")?,
                    cancel_requested: r.try_get("cancel_requested")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Records the ends of many rows' attempts in one transaction, each
    /// fenced by its claim; returns those written. Then completes the
    /// batches this made final.
    pub async fn batch_rows_finish(
        &self,
        ends: &[(RowClaim, RowEnd)],
    ) -> StoreResult<Vec<(Uuid, i64)>> {
        if ends.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(ends.len());
        let mut idxs = Vec::with_capacity(ends.len());
        let mut attempts = Vec::with_capacity(ends.len());
        let mut instances = Vec::with_capacity(ends.len());
        let mut states = Vec::with_capacity(ends.len());
        let mut results: Vec<Option<String>> = Vec::with_capacity(ends.len());
        let mut errors: Vec<Option<String>> = Vec::with_capacity(ends.len());
        let mut delays = Vec::with_capacity(ends.len());
        let mut backs = Vec::with_capacity(ends.len());
        // In row order: the update below locks the rows in the order of
        // its input (the plan is forced, see below), as every statement
        // locking several rows of batches does, so that no two deadlock.
        let mut sorted: Vec<&(RowClaim, RowEnd)> = ends.iter().collect();
        sorted.sort_by_key(|(c, _)| (c.batch_id, c.idx));
        for (c, e) in sorted {
            ids.push(c.batch_id);
            idxs.push(c.idx);
            attempts.push(c.attempt);
            instances.push(c.instance.clone());
            states.push(e.state().as_str());
            let (result, error, delay, back) = match e {
                RowEnd::Success { result: v, .. } => {
                    (v.as_ref().map(|v| v.to_string()), None, 0, false)
                }
                RowEnd::Failed(err) | RowEnd::Aborted(err) => (None, Some(err.clone()), 0, false),
                RowEnd::Retry { delay_ms, error } => (None, Some(error.clone()), *delay_ms, false),
                RowEnd::HandBack => (None, None, 0, true),
            };
            results.push(result);
            errors.push(error);
            delays.push(delay);
            backs.push(back);
        }
        let mut tx = self.pool.begin().await?;
        // Row ends commit without waiting for the WAL flush: a database
        // crash may lose the last ends written, whose rows then stay
        // running until their lease expires and are run again, as after a
        // replica's crash (rows are at-least-once either way).
        sqlx::query(ROW_FINISH_SETTINGS).execute(&mut *tx).await?;
        let rows = sqlx::query(ROW_FINISH_SQL)
            .bind(&ids)
            .bind(&idxs)
            .bind(&attempts)
            .bind(&instances)
            .bind(&states)
            .bind(&results)
            .bind(&errors)
            .bind(&delays)
            .bind(&backs)
            .fetch_all(&mut *tx)
            .await?;
        let mut written = Vec::with_capacity(rows.len());
        let mut moves = Vec::with_capacity(rows.len());
        let mut requeued = false;
        for r in &rows {
            let id: Uuid = r.try_get("batch_id")?;
            let state = row_state(r)?;
            requeued |= state == RowState::Queued;
            written.push((id, r.try_get("idx")?));
            moves.push((id, Counts::moved(Some(RowState::Inprog), state, 1)));
        }
        let deltas = deltas_by_batch(moves);
        store_files(&mut tx, ends, &written).await?;
        apply_counts(&mut tx, &deltas).await?;
        tx.commit().await?;
        if requeued {
            self.notify(&Notice::runs_queued()).await?;
        }
        let touched: Vec<Uuid> = deltas.iter().map(|(id, _)| *id).collect();
        self.batch_settle(&touched).await?;
        Ok(written)
    }

    /// Rows whose lease expired (their instance died): queued again, or
    /// failed past `rules::rescue`'s bound. How many.
    pub async fn batch_rows_rescue_expired(&self, limit: i64) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT r.batch_id, r.idx, r.attempt, b.max_retries FROM batch_rows r \
               JOIN batches b ON b.id = r.batch_id \
             WHERE r.state = 'inprog' AND r.lease_expires_at < now() \
             ORDER BY r.batch_id, r.idx LIMIT $1 FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let (mut ids, mut idxs, mut states) = (Vec::new(), Vec::new(), Vec::new());
        let mut moves = Vec::new();
        for r in &rows {
            let id: Uuid = r.try_get("batch_id")?;
            let to = rules::rescue(r.try_get("attempt")?, r.try_get("max_retries")?);
            ids.push(id);
            idxs.push(r.try_get::<i64, _>("idx")?);
            states.push(to.as_str());
            moves.push((id, Counts::moved(Some(RowState::Inprog), to, 1)));
        }
        sqlx::query(
            "UPDATE batch_rows r SET state = x.st, instance = NULL, lease_expires_at = NULL, \
               error = 'lease expired: the instance running it stopped renewing', \
               finished_at = CASE WHEN x.st = 'queued' THEN NULL ELSE now() END, \
               available_at = now() \
             FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS x(b, i, st) \
             WHERE r.batch_id = x.b AND r.idx = x.i",
        )
        .bind(&ids)
        .bind(&idxs)
        .bind(&states)
        .execute(&mut *tx)
        .await?;
        let deltas = deltas_by_batch(moves);
        apply_counts(&mut tx, &deltas).await?;
        tx.commit().await?;
        self.notify(&Notice::runs_queued()).await?;
        let touched: Vec<Uuid> = deltas.iter().map(|(id, _)| *id).collect();
        self.batch_settle(&touched).await?;
        Ok(rows.len() as u64)
    }

    /// Completes the batches among `ids` that are final now (wait-off or
    /// aborted, no row queued or running), with their `batch.completed`
    /// event; an aborted batch's rows queued since (a retry that raced the
    /// abort) are aborted first. Returns the batches completed. Safe to
    /// call at any time, from any replica: it decides under the batch's
    /// row lock, after the changes it follows have committed.
    pub async fn batch_settle(&self, ids: &[Uuid]) -> StoreResult<Vec<BatchRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // First without a lock (and without a write to flush): only a
        // batch that looks final now, or an aborted one (whose rows queued
        // since need aborting), is decided under its row lock. A batch made
        // final by a transaction that commits after this read is settled by
        // that transaction's own settle, which sees this one's changes.
        let looks = sqlx::query(
            "SELECT b.id, b.waitoff_at IS NOT NULL AS waitoff, b.aborted_at IS NOT NULL AS aborted, \
               c.queued, c.inprog FROM batches b CROSS JOIN LATERAL ( \
                 SELECT coalesce(sum(queued), 0)::bigint AS queued, \
                   coalesce(sum(inprog), 0)::bigint AS inprog \
                 FROM batch_counts WHERE batch_id = b.id) c \
             WHERE b.id = ANY($1) AND b.finished_at IS NULL \
               AND (b.waitoff_at IS NOT NULL OR b.aborted_at IS NOT NULL)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        let mut due = Vec::new();
        for r in &looks {
            let counts = Counts {
                queued: r.try_get("queued")?,
                inprog: r.try_get("inprog")?,
                ..Counts::default()
            };
            let (waitoff, aborted) = (r.try_get("waitoff")?, r.try_get("aborted")?);
            if aborted || rules::completes(&counts, waitoff, aborted) {
                due.push(r.try_get::<Uuid, _>("id")?);
            }
        }
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let open = sqlx::query(
            "SELECT id, waitoff_at IS NOT NULL AS waitoff, aborted_at IS NOT NULL AS aborted \
             FROM batches WHERE id = ANY($1) AND finished_at IS NULL \
               AND (waitoff_at IS NOT NULL OR aborted_at IS NOT NULL) ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(&due)
        .fetch_all(&mut *tx)
        .await?;
        if open.is_empty() {
            return Ok(Vec::new());
        }
        let mut facts = Vec::new();
        for r in &open {
            facts.push((
                r.try_get::<Uuid, _>("id")?,
                r.try_get::<bool, _>("waitoff")?,
                r.try_get::<bool, _>("aborted")?,
            ));
        }
        let aborted: Vec<Uuid> = facts.iter().filter(|f| f.2).map(|f| f.0).collect();
        if !aborted.is_empty() {
            let swept = sqlx::query(
                "UPDATE batch_rows SET state = 'aborted', finished_at = now() \
                 WHERE batch_id = ANY($1) AND state = 'queued' RETURNING batch_id",
            )
            .bind(&aborted)
            .fetch_all(&mut *tx)
            .await?;
            let mut moves = Vec::new();
            for r in &swept {
                moves.push((
                    r.try_get::<Uuid, _>("batch_id")?,
                    Counts::moved(Some(RowState::Queued), RowState::Aborted, 1),
                ));
            }
            apply_counts(&mut tx, &deltas_by_batch(moves)).await?;
        }
        let all: Vec<Uuid> = facts.iter().map(|f| f.0).collect();
        let counts = counts_of(&mut tx, &all).await?;
        let mut done = Vec::new();
        for (id, waitoff, aborted) in facts {
            let c = counts.get(&id).copied().unwrap_or_default();
            if !rules::completes(&c, waitoff, aborted) {
                continue;
            }
            let outcome = if aborted {
                BatchStatus::Aborted
            } else {
                rules::final_outcome(&c)
            };
            sqlx::query(
                "UPDATE batches SET outcome = $2, finished_at = now(), \
                   started_at = coalesce(started_at, now()) WHERE id = $1",
            )
            .bind(id)
            .bind(outcome.as_str())
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query(&format!("{SELECT_BATCH} WHERE b.id = $1"))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            let batch = batch_from_row(&row)?;
            write_event(&mut tx, "batch.completed", &batch.summary()).await?;
            done.push(batch);
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Open batches with wait-off or an abort (to settle them after a
    /// crash between a row end and its settle).
    pub async fn batches_unsettled(&self, limit: i64) -> StoreResult<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM batches WHERE finished_at IS NULL \
               AND (waitoff_at IS NOT NULL OR aborted_at IS NOT NULL) ORDER BY created_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes up to `limit` rows of batches final before `cutoff`, then
    /// those batches once they have no rows left; how many of each went.
    pub async fn batches_prune_finished_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> StoreResult<u64> {
        let rows = sqlx::query(
            "DELETE FROM batch_rows WHERE (batch_id, idx) IN (SELECT r.batch_id, r.idx \
               FROM batches b JOIN batch_rows r ON r.batch_id = b.id \
               WHERE b.finished_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if rows as i64 >= limit {
            return Ok(rows);
        }
        let batches = sqlx::query(
            "DELETE FROM batches WHERE id IN (SELECT id FROM batches b WHERE finished_at < $1 \
               AND NOT EXISTS (SELECT 1 FROM batch_rows r WHERE r.batch_id = b.id) LIMIT $2)",
        )
        .bind(cutoff)
        .bind(limit - rows as i64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(rows + batches)
    }

    /// The counters of a batch beside a `count(*)` of its rows.
    pub async fn batch_counts_check(&self, id: Uuid) -> StoreResult<BatchCountsCheck> {
        let counters = self.batch_get(id).await?.counts;
        let by_state: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM batch_rows WHERE batch_id = $1 GROUP BY state",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut rows = Counts::default();
        for (state, n) in by_state {
            let state = RowState::parse(&state).ok_or_else(|| decode_err("state", &state))?;
            rows = rows.plus(&Counts::moved(None, state, n));
        }
        Ok(BatchCountsCheck { counters, rows })
    }
}
