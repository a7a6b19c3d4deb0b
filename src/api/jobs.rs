//! `/api/v1/jobs`: create, list, read, change, pause/resume and delete jobs.

use axum::extract::DefaultBodyLimit;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{JsonBody, QueryParams};
use super::job_view::{JobEnvelope, JobList, JobView, LastRun, Removed, RemovedFailed};
use super::AppState;
use crate::audit::AuditNote;
use crate::domain::JobState;
use crate::handlers::ERROR_HANDLER;
use crate::idempotency::{opt_in, Idempotency};
use crate::job_spec::{
    carry_over_timing, keep_fired_one_shot_done, next_run_on_resume, FieldError, JobSpec,
    ValidationContext,
};
use crate::store::{JobFilter, JobRow, JobType, NewJob, StoreError, StoreResult};

#[derive(OpenApi)]
#[openapi(
    paths(
        list_jobs,
        create_job,
        create_jobs_bulk,
        get_job,
        set_job_state,
        patch_job,
        delete_job,
        clean_failed
    ),
    components(schemas(
        JobView,
        LastRun,
        JobEnvelope,
        JobList,
        JobSpec,
        JobType,
        Removed,
        RemovedFailed,
        BulkCreate,
        BulkCreated
    ))
)]
pub struct JobsApi;

/// `bulk_body_bytes` bounds the body of `POST /jobs/bulk`.
/// `POST /jobs` honours `Idempotency-Key` (`crate::idempotency`).
pub fn router(bulk_body_bytes: usize, idempotency: &Idempotency) -> Router<AppState> {
    Router::new()
        .route(
            "/jobs",
            get(list_jobs).merge(opt_in(post(create_job), idempotency)),
        )
        .route(
            "/jobs/bulk",
            post(create_jobs_bulk).layer(DefaultBodyLimit::max(bulk_body_bytes)),
        )
        .route("/jobs/clean-failed", delete(clean_failed))
        .route(
            "/jobs/{id}",
            get(get_job)
                .post(create_job_for_handler)
                .put(set_job_state)
                .patch(patch_job)
                .delete(delete_job),
        )
}

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `all` (default), `failed` (failure records) or `user` (the others).
    pub job_type: Option<JobType>,
    /// Only jobs of this handler.
    pub handler: Option<String>,
    /// Only jobs in this state (`running`, `paused`, `completed`).
    pub state: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<i64>,
    /// Jobs to skip (default 0).
    pub offset: Option<i64>,
}

/// List jobs
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)))]
async fn list_jobs(
    State(app): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<JobList>> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and {MAX_PAGE}"
        )));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request("offset: must not be negative"));
    }
    let state = match q.state.as_deref() {
        None => None,
        // `active` is the original service's name for running.
        Some("active") => Some(JobState::Running),
        Some(other) if other.parse::<JobState>().is_ok() => other.parse().ok(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state: unknown state {other:?}; use running, paused or completed"
            )))
        }
    };
    let filter = JobFilter {
        job_type: q.job_type.unwrap_or_default(),
        handler: q.handler,
        state,
        limit,
        offset,
    };
    let (rows, total) = app.store.job_list(&filter).await?;
    Ok(Json(JobList {
        jobs: rows
            .into_iter()
            .map(|row| JobView::build(row, &app.registry))
            .collect(),
        jobs_count: total,
        limit,
        offset,
    }))
}

/// What validating a definition needs: the handlers, database time (the
/// clock for defaults and first fire times) and where it came from.
async fn validation_context<'a>(
    app: &'a AppState,
    source: &str,
) -> ApiResult<ValidationContext<'a>> {
    Ok(ValidationContext {
        registry: &app.registry,
        now: app.store.now().await?,
        source: source.to_string(),
    })
}

/// Inserts jobs; the runs of those already due that this replica's free
/// workers can take are claimed in the same statement and start here at
/// once (see `Store::job_insert_many`).
///
/// The insert and the start run in a task of their own, not in the
/// request's future: a client that disconnects mid-request drops that
/// future, and runs committed `running` on this replica would then never
/// start (until their lease expired).
async fn insert_and_start(app: &AppState, jobs: Vec<NewJob>) -> ApiResult<()> {
    let (store, workers) = (app.store.clone(), app.workers.clone());
    tokio::spawn(async move {
        let reservation = workers.reserve(jobs.len());
        let claimed = store.job_insert_many(&jobs, &reservation.claim()).await?;
        reservation.start(claimed);
        Ok::<_, crate::store::StoreError>(())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("creating jobs: {e}")))??;
    Ok(())
}

