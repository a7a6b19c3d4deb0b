//! Runs: trigger a job now, read run history, cancel, override a stuck
//! run's state.

use axum::extract::{Extension, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{JsonBody, QueryParams};
use super::job_view::run_view;
use super::AppState;
use crate::audit::AuditNote;
use crate::domain::RunState;
use crate::handlers::ERROR_HANDLER;
use crate::idempotency::{opt_in, Idempotency};
use crate::store::{JobRow, ManualRun, RunFilter, RunRow, StoreError};

#[derive(OpenApi)]
#[openapi(
    paths(
        trigger_job,
        job_runs,
        latest_run,
        list_runs,
        get_run,
        cancel_run,
        override_run_state
    ),
    components(schemas(RunRow, RunEnvelope, RunList, StateOverride))
)]
pub struct RunsApi;

/// `POST /jobs/{id}/run` honours `Idempotency-Key` (`crate::idempotency`).
pub fn router(idempotency: &Idempotency) -> Router<AppState> {
    Router::new()
        .route("/jobs/{id}/run", opt_in(post(trigger_job), idempotency))
        .route("/jobs/{id}/runs", get(job_runs))
        .route("/jobs/{id}/runs/latest", get(latest_run))
        .route("/runs", get(list_runs))
        .route("/runs/{run_id}", get(get_run))
        .route("/runs/{run_id}/cancel", post(cancel_run))
        .route("/runs/{run_id}/state", put(override_run_state))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunEnvelope {
    pub run: RunRow,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<RunRow>,
    /// How many runs match the filter (all pages).
    pub runs_count: i64,
    pub limit: i64,
    pub offset: i64,
}

const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 1000;

fn page(limit: Option<i64>, offset: Option<i64>) -> ApiResult<(i64, i64)> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and {MAX_PAGE}"
        )));
    }
    let offset = offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request("offset: must not be negative"));
    }
    Ok((limit, offset))
}

pub(super) fn parse_run_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("run_id: {raw:?} is not a run id (a UUID)")))
}

fn missing_run(run_id: Uuid) -> impl FnOnce() -> String {
    move || format!("no run with run_id {run_id}")
}

async fn existing_job(app: &AppState, job_id: &str) -> ApiResult<JobRow> {
    app.store
        .job_get(job_id)
        .await
        .map_err(|e| ApiError::from_store(e, || format!("no job with job_id {job_id:?}")))
}

/// The manual run that re-runs a failure record's failed job with its
/// original kwargs (on the original job if it still exists).
async fn rerun_of_failure(app: &AppState, record: &JobRow) -> ApiResult<ManualRun> {
    let kwargs = &record.kwargs;
    let failed_job = kwargs["failed_job_id"].as_str().unwrap_or_default();
    let handler = kwargs["failed_job_handler"].as_str().map(str::to_string);
    let failed_kwargs = kwargs.get("failed_handler_kwargs").cloned();
    let Some(handler) = handler.filter(|h| app.registry.get(h).is_some()) else {
        return Err(ApiError::Conflict(format!(
            "failure record {:?} names no registered handler to re-run",
            record.job_id
        )));
    };
    let job_id = match app.store.job_get(failed_job).await {
        Ok(job) => job.job_id,
        Err(StoreError::NotFound) => record.job_id.clone(),
        Err(e) => return Err(e.into()),
    };
    Ok(ManualRun {
        job_id,
        handler: Some(handler),
        kwargs: failed_kwargs,
        reason: format!("re-run requested from failure record {}", record.job_id),
    })
}

/// Run a job now
///
/// Queues a manual run at once. For a failure record (`handler` ErrorHandler) it
/// re-runs the failed job with its original kwargs. With an `Idempotency-Key`,
/// a retry within 24 h gets the first answer again and queues no other run.
#[utoipa::path(post, path = "/api/v1/jobs/{job_id}/run", tag = "runs",
    params(("job_id" = String, Path, description = "The job's id"),
           crate::idempotency::IdempotencyKeyHeader),
    responses((status = 201, body = RunEnvelope, headers(("Location" = String, description = "The run's URL"))),
              (status = 404, body = ErrorBody),
              (status = 409, description = "max_instances reached, or a request with the same Idempotency-Key in progress", body = ErrorBody),
              (status = 422, description = "the Idempotency-Key was used for another request", body = ErrorBody)))]
