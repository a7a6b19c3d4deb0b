//! `/api/v1/batches` (issue #15, SPEC §10): submit a batch of rows for a
//! handler (a JSON body, or an NDJSON body streamed in), append rows, set
//! wait-off, abort, read the status and counts, the rows, and the outputs
//! (streamed as NDJSON or CSV). Bad input is refused whole, naming the
//! row, and stores nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{parse_json, QueryParams};
use super::AppState;
use crate::batches::csv::Columns;
use crate::batches::ndjson;
use crate::batches::{BatchStatus, Counts, RowState};
use crate::handlers::{Handler, HandlerRegistry};
use crate::job_spec::FieldError;
use crate::schedule::{duration_from_json, format_duration};
use crate::store::{BatchFilter, BatchRow, NewBatch, NewRows, RowFilter, RowRecord, Store};

/// Rows staged per transaction while an NDJSON body streams in.
const STAGE_ROWS: usize = 2000;
/// Rows read per page of an output stream.
const OUTPUT_PAGE: i64 = 1000;
const NDJSON: &str = "application/x-ndjson";

#[derive(OpenApi)]
#[openapi(
    paths(
        create_batch,
        list_batches,
        get_batch,
        delete_batch,
        append_rows,
        waitoff,
        abort,
        list_rows,
        output
    ),
    components(schemas(
        CreateBatch,
        AppendRows,
        BatchView,
        BatchEnvelope,
        BatchList,
        RowView,
        RowList,
        BatchStatus,
        RowState,
        Counts
    ))
)]
pub struct BatchesApi;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/batches", get(list_batches).post(create_batch))
        .route("/batches/{id}", get(get_batch).delete(delete_batch))
        .route("/batches/{id}/rows", get(list_rows).post(append_rows))
        .route("/batches/{id}/waitoff", post(waitoff))
        .route("/batches/{id}/abort", post(abort))
        .route("/batches/{id}/output", get(output))
}

/// A batch to submit (a JSON body). With an NDJSON body the same fields
/// but `rows` are query parameters (`context` as JSON text).
#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// A registered handler (matched case-insensitively), called once per row
    /// with the row as its kwargs.
    #[schema(example = "log")]
    pub handler: String,
    /// Passed to every row's call beside the row (`RunContext::batch`).
    #[serde(default)]
    #[schema(value_type = Object)]
    #[param(value_type = Option<String>)]
    pub context: Option<Value>,
    /// The rows: each a JSON value, validated against the handler's kwargs schema.
    #[serde(default)]
    #[schema(value_type = Vec<Object>, example = json!([{"message": "a"}, {"message": "b"}]))]
    #[param(ignore)]
    pub rows: Vec<Value>,
    /// No rows will be appended: the batch completes once these are final.
    #[serde(default)]
    pub waitoff: bool,
    /// Retries of a failed row (default 0).
    pub max_retries: Option<i32>,
    /// Backoff before a retry (a duration, e.g. `"2s"`; default 1 s).
    #[schema(value_type = Option<String>)]
    #[param(value_type = Option<String>)]
    pub retry_backoff: Option<Value>,
    /// Time limit of one row's attempt (a duration; default none).
    #[schema(value_type = Option<String>)]
    #[param(value_type = Option<String>)]
    pub timeout: Option<Value>,
    /// Rows of this batch running at once across all replicas (default: no bound).
    pub max_parallel: Option<i32>,
}