/// How often a change conditional on what it read is re-applied after
/// another write came first (firing advances `next_run_at`, so a busy job
/// may need a second try) before the client is told to try again.
const REAPPLY_TRIES: usize = 8;

/// Reads the job, derives a write conditional on what was read (`write`
/// answers the store's result), and when another write came between
/// (`Stale`), reads and applies it again, up to [`REAPPLY_TRIES`] times.
async fn reapply<F, Fut>(app: &AppState, job_id: &str, mut write: F) -> ApiResult<JobRow>
where
    F: FnMut(JobRow) -> Fut,
    Fut: std::future::Future<Output = ApiResult<StoreResult<JobRow>>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        let row = app
            .store
            .job_get(job_id)
            .await
            .map_err(|e| ApiError::from_store(e, missing_job(job_id)))?;
        match write(row).await? {
            Err(StoreError::Stale) if tries < REAPPLY_TRIES => continue,
            written => return written.map_err(|e| ApiError::from_store(e, missing_job(job_id))),
        }
    }
}

/// A created job, with its id for the audit log.
type Created = (StatusCode, Extension<AuditNote>, Json<JobEnvelope>);

async fn create(app: &AppState, spec: JobSpec) -> ApiResult<Created> {
    let ctx = validation_context(app, "api").await?;
    let job = spec.validate(&ctx).map_err(ApiError::invalid)?;
    let job_id = job.job_id.clone();
    insert_and_start(app, vec![job]).await?;
    let row = app.store.job_get(&job_id).await?;
    tracing::info!(job_id = %row.job_id, handler = %row.handler, "job created");
    let note = AuditNote {
        job_id: Some(row.job_id.clone()),
        ..AuditNote::default()
    };
    Ok((
        StatusCode::CREATED,
        Extension(note),
        Json(JobEnvelope {
            job: JobView::build(row, &app.registry),
        }),
    ))
}

/// Create a job from a JSON body
///
/// With an `Idempotency-Key`, a retry within 24 h gets the first answer
/// again (marked `Idempotent-Replayed: true`) and creates nothing.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = JobSpec,
    params(crate::idempotency::IdempotencyKeyHeader),
    responses((status = 201, body = JobEnvelope), (status = 400, body = ErrorBody),
              (status = 409, description = "job_id taken, or a request with the same Idempotency-Key in progress", body = ErrorBody),
              (status = 413, body = ErrorBody),
              (status = 422, description = "the Idempotency-Key was used for another request", body = ErrorBody)))]
async fn create_job(
    State(app): State<AppState>,
    JsonBody(spec): JsonBody<JobSpec>,
) -> ApiResult<Created> {
    create(&app, spec).await
}

/// Jobs created together.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkCreate {
    /// 1 to 10,000 job definitions, as for `POST /api/v1/jobs`.
    pub jobs: Vec<JobSpec>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkCreated {
    pub created: usize,
    /// In the order given.
    pub job_ids: Vec<String>,
}

const MAX_BULK: usize = 10_000;

/// Create many jobs at once
///
/// All or nothing: if any definition is invalid (each problem is named
/// `jobs[i].field`) or any `job_id` exists, nothing is created.
#[utoipa::path(post, path = "/api/v1/jobs/bulk", tag = "jobs", request_body = BulkCreate,
    responses((status = 201, body = BulkCreated), (status = 400, body = ErrorBody),
              (status = 409, description = "a job_id is taken", body = ErrorBody),
              (status = 413, body = ErrorBody)))]