async fn trigger_job(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
) -> ApiResult<Response> {
    let job = existing_job(&app, &job_id).await?;
    let manual = if job.handler == ERROR_HANDLER {
        rerun_of_failure(&app, &job).await?
    } else {
        ManualRun {
            job_id: job.job_id.clone(),
            handler: None,
            kwargs: None,
            reason: "run requested through the API".into(),
        }
    };
    let run = app
        .store
        .run_trigger(&manual)
        .await
        .map_err(|e| ApiError::from_store(e, || format!("no job with job_id {job_id:?}")))?;
    tracing::info!(job_id = %run.job_id, run_id = %run.run_id, "manual run queued");
    let location = format!("/api/v1/runs/{}", run.run_id);
    let note = AuditNote {
        job_id: Some(run.job_id.clone()),
        run_id: Some(run.run_id),
        reason: None,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Extension(note),
        Json(RunEnvelope {
            run: run_view(run, &app.registry),
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 1000 (default 20).
    pub limit: Option<i64>,
    /// Runs to skip.
    pub offset: Option<i64>,
}

/// A job's runs, newest first
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}/runs", tag = "runs",
    params(("job_id" = String, Path, description = "The job's id"), PageQuery),
    responses((status = 200, body = RunList), (status = 404, body = ErrorBody)))]
async fn job_runs(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Json<RunList>> {
    let (limit, offset) = page(q.limit, q.offset)?;
    existing_job(&app, &job_id).await?;
    let filter = RunFilter {
        job_id: Some(job_id),
        limit,
        offset,
        ..RunFilter::default()
    };
    let (runs, runs_count) = app.store.run_list(&filter).await?;
    Ok(Json(RunList {
        runs: runs
            .into_iter()
            .map(|run| run_view(run, &app.registry))
            .collect(),
        runs_count,
        limit,
        offset,
    }))
}

/// Redirect to a job's newest run
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}/runs/latest", tag = "runs",
    params(("job_id" = String, Path, description = "The job's id")),
    responses((status = 307, description = "Location: the newest run"), (status = 404, body = ErrorBody)))]
async fn latest_run(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
) -> ApiResult<Redirect> {
    existing_job(&app, &job_id).await?;
    let run = app
        .store
        .run_latest(&job_id)
        .await
        .map_err(|e| ApiError::from_store(e, || format!("job {job_id:?} has no runs yet")))?;
    Ok(Redirect::temporary(&format!("/api/v1/runs/{}", run.run_id)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only runs in this state.
    pub state: Option<String>,
    /// Only runs of this job.
    pub job_id: Option<String>,
    /// Only runs of this handler.
    pub handler: Option<String>,
    /// Created at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Page size, 1 to 1000 (default 20).
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// Runs, newest first, filtered
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = RunList), (status = 400, body = ErrorBody)))]
async fn list_runs(
    State(app): State<AppState>,
    QueryParams(q): QueryParams<RunsQuery>,
) -> ApiResult<Json<RunList>> {
    let (limit, offset) = page(q.limit, q.offset)?;
    let state = match q.state.as_deref().map(str::parse::<RunState>) {
        None => None,
        Some(Ok(state)) => Some(state),
        Some(Err(e)) => {
            return Err(ApiError::bad_request(format!(
                "state: unknown run state {:?}; use one of {}",
                e.value, e.expected
            )))
        }
    };
    let filter = RunFilter {
        job_id: q.job_id,
        state,
        handler: q.handler,
        since: q.since,
        until: q.until,
        limit,
        offset,
    };
    let (runs, runs_count) = app.store.run_list(&filter).await?;
    Ok(Json(RunList {
        runs: runs
            .into_iter()
            .map(|run| run_view(run, &app.registry))
            .collect(),
        runs_count,
        limit,
        offset,
    }))
}