/// Rows to append (a JSON body); or an NDJSON body, one row a line.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendRows {
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchView {
    pub batch_id: Uuid,
    pub handler: String,
    #[schema(value_type = Object)]
    pub context: Value,
    pub status: BatchStatus,
    /// Counters kept in the same transaction as each row change: total = the sum of the rest.
    pub counts: Counts,
    /// Final rows as a fraction of all (1 for a batch without rows).
    pub progress: f64,
    pub waitoff: bool,
    pub max_retries: i32,
    pub retry_backoff: String,
    pub timeout: Option<String>,
    pub max_parallel: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub waitoff_at: Option<DateTime<Utc>>,
    pub aborted_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The names of its output files (rows' `$files`), sorted; each is
    /// `GET /api/v1/batches/{id}/files/{name}`.
    #[schema(example = json!(["scores.csv"]))]
    pub output_files: Vec<String>,
}

impl From<BatchRow> for BatchView {
    fn from(b: BatchRow) -> Self {
        let ms = |ms: i64| format_duration(chrono::Duration::milliseconds(ms));
        BatchView {
            batch_id: b.id,
            status: b.status(),
            progress: if b.is_final() {
                1.0
            } else {
                b.counts.progress()
            },
            counts: b.counts,
            waitoff: b.waitoff_at.is_some(),
            max_retries: b.max_retries,
            retry_backoff: ms(b.retry_backoff_ms),
            timeout: b.timeout_ms.map(ms),
            max_parallel: b.max_parallel,
            created_at: b.created_at,
            started_at: b.started_at,
            waitoff_at: b.waitoff_at,
            aborted_at: b.aborted_at,
            finished_at: b.finished_at,
            output_files: b.output_files,
            handler: b.handler,
            context: b.context,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchEnvelope {
    pub batch: BatchView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchList {
    pub batches: Vec<BatchView>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RowView {
    /// The row's index in the batch, from 0, in the order rows came.
    pub row: i64,
    #[schema(value_type = Object)]
    pub input: Value,
    pub status: RowState,
    pub attempts: i32,
    pub instance: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RowList {
    pub rows: Vec<RowView>,
    pub next_cursor: Option<String>,
}

fn row_view(r: RowRecord, registry: &HandlerRegistry, handler: &str) -> RowView {
    RowView {
        row: r.idx,
        input: registry.redact_kwargs(handler, &r.input),
        status: r.state,
        attempts: r.attempt,
        instance: r.instance,
        result: r.result,
        error: r.error,
        started_at: r.started_at,
        finished_at: r.finished_at,
    }
}

pub(super) fn batch_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no batch {raw:?}")))
}

pub(super) fn missing(id: Uuid) -> impl FnOnce() -> String {
    move || format!("no batch {id}")
}

/// The registered handler `name` names, case-insensitively.
fn find_handler(registry: &HandlerRegistry, name: &str) -> ApiResult<Arc<dyn Handler>> {
    let handler = registry
        .get(name)
        .or_else(|| {
            registry
                .iter()
                .find(|h| h.name().eq_ignore_ascii_case(name))
        })
        .cloned()
        .ok_or_else(|| {
            let known: Vec<&str> = registry
                .iter()
                .filter(|h| !h.inert())
                .map(|h| h.name())
                .collect();
            ApiError::invalid(vec![FieldError {
                field: "handler".into(),
                message: format!("unknown handler {name:?}; registered: {}", known.join(", ")),
            }])
        })?;
    if handler.inert() {
        return Err(ApiError::bad_request(format!(
            "handler {:?} is inert and runs nothing",
            handler.name()
        )));
    }
    if let Some(reason) = handler.disabled_reason() {
        return Err(ApiError::bad_request(format!(
            "handler {:?} is disabled: {reason}",
            handler.name()
        )));
    }
    Ok(handler)
}

/// 400 naming row `row` (of this request).
fn bad_row(row: i64, message: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(
        format!("row {row}: {message}; nothing was stored"),
        vec![FieldError {
            field: format!("rows/{row}"),
            message: message.to_string(),
        }],
    )
}

/// Checks one row against the handler's kwargs rules and size bound.
fn check_row(registry: &HandlerRegistry, handler: &str, row: i64, value: &Value) -> ApiResult<()> {
    let max = registry.max_kwargs_bytes();
    if value.to_string().len() > max {
        return Err(bad_row(
            row,
            format!("larger than the kwargs limit of {max} bytes"),
        ));
    }
    registry
        .validate_kwargs(handler, value)
        .map_err(|problems| bad_row(row, problems.join("; ")))
}

fn millis(field: &str, value: &Option<Value>, zero_ok: bool) -> ApiResult<Option<i64>> {
    let Some(value) = value.as_ref().filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let d = duration_from_json(value).map_err(|e| {
        ApiError::invalid(vec![FieldError {
            field: field.into(),
            message: e.to_string(),
        }])
    })?;
    let ms = d.num_milliseconds();
    if ms < 1 && !zero_ok {
        return Err(ApiError::invalid(vec![FieldError {
            field: field.into(),
            message: "must be at least 1 ms".into(),
        }]));
    }
    Ok(Some(ms))
}

/// The batch a request describes (rows aside), checked.
fn new_batch(registry: &HandlerRegistry, req: &CreateBatch) -> ApiResult<NewBatch> {
    let handler = find_handler(registry, &req.handler)?;
    let mut problems = Vec::new();
    if req.max_retries.is_some_and(|n| !(0..=1000).contains(&n)) {
        problems.push(FieldError {
            field: "max_retries".into(),
            message: "must be between 0 and 1000".into(),
        });
    }
    if req.max_parallel.is_some_and(|n| n < 1) {
        problems.push(FieldError {
            field: "max_parallel".into(),
            message: "must be at least 1 (omit it for no bound)".into(),
        });
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    Ok(NewBatch {
        id: Uuid::now_v7(),
        handler: handler.name().to_string(),
        context: req.context.clone().unwrap_or(Value::Null),
        max_retries: req.max_retries.unwrap_or(0),
        retry_backoff_ms: millis("retry_backoff", &req.retry_backoff, true)?.unwrap_or(1000),
        timeout_ms: millis("timeout", &req.timeout, false)?,
        max_parallel: req.max_parallel,
        waitoff: req.waitoff,
    })
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case(NDJSON) || t.eq_ignore_ascii_case("application/jsonl")
        })
}

/// Where a request's rows went: inline (few) or staged under an upload.
enum Received {
    Inline(Vec<Value>),
    Staged(Uuid),
}

impl Received {
    fn rows(&self) -> NewRows<'_> {
        match self {
            Received::Inline(rows) => NewRows::Inline(rows),
            Received::Staged(upload) => NewRows::Staged(*upload),
        }
    }
}

/// Streams an NDJSON body in: every row checked, staged in chunks (only
/// when there are more than one chunk's worth); on any problem the upload
/// is dropped and nothing is stored.
async fn receive_ndjson(app: &AppState, handler: &str, body: Body) -> ApiResult<Received> {
    let mut upload = None;
    let result = stream_rows(app, handler, body, &mut upload).await;
    if result.is_err() {
        if let Some(id) = upload {
            if let Err(e) = app.store.batch_upload_discard(id).await {
                tracing::warn!(error = %e, "dropping a refused upload failed; retention removes it");
            }
        }
    }
    result
}

async fn stream_rows(
    app: &AppState,
    handler: &str,
    body: Body,
    upload: &mut Option<Uuid>,
) -> ApiResult<Received> {
    let limit = app.batch_limits.max_ndjson_bytes;
    let max_row = app.registry.max_kwargs_bytes();
    let mut reader = ndjson::Rows::default();
    let mut chunk: Vec<Value> = Vec::with_capacity(STAGE_ROWS);
    let mut staged: i64 = 0;
    let mut read: u64 = 0;
    let mut stream = body.into_data_stream();
    let mut ended = false;
    while !ended {
        let rows = match stream.next().await {
            Some(Ok(bytes)) => {
                read += bytes.len() as u64;
                if read > limit {
                    return Err(ApiError::PayloadTooLarge(format!(
                        "the body is larger than --max-batch-bytes ({limit} bytes), at row {}; nothing was stored",
                        reader.count()
                    )));
                }
                reader.push(&bytes, max_row)
            }
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "reading the body failed at row {}: {e}",
                    reader.count()
                )))
            }
            None => {
                ended = true;
                reader.finish(max_row).map(|last| last.into_iter().collect())
            }
        }
        .map_err(|e| bad_row(e.row, e.message))?;
        for row in rows {
            check_row(&app.registry, handler, staged + chunk.len() as i64, &row)?;
            chunk.push(row);
            if chunk.len() == STAGE_ROWS {
                let id = match *upload {
                    Some(id) => id,
                    None => *upload.insert(app.store.batch_upload_begin().await?),
                };
                app.store.batch_upload_stage(id, staged, &chunk).await?;
                staged += chunk.len() as i64;
                chunk.clear();
            }
        }
    }
    match *upload {
        None => Ok(Received::Inline(chunk)),
        Some(id) => {
            if !chunk.is_empty() {
                app.store.batch_upload_stage(id, staged, &chunk).await?;
            }
            Ok(Received::Staged(id))
        }
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(app: &AppState, body: Body) -> ApiResult<T> {
    let limit = app.batch_limits.max_json_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::PayloadTooLarge(format!(
            "the body is larger than {limit} bytes; send many rows as NDJSON \
             (Content-Type: application/x-ndjson), which --max-batch-bytes bounds"
        ))
    })?;
    parse_json(&bytes)
}

