//! Remote completion (`crate::callbacks`): the three routes a callback
//! run's service calls, authenticated by the attempt's callback token
//! (`Authorization: Bearer <X-Jobsd-Callback-Token>`), not by an API token.
//!
//! Each call checks its caller before it reads its body, then fences by run
//! and attempt ([`rules::fence`]): 401 for a malformed or unknown token (or
//! another run's), 409 for an earlier attempt's token or a run that has
//! ended; neither changes anything. A write that finds the run changed
//! since it was read (the fence of the store's statement) answers 409 too.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{parse_json, RawBody};
use super::runs::parse_run_id;
use super::AppState;
use crate::callbacks::rules::{self, Fence, RunNow};
use crate::callbacks::{token, write_decision};
use crate::domain::RunState;
use crate::redact::scrub_value;
use crate::store::{CallbackRun, StoreError};
use crate::worker::execute::Execution;
use crate::worker::outcome::{decide, Write};

#[derive(OpenApi)]
#[openapi(
    paths(report_progress, report_complete, report_heartbeat),
    components(schemas(ProgressReport, CompleteReport, ReportedState, CallbackAck))
)]
pub struct CallbacksApi;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/runs/{run_id}/progress", post(report_progress))
        .route("/runs/{run_id}/complete", post(report_complete))
        .route("/runs/{run_id}/heartbeat", post(report_heartbeat))
}

/// Bound on a reported result, error or progress (as the workers').
const MAX_REPORT_BYTES: usize = 64 * 1024;

/// `POST /api/v1/runs/{id}/progress`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressReport {
    /// Any JSON, e.g. `{"done": 3, "total": 10}`; shown as the run's
    /// `progress` (and its job's, while it runs).
    #[schema(value_type = Object)]
    pub progress: Value,
}

/// The end a service reports.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportedState {
    Succeeded,
    Failed,
}

/// `POST /api/v1/runs/{id}/complete`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteReport {
    /// `succeeded`, or `failed` (retried while the job's `max_retries`
    /// allows, as a failed attempt in jobsd is).
    pub state: ReportedState,
    /// Stored as the run's result (a success).
    #[schema(value_type = Option<Object>)]
    #[serde(default)]
    pub result: Option<Value>,
    /// Stored as the run's error (a failure).
    #[serde(default)]
    pub error: Option<String>,
}

/// What a callback call did.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackAck {
    pub run_id: Uuid,
    pub attempt: i32,
    /// The run's state after the call: `running` (progress, heartbeat),
    /// or the end a completion wrote (`queued` when a failure is retried).
    pub state: RunState,
    /// When the progress was written (progress).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_updated_at: Option<DateTime<Utc>>,
    /// The run's deadline now (heartbeat; null while its request has not
    /// been answered yet: the deadline is set when it is accepted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
}

/// A run and the presented token's secret, once the caller is checked.
struct Authorised {
    run: CallbackRun,
    secret: String,
}

/// Checks the caller of a callback route on `raw_run_id` (see the module
/// docs); nothing is written.
async fn authorise(app: &AppState, headers: &HeaderMap, raw_run_id: &str) -> ApiResult<Authorised> {
    let run_id = parse_run_id(raw_run_id)?;
    let value =
        match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                ApiError::Unauthorized("the Authorization header is not text".into())
            })?),
        };
    let secret =
        token::parse_authorization(value).map_err(|m| ApiError::Unauthorized(m.to_string()))?;
    let owner = app.store.callback_token_owner(&token::hash(secret)).await?;
    let run = match app.store.callback_run_get(run_id).await {
        Ok(run) => Some(run),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    let now = run.as_ref().map(|r| RunNow {
        state: r.run.state,
        attempt: r.run.attempt,
    });
    match rules::fence(owner, run_id, now) {
        Fence::Unauthorized(m) => Err(ApiError::Unauthorized(m)),
        Fence::Conflict(m) => Err(ApiError::Conflict(m)),
        Fence::Proceed => Ok(Authorised {
            run: run.ok_or_else(|| ApiError::Internal("fence passed without a run".into()))?,
            secret: secret.to_string(),
        }),
    }
}

fn changed_meanwhile(run_id: Uuid) -> ApiError {
    ApiError::Conflict(format!(
        "run {run_id} changed while this call was applied (it ended, was cancelled or retried); nothing was written"
    ))
}

/// The secrets a report is scrubbed of: the run's kwargs' and the token.
fn secrets_of(app: &AppState, a: &Authorised) -> Vec<String> {
    let mut secrets = app
        .registry
        .secrets_of(&a.run.run.handler, &a.run.run.kwargs);
    secrets.push(a.secret.clone());
    secrets
}

/// Report a callback run's progress
///
/// Called by the service a callback run (`"callback": true`) sent its
/// request to, with `Authorization: Bearer <X-Jobsd-Callback-Token>`.
/// Stores the progress (any JSON) as the run's `progress`, with
/// `progress_updated_at`.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/progress", tag = "callbacks",
    security(("callback_token" = [])),
    params(("run_id" = String, Path, description = "The run's id (UUID)")),
    request_body = ProgressReport,
    responses((status = 200, body = CallbackAck),
              (status = 400, description = "bad run id or body", body = ErrorBody),
              (status = 401, description = "malformed or unknown callback token", body = ErrorBody),
              (status = 409, description = "an earlier attempt's token, or the run has ended", body = ErrorBody)))]