/// One run with its state history
#[utoipa::path(get, path = "/api/v1/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path, description = "The run's id (UUID)")),
    responses((status = 200, body = RunEnvelope), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_run(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<Json<RunEnvelope>> {
    let run_id = parse_run_id(&raw)?;
    let run = app
        .store
        .run_get(run_id)
        .await
        .map_err(|e| ApiError::from_store(e, missing_run(run_id)))?;
    Ok(Json(RunEnvelope {
        run: run_view(run, &app.registry),
    }))
}

/// Cancel a run
///
/// A queued run is cancelled at once; a running one is stopped on whichever
/// instance runs it (`cancel_requested` is true until it has stopped).
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/cancel", tag = "runs",
    params(("run_id" = String, Path, description = "The run's id (UUID)")),
    responses((status = 200, body = RunEnvelope), (status = 404, body = ErrorBody),
              (status = 409, description = "already finished", body = ErrorBody)))]
async fn cancel_run(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<(Extension<AuditNote>, Json<RunEnvelope>)> {
    let run_id = parse_run_id(&raw)?;
    let run = app
        .store
        .run_cancel(run_id, "cancelled through the API")
        .await
        .map_err(|e| ApiError::from_store(e, missing_run(run_id)))?;
    tracing::info!(run_id = %run_id, state = %run.state, "run cancel requested");
    // A queued run ends here; a running one when its worker has stopped it.
    app.metrics.run_ended(&run.handler, run.state);
    let note = AuditNote {
        job_id: Some(run.job_id.clone()),
        ..AuditNote::default()
    };
    Ok((
        Extension(note),
        Json(RunEnvelope {
            run: run_view(run, &app.registry),
        }),
    ))
}

/// An operator's override of a run's state.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateOverride {
    /// `queued` (run it again now), `succeeded`, `failed` or `cancelled`.
    #[schema(example = "failed")]
    pub state: String,
    /// Why; recorded in the run's history.
    #[schema(example = "stuck after the host was rebooted")]
    pub reason: String,
}

/// The states an operator may set by hand.
const OVERRIDE_STATES: &[RunState] = &[
    RunState::Queued,
    RunState::Succeeded,
    RunState::Failed,
    RunState::Cancelled,
];

/// Override a stuck run's state
#[utoipa::path(put, path = "/api/v1/runs/{run_id}/state", tag = "runs",
    params(("run_id" = String, Path, description = "The run's id (UUID)")),
    request_body = StateOverride,
    responses((status = 200, body = RunEnvelope), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn override_run_state(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<StateOverride>,
) -> Response {
    // The reason goes to the audit log whatever the answer.
    let mut note = AuditNote {
        reason: Some(body.reason.trim().replace('\0', "")).filter(|r| !r.is_empty()),
        ..AuditNote::default()
    };
    let answer = apply_override(&app, &raw, &body).await.map(|run| {
        note.job_id = Some(run.job_id.clone());
        Json(RunEnvelope {
            run: run_view(run, &app.registry),
        })
    });
    (Extension(note), answer).into_response()
}

async fn apply_override(app: &AppState, raw: &str, body: &StateOverride) -> ApiResult<RunRow> {
    let run_id = parse_run_id(raw)?;
    let Some(state) = body
        .state
        .parse()
        .ok()
        .filter(|s| OVERRIDE_STATES.contains(s))
    else {
        let names: Vec<&str> = OVERRIDE_STATES.iter().map(|s| s.as_str()).collect();
        return Err(ApiError::bad_request(format!(
            "state: {:?} cannot be set by hand; use one of {}",
            body.state,
            names.join(", ")
        )));
    };
    let reason = body.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::bad_request(
            "reason: required; say why the state is overridden",
        ));
    }
    if reason.contains('\0') {
        return Err(ApiError::bad_request(
            "reason: must not contain a NUL character (\\u0000)",
        ));
    }
    let run = app
        .store
        .run_override_state(run_id, state, reason)
        .await
        .map_err(|e| ApiError::from_store(e, missing_run(run_id)))?;
    tracing::warn!(run_id = %run_id, state = %run.state, reason, "run state overridden by an operator");
    app.metrics.run_ended(&run.handler, run.state);
    Ok(run)
}