fn check_rows(registry: &HandlerRegistry, handler: &str, rows: &[Value]) -> ApiResult<()> {
    for (i, row) in rows.iter().enumerate() {
        check_row(registry, handler, i as i64, row)?;
    }
    Ok(())
}

/// Publishes what was received, dropping a staged upload if that fails.
async fn publish<F, Fut>(app: &AppState, received: Received, write: F) -> ApiResult<BatchRow>
where
    F: FnOnce(Store, Received) -> Fut,
    Fut: std::future::Future<Output = (Received, crate::store::StoreResult<BatchRow>)>,
{
    let (received, result) = write(app.store.clone(), received).await;
    if result.is_err() {
        if let Received::Staged(id) = received {
            let _ = app.store.batch_upload_discard(id).await;
        }
    }
    Ok(result?)
}

/// Submit a batch
///
/// Rows as a JSON body (`rows`), or as an NDJSON body
/// (`Content-Type: application/x-ndjson`, one row a line, the other fields
/// as query parameters), streamed in up to `--max-batch-bytes`. Atomic:
/// every row is checked against the handler's kwargs schema first, and a
/// bad one is refused naming its index, storing nothing.
#[utoipa::path(
    post,
    path = "/api/v1/batches",
    tag = "batches",
    params(CreateBatch),
    request_body(content = CreateBatch, description = "The batch, or NDJSON rows (application/x-ndjson) with the fields as query parameters"),
    responses(
        (status = 201, body = BatchEnvelope),
        (status = 400, description = "Unknown handler or a bad row (named)", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody)
    )
)]
async fn create_batch(State(app): State<AppState>, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let (new, received) = if is_ndjson(&parts.headers) {
        let query = parts.uri.query().unwrap_or_default();
        let mut q: CreateBatchQuery = serde_urlencoded_query(query)?;
        let context = match q.context.take() {
            Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                ApiError::invalid(vec![FieldError {
                    field: "context".into(),
                    message: format!("not JSON: {e}"),
                }])
            })?),
            None => None,
        };
        let req = CreateBatch {
            handler: q.handler,
            context,
            rows: Vec::new(),
            waitoff: q.waitoff.unwrap_or(false),
            max_retries: q.max_retries,
            retry_backoff: q.retry_backoff.map(Value::String),
            timeout: q.timeout.map(Value::String),
            max_parallel: q.max_parallel,
        };
        let new = new_batch(&app.registry, &req)?;
        let received = receive_ndjson(&app, &new.handler, body).await?;
        (new, received)
    } else {
        let mut req: CreateBatch = read_json(&app, body).await?;
        let new = new_batch(&app.registry, &req)?;
        check_rows(&app.registry, &new.handler, &req.rows)?;
        (new, Received::Inline(std::mem::take(&mut req.rows)))
    };
    let batch = publish(&app, received, |store, received| async move {
        let result = store.batch_create(&new, received.rows()).await;
        (received, result)
    })
    .await?;
    app.metrics.batch_created();
    let location = format!("/api/v1/batches/{}", batch.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(BatchEnvelope {
            batch: batch.into(),
        }),
    )
        .into_response())
}