async fn report_progress(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Json<CallbackAck>> {
    let a = authorise(&app, &headers, &run_id).await?;
    let ProgressReport { mut progress } = parse_json(&body)?;
    crate::guard::text::strip_nul(&mut progress);
    if progress.to_string().len() > MAX_REPORT_BYTES {
        return Err(ApiError::bad_request(format!(
            "progress: larger than {MAX_REPORT_BYTES} bytes as JSON"
        )));
    }
    scrub_value(&mut progress, &secrets_of(&app, &a));
    let run = &a.run.run;
    let written = app
        .store
        .run_callback_progress(run.run_id, run.attempt, &progress)
        .await?
        .ok_or_else(|| changed_meanwhile(run.run_id))?;
    Ok(Json(CallbackAck {
        run_id: run.run_id,
        attempt: run.attempt,
        state: RunState::Running,
        progress_updated_at: Some(written),
        deadline: None,
    }))
}

/// Extend a callback run's deadline
///
/// Moves the deadline of a run waiting for its callback to now plus its
/// window (its `timeout`, else `--callback-timeout`), never earlier than it
/// was. Before the run's request has been answered there is no deadline to
/// move yet (it is set when the request is accepted, counted from the
/// run's start): the call changes nothing and answers `deadline` absent.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/heartbeat", tag = "callbacks",
    security(("callback_token" = [])),
    params(("run_id" = String, Path, description = "The run's id (UUID)")),
    responses((status = 200, body = CallbackAck),
              (status = 400, description = "bad run id", body = ErrorBody),
              (status = 401, description = "malformed or unknown callback token", body = ErrorBody),
              (status = 409, description = "an earlier attempt's token, or the run has ended", body = ErrorBody)))]
async fn report_heartbeat(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Json<CallbackAck>> {
    let a = authorise(&app, &headers, &run_id).await?;
    // Any body is ignored but must be JSON if sent (an empty one is `{}`).
    let _: Value = parse_json(&body)?;
    let run = &a.run.run;
    let mut ack = CallbackAck {
        run_id: run.run_id,
        attempt: run.attempt,
        state: RunState::Running,
        progress_updated_at: None,
        deadline: None,
    };
    let Some(current) = a.run.waiting_until() else {
        return Ok(Json(ack));
    };
    let window = rules::window(run.timeout_ms, app.callbacks.timeout);
    let deadline = rules::heartbeat_deadline(app.store.now().await?, window, current);
    if !app
        .store
        .run_callback_heartbeat(run.run_id, run.attempt, deadline)
        .await?
    {
        return Err(changed_meanwhile(run.run_id));
    }
    ack.deadline = Some(deadline);
    Ok(Json(ack))
}

/// Complete a callback run
///
/// Ends the run's attempt as the service reports: `succeeded` with its
/// `result`, or `failed` with its `error` (retried after the job's backoff
/// while `max_retries` allows; the retry is a new attempt with a new
/// token). Written as a worker's outcome is: history, failure records,
/// waiting runs, one-shot completion and run counters follow. Secrets of
/// the job's kwargs, and the token, are scrubbed from the result and error.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/complete", tag = "callbacks",
    security(("callback_token" = [])),
    params(("run_id" = String, Path, description = "The run's id (UUID)")),
    request_body = CompleteReport,
    responses((status = 200, body = CallbackAck),
              (status = 400, description = "bad run id or body", body = ErrorBody),
              (status = 401, description = "malformed or unknown callback token", body = ErrorBody),
              (status = 409, description = "an earlier attempt's token, or the run has ended (a second complete)", body = ErrorBody)))]
async fn report_complete(
    State(app): State<AppState>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<(StatusCode, Json<CallbackAck>)> {
    let a = authorise(&app, &headers, &run_id).await?;
    let report: CompleteReport = parse_json(&body)?;
    let execution = match report.state {
        ReportedState::Succeeded => {
            if report.error.is_some() {
                return Err(ApiError::bad_request(
                    "error: only a failed run has one; send result for a success",
                ));
            }
            Execution::Succeeded(report.result.unwrap_or(Value::Null))
        }
        ReportedState::Failed => {
            if report.result.is_some() {
                return Err(ApiError::bad_request(
                    "result: only a succeeded run has one; send error for a failure",
                ));
            }
            Execution::Failed {
                error: report
                    .error
                    .filter(|e| !e.trim().is_empty())
                    .unwrap_or_else(|| "the service reported a failure".into()),
                traceback: String::new(),
                retryable: true,
            }
        }
    }
    .scrubbed(&secrets_of(&app, &a));
    let run = &a.run.run;
    let mut write = decide(run, execution, MAX_REPORT_BYTES, rand::random::<f64>());
    match &mut write {
        Write::Finish(outcome) => {
            outcome.reason = format!("the service reported {}", outcome.state);
            if outcome.traceback.as_deref() == Some("") {
                outcome.traceback = None;
            }
        }
        Write::Retry(retry) => {
            retry.reason = retry
                .reason
                .replacen("failed", "the service reported failed", 1);
            retry.traceback = None;
        }
        Write::HandBack | Write::Nothing | Write::AwaitCallback { .. } => {}
    }
    let written = write_decision(&app.store, &app.metrics, &a.run, &write).await?;
    let state = written.ok_or_else(|| changed_meanwhile(run.run_id))?;
    tracing::info!(run_id = %run.run_id, job_id = %run.job_id, attempt = run.attempt, %state,
        "a callback run was completed by its service");
    Ok((
        StatusCode::OK,
        Json(CallbackAck {
            run_id: run.run_id,
            attempt: run.attempt,
            state,
            progress_updated_at: None,
            deadline: None,
        }),
    ))
}