async fn create_jobs_bulk(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<BulkCreate>,
) -> ApiResult<(StatusCode, Json<BulkCreated>)> {
    if body.jobs.is_empty() || body.jobs.len() > MAX_BULK {
        return Err(ApiError::bad_request(format!(
            "jobs: give 1 to {MAX_BULK} job definitions (got {})",
            body.jobs.len()
        )));
    }
    let ctx = validation_context(&app, "api").await?;
    let mut problems = Vec::new();
    let mut jobs = Vec::with_capacity(body.jobs.len());
    let mut seen = std::collections::HashSet::new();
    for (i, spec) in body.jobs.iter().enumerate() {
        match spec.validate(&ctx) {
            Ok(job) => {
                if !seen.insert(job.job_id.clone()) {
                    problems.push(FieldError::new(
                        format!("jobs[{i}].job_id"),
                        format!("{:?} appears more than once in this request", job.job_id),
                    ));
                }
                jobs.push(job);
            }
            Err(errors) => problems.extend(
                errors
                    .into_iter()
                    .map(|e| FieldError::new(format!("jobs[{i}].{}", e.field), e.message)),
            ),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let job_ids: Vec<String> = jobs.iter().map(|j| j.job_id.clone()).collect();
    insert_and_start(&app, jobs).await?;
    tracing::info!(count = job_ids.len(), "jobs created in bulk");
    Ok((
        StatusCode::CREATED,
        Json(BulkCreated {
            created: job_ids.len(),
            job_ids,
        }),
    ))
}

/// The query parameters of `POST /api/v1/jobs/{handler}`; the body is the kwargs.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    /// Unique id; generated when omitted.
    pub job_id: Option<String>,
    /// Interval, e.g. `1 week`, `5:00:00`, `32m`, `PT5M`, or seconds.
    pub periodically: Option<String>,
    /// Cron expression, e.g. `0 3 * * *`.
    pub cron: Option<String>,
    /// IANA time zone of the cron expression.
    pub timezone: Option<String>,
    /// First run time (UTC unless an offset is given).
    pub when: Option<String>,
    /// How late a run may still start.
    pub misfire_grace_time: Option<String>,
    /// `running` (default) or `paused`.
    pub state: Option<String>,
    pub coalesce: Option<bool>,
    pub max_instances: Option<i32>,
    pub lock_key: Option<String>,
    pub timeout: Option<String>,
    pub max_retries: Option<i32>,
    pub retry_backoff: Option<String>,
    pub description: Option<String>,
    /// The newest finished runs to keep whatever their age.
    pub keep_runs: Option<i64>,
}

/// `POST /api/v1/jobs/{handler}`: the original service's form. Documented
/// once per registered handler (see `openapi.rs`), not here.
async fn create_job_for_handler(
    State(app): State<AppState>,
    Path(handler): Path<String>,
    QueryParams(q): QueryParams<CreateQuery>,
    JsonBody(kwargs): JsonBody<Value>,
) -> ApiResult<Created> {
    if app.registry.get(&handler).is_none() {
        return Err(ApiError::not_found(format!(
            "no handler named {handler:?}; GET /api/v1/handlers lists them"
        )));
    }
    let spec = JobSpec {
        job_id: q.job_id,
        handler: Some(handler),
        kwargs: Some(kwargs),
        periodically: q.periodically.map(Value::String),
        cron: q.cron,
        timezone: q.timezone,
        when: q.when,
        misfire_grace_time: q.misfire_grace_time.map(Value::String),
        coalesce: q.coalesce,
        max_instances: q.max_instances,
        lock_key: q.lock_key,
        timeout: q.timeout.map(Value::String),
        max_retries: q.max_retries,
        retry_backoff: q.retry_backoff.map(Value::String),
        state: q.state,
        description: q.description,
        keep_runs: q.keep_runs.map(Value::from),
        tags: None,
        notify: None,
        alerts: None,
    };
    create(&app, spec).await
}

fn missing_job(job_id: &str) -> impl FnOnce() -> String + '_ {
    move || format!("no job with job_id {job_id:?}")
}