/// The query parameters of an NDJSON submit (`context` as JSON text).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBatchQuery {
    handler: String,
    context: Option<String>,
    waitoff: Option<bool>,
    max_retries: Option<i32>,
    retry_backoff: Option<String>,
    timeout: Option<String>,
    max_parallel: Option<i32>,
}

fn serde_urlencoded_query<T: serde::de::DeserializeOwned>(query: &str) -> ApiResult<T> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| ApiError::bad_request("invalid query string"))?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
}

/// Append rows
///
/// As a JSON body (`{"rows": [...]}`) or NDJSON. Atomic; 409 once wait-off
/// is set, or the batch is aborted or final.
#[utoipa::path(
    post,
    path = "/api/v1/batches/{id}/rows",
    tag = "batches",
    params(("id" = Uuid, Path)),
    request_body = AppendRows,
    responses(
        (status = 200, body = BatchEnvelope),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Wait-off set, aborted or final", body = ErrorBody),
        (status = 413, body = ErrorBody)
    )
)]
async fn append_rows(
    State(app): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Json<BatchEnvelope>> {
    let id = batch_id(&id)?;
    let current = app
        .store
        .batch_get(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    if let Some(why) = crate::batches::rules::append_refusal(
        current.waitoff_at.is_some(),
        current.aborted_at.is_some(),
        current.is_final(),
    ) {
        return Err(ApiError::Conflict(why.to_string()));
    }
    let (parts, body) = req.into_parts();
    let received = if is_ndjson(&parts.headers) {
        receive_ndjson(&app, &current.handler, body).await?
    } else {
        let req: AppendRows = read_json(&app, body).await?;
        check_rows(&app.registry, &current.handler, &req.rows)?;
        Received::Inline(req.rows)
    };
    let batch = publish(&app, received, |store, received| async move {
        let result = store.batch_append(id, received.rows()).await;
        (received, result)
    })
    .await
    .map_err(|e| match e {
        ApiError::NotFound(_) => ApiError::NotFound(missing(id)()),
        other => other,
    })?;
    Ok(Json(BatchEnvelope {
        batch: batch.into(),
    }))
}

/// Set wait-off
///
/// No more rows will come: the batch completes once every row is final.
#[utoipa::path(
    post,
    path = "/api/v1/batches/{id}/waitoff",
    tag = "batches",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = BatchEnvelope), (status = 404, body = ErrorBody))
)]
async fn waitoff(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<BatchEnvelope>> {
    let id = batch_id(&id)?;
    let batch = app
        .store
        .batch_waitoff(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    Ok(Json(BatchEnvelope {
        batch: batch.into(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AbortQuery {
    /// Also cancel the rows running now (they end `aborted`); otherwise they finish.
    pub cancel_running: Option<bool>,
}

/// Abort a batch
///
/// Queued rows become `aborted` at once; running rows finish, or are
/// cancelled with `cancel_running=true`. The counts stay exact while
/// workers finish rows at the same moment. 409 for a batch final already.
#[utoipa::path(
    post,
    path = "/api/v1/batches/{id}/abort",
    tag = "batches",
    params(("id" = Uuid, Path), AbortQuery),
    responses(
        (status = 200, body = BatchEnvelope),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)
    )
)]
async fn abort(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<AbortQuery>,
) -> ApiResult<Json<BatchEnvelope>> {
    let id = batch_id(&id)?;
    let cancel = q.cancel_running.unwrap_or(false);
    let batch = app
        .store
        .batch_abort(id, cancel)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    if cancel {
        app.workers.stop_batch(id);
    }
    Ok(Json(BatchEnvelope {
        batch: batch.into(),
    }))
}

/// A batch: status, counts, times
#[utoipa::path(
    get,
    path = "/api/v1/batches/{id}",
    tag = "batches",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = BatchEnvelope), (status = 404, body = ErrorBody))
)]
async fn get_batch(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<BatchEnvelope>> {
    let id = batch_id(&id)?;
    let batch = app
        .store
        .batch_get(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    Ok(Json(BatchEnvelope {
        batch: batch.into(),
    }))
}

/// Delete a final batch and its rows
#[utoipa::path(
    delete,
    path = "/api/v1/batches/{id}",
    tag = "batches",
    params(("id" = Uuid, Path)),
    responses(
        (status = 204),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Not final", body = ErrorBody)
    )
)]
async fn delete_batch(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = batch_id(&id)?;
    app.store
        .batch_delete(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub handler: Option<String>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// 1 to 500 (default 50).
    pub limit: Option<i64>,
}

fn limit_of(limit: Option<i64>, default: i64, max: i64) -> ApiResult<i64> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("limit {n}: use 1 to {max}"))),
    }
}

fn parse_status(raw: Option<&str>) -> ApiResult<Option<BatchStatus>> {
    raw.map(|s| {
        BatchStatus::parse(s).ok_or_else(|| {
            let all: Vec<&str> = BatchStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(format!("status {s:?}: use one of {}", all.join(", ")))
        })
    })
    .transpose()
}

/// Batches, newest first
#[utoipa::path(
    get,
    path = "/api/v1/batches",
    tag = "batches",
    params(ListQuery),
    responses((status = 200, body = BatchList), (status = 400, body = ErrorBody))
)]
async fn list_batches(
    State(app): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<BatchList>> {
    let limit = limit_of(q.limit, 50, 500)?;
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            let bad = || ApiError::bad_request(format!("cursor {c:?} is not one this API gave"));
            let (us, id) = c.split_once('_').ok_or_else(bad)?;
            let us: i64 = us.parse().map_err(|_| bad())?;
            let at = DateTime::<Utc>::from_timestamp_micros(us).ok_or_else(bad)?;
            Some((at, id.parse().map_err(|_| bad())?))
        }
    };
    let handler = q.handler.as_deref().map(|h| {
        app.registry
            .iter()
            .find(|r| r.name().eq_ignore_ascii_case(h))
            .map(|r| r.name().to_string())
            .unwrap_or_else(|| h.to_string())
    });
    let filter = BatchFilter {
        status: parse_status(q.status.as_deref())?,
        handler,
        before,
        limit,
    };
    let batches = app.store.batch_list(&filter).await?;
    let next_cursor = (batches.len() as i64 == limit)
        .then(|| batches.last())
        .flatten()
        .map(|b| format!("{}_{}", b.created_at.timestamp_micros(), b.id));
    Ok(Json(BatchList {
        batches: batches.into_iter().map(BatchView::from).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RowsQuery {
    /// queued, inprog, success, failed or aborted.
    pub status: Option<String>,
    pub cursor: Option<String>,
    /// 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// Rows of a batch in row order
#[utoipa::path(
    get,
    path = "/api/v1/batches/{id}/rows",
    tag = "batches",
    params(("id" = Uuid, Path), RowsQuery),
    responses(
        (status = 200, body = RowList),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)
    )
)]
async fn list_rows(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<RowsQuery>,
) -> ApiResult<Json<RowList>> {
    let id = batch_id(&id)?;
    let limit = limit_of(q.limit, 100, 1000)?;
    let state = q
        .status
        .as_deref()
        .map(|s| {
            RowState::parse(s).ok_or_else(|| {
                let all: Vec<&str> = RowState::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::bad_request(format!("status {s:?}: use one of {}", all.join(", ")))
            })
        })
        .transpose()?;
    let after_idx = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("cursor {c:?} is not one this API gave"))
            })
        })
        .transpose()?;
    let batch = app
        .store
        .batch_get(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    let rows = app
        .store
        .batch_rows_list(
            id,
            &RowFilter {
                state,
                after_idx,
                limit,
            },
        )
        .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last())
        .flatten()
        .map(|r| r.idx.to_string());
    Ok(Json(RowList {
        rows: rows
            .into_iter()
            .map(|r| row_view(r, &app.registry, &batch.handler))
            .collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    /// `ndjson` (default) or `csv`.
    pub format: Option<String>,
}

/// The rows' outputs, streamed
///
/// In row order, one line per row whose handler returned an output
/// (`{"row": 3, "result": ...}` in NDJSON); rows without output are left
/// out and no empty lines appear. `format=csv` flattens object results
/// into columns. Streamed from the database a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/batches/{id}/output",
    tag = "batches",
    params(("id" = Uuid, Path), OutputQuery),
    responses(
        (status = 200, description = "NDJSON or CSV", content_type = "application/x-ndjson"),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)
    )
)]
async fn output(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<OutputQuery>,
) -> ApiResult<Response> {
    let id = batch_id(&id)?;
    let csv = match q.format.as_deref() {
        None | Some("ndjson") | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format {other:?}: use ndjson or csv"
            )))
        }
    };
    app.store
        .batch_get(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    let store = app.store.clone();
    let (body, content_type) = if csv {
        // First pass: the columns (bounded); second: the lines.
        let mut columns = Columns::default();
        let mut after = None;
        loop {
            let page = store.batch_output_page(id, after, OUTPUT_PAGE).await?;
            for (_, result) in &page {
                columns.add(result);
            }
            match page.last() {
                Some((idx, _)) if page.len() as i64 == OUTPUT_PAGE => after = Some(*idx),
                _ => break,
            }
        }
        let header = futures::stream::once(futures::future::ready(Ok::<_, std::io::Error>(
            axum::body::Bytes::from(columns.header()),
        )));
        let columns = Arc::new(columns);
        let lines = pages(store, id).map(move |page| {
            page.map(|rows| {
                let mut text = String::new();
                for (idx, result) in &rows {
                    text.push_str(&columns.line(*idx, result));
                }
                axum::body::Bytes::from(text)
            })
        });
        (
            Body::from_stream(header.chain(lines)),
            "text/csv; charset=utf-8",
        )
    } else {
        let lines = pages(store, id).map(|page| {
            page.map(|rows| {
                let mut text = String::new();
                for (idx, result) in rows {
                    let line = serde_json::json!({"row": idx, "result": result});
                    text.push_str(&line.to_string());
                    text.push('\n');
                }
                axum::body::Bytes::from(text)
            })
        });
        (Body::from_stream(lines), NDJSON)
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// A batch's rows read a page at a time by `read` (the rows after the
/// given index, at most `limit`), until a page comes back short. A failed
/// read ends the stream with an error (the client sees the body cut short,
/// not a partial answer passed off as whole); `what` names it in the log.
pub(super) fn row_pages<T, F, Fut>(
    id: Uuid,
    what: &'static str,
    limit: i64,
    read: F,
) -> impl futures::Stream<Item = Result<Vec<(i64, T)>, std::io::Error>>
where
    F: Fn(Option<i64>) -> Fut + Clone,
    Fut: std::future::Future<Output = crate::store::StoreResult<Vec<(i64, T)>>>,
{
    futures::stream::unfold(Some(None::<i64>), move |state| {
        let read = read.clone();
        async move {
            let after = state?;
            match read(after).await {
                Ok(page) => {
                    let next = match page.last() {
                        Some((idx, _)) if page.len() as i64 == limit => Some(Some(*idx)),
                        _ => None,
                    };
                    if page.is_empty() {
                        return None;
                    }
                    Some((Ok(page), next))
                }
                Err(e) => {
                    tracing::error!(error = %e, batch_id = %id, "reading a batch's {what} failed");
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
            }
        }
    })
}

/// The output pages of a batch.
fn pages(
    store: Store,
    id: Uuid,
) -> impl futures::Stream<Item = Result<Vec<(i64, Value)>, std::io::Error>> {
    row_pages(id, "output", OUTPUT_PAGE, move |after| {
        let store = store.clone();
        async move { store.batch_output_page(id, after, OUTPUT_PAGE).await }
    })
}