/// Get one job
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job's id")),
    responses((status = 200, body = JobEnvelope), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<JobEnvelope>> {
    let row = app
        .store
        .job_get(&job_id)
        .await
        .map_err(|e| ApiError::from_store(e, missing_job(&job_id)))?;
    Ok(Json(JobEnvelope {
        job: JobView::build(row, &app.registry),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StateQuery {
    /// `running` (alias `active`) to resume, `paused` to pause.
    pub state: String,
}

/// Pause or resume a job
///
/// Resuming computes the next run from now; times missed while paused are not back-filled.
#[utoipa::path(put, path = "/api/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job's id"), StateQuery),
    responses((status = 200, body = JobEnvelope), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn set_job_state(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
    QueryParams(q): QueryParams<StateQuery>,
) -> ApiResult<Json<JobEnvelope>> {
    let Some(state) = JobState::requested(&q.state) else {
        return Err(ApiError::bad_request(format!(
            "state: unknown state {:?}; use running (alias active) or paused",
            q.state.to_ascii_lowercase()
        )));
    };
    let app = &app;
    let row = reapply(app, &job_id, |row| async move {
        if row.handler == ERROR_HANDLER && state == JobState::Running {
            return Err(ApiError::Conflict(format!(
                "{:?} is a failure record and never runs; POST /api/v1/jobs/{}/run re-runs the failed job",
                row.job_id, row.job_id
            )));
        }
        if row.state == JobState::Completed {
            return Err(ApiError::Conflict(format!(
                "job {:?} is a completed one-shot job; create a new job or trigger it with POST /api/v1/jobs/{}/run",
                row.job_id, row.job_id
            )));
        }
        let next_run_at = if state == JobState::Paused {
            None
        } else {
            next_run_on_resume(&row, app.store.now().await?)
        };
        Ok(app
            .store
            .job_set_state(&row.job_id, state, next_run_at, row.row_version)
            .await)
    })
    .await?;
    tracing::info!(job_id = %job_id, state = %state, "job state set");
    Ok(Json(JobEnvelope {
        job: JobView::build(row, &app.registry),
    }))
}

/// Change fields of a job
///
/// The body holds the fields to change (any of `POST /api/v1/jobs`'s except `job_id`);
/// `null` resets a field to its default. The next run time is kept unless the schedule changes.
/// In `kwargs` (replaced whole), `"***"` in a secret field keeps the stored secret; one for a
/// secret the job does not have is a 400.
#[utoipa::path(patch, path = "/api/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job's id")),
    request_body = JobSpec,
    responses((status = 200, body = JobEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "a failure record, or the job kept changing while the change was applied", body = ErrorBody)))]
async fn patch_job(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
    JsonBody(patch): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<JobEnvelope>> {
    if patch
        .get("job_id")
        .is_some_and(|v| v.as_str() != Some(job_id.as_str()))
    {
        return Err(ApiError::bad_request(
            "job_id: cannot be changed; create a new job instead",
        ));
    }
    let (app, patch) = (&app, &patch);
    let row = reapply(app, &job_id, |row| async move {
        if row.handler == ERROR_HANDLER {
            return Err(ApiError::Conflict(format!(
                "{:?} is a failure record and cannot be changed",
                row.job_id
            )));
        }
        let patch = kept_secrets(app, &row, patch)?;
        let spec = JobSpec::from_row(&row)
            .merged_with(&patch)
            .map_err(|e| ApiError::invalid(vec![e]))?;
        let ctx = validation_context(app, &row.source).await?;
        let mut job = spec.validate(&ctx).map_err(ApiError::invalid)?;
        if !patch.contains_key("state") || row.state == job.state {
            carry_over_timing(&row, &mut job);
        }
        keep_fired_one_shot_done(&row, &mut job);
        Ok(app.store.job_replace(&job, row.row_version).await)
    })
    .await?;
    Ok(Json(JobEnvelope {
        job: JobView::build(row, &app.registry),
    }))
}

/// The PATCH body with each `"***"` in a secret field of its kwargs
/// replaced by the stored secret (`redact::keep_stored`); one for a secret
/// the job does not have is a 400. Kwargs for another handler keep
/// nothing: the stored secrets were given to the old one.
fn kept_secrets(
    app: &AppState,
    row: &JobRow,
    patch: &Map<String, Value>,
) -> ApiResult<Map<String, Value>> {
    let mut patch = patch.clone();
    let Some(kwargs) = patch.get("kwargs") else {
        return Ok(patch);
    };
    let handler = match patch.get("handler") {
        Some(Value::String(handler)) => handler.as_str(),
        _ => row.handler.as_str(),
    };
    let stored = (handler == row.handler).then_some(&row.kwargs);
    let kept = crate::redact::keep_stored(kwargs, stored, app.registry.secret_fields(handler))
        .map_err(|problems| {
            ApiError::invalid(
                problems
                    .into_iter()
                    .map(|(field, message)| FieldError::new(field, message))
                    .collect(),
            )
        })?;
    patch.insert("kwargs".to_string(), kept);
    Ok(patch)
}

/// Delete a job and its runs
#[utoipa::path(delete, path = "/api/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job's id")),
    responses((status = 200, body = Removed,
        description = "Deleted: its id in `removed`, as the original service answered"),
        (status = 404, body = ErrorBody)))]
async fn delete_job(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<Removed>> {
    app.store
        .job_delete(&job_id)
        .await
        .map_err(|e| ApiError::from_store(e, missing_job(&job_id)))?;
    tracing::info!(job_id = %job_id, "job deleted");
    Ok(Json(Removed {
        removed: vec![job_id],
    }))
}

/// Delete all failure records
#[utoipa::path(delete, path = "/api/v1/jobs/clean-failed", tag = "jobs",
    responses((status = 200, body = RemovedFailed)))]
async fn clean_failed(State(app): State<AppState>) -> ApiResult<Json<RemovedFailed>> {
    let removed = app.store.job_delete_failed().await?;
    Ok(Json(RemovedFailed {
        deleted: removed.len(),
        removed,
    }))
}
