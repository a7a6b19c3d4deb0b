//! `/api/v1/webhooks` (admin scope; issue #13 §2): define webhooks, rotate
//! their secrets, read their delivery log, redeliver, send a test. A
//! secret is shown in the answer that makes it and nowhere else. `{id}` is
//! a webhook's id or its name.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{JsonBody, QueryParams};
use super::AppState;
use crate::store::{DeliveryRow, DeliveryState, NewWebhook, WebhookRow, WebhookSpec};
use crate::webhooks::definition;
use crate::webhooks::signing::WebhookSecret;
use crate::webhooks::Deliverer;

#[derive(OpenApi)]
#[openapi(
    paths(
        create_webhook,
        list_webhooks,
        get_webhook,
        update_webhook,
        delete_webhook,
        rotate_secret,
        list_deliveries,
        retry_delivery,
        test_webhook
    ),
    components(schemas(
        CreateWebhook,
        UpdateWebhook,
        RotateSecret,
        WebhookView,
        WebhookEnvelope,
        WebhookList,
        CreatedWebhook,
        DeliveryView,
        AttemptView,
        DeliveryList,
        DeliveryEnvelope,
        DeliveryState
    ))
)]
pub struct WebhooksApi;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks", get(list_webhooks).post(create_webhook))
        .route(
            "/webhooks/{id}",
            get(get_webhook)
                .patch(update_webhook)
                .delete(delete_webhook),
        )
        .route("/webhooks/{id}/rotate", post(rotate_secret))
        .route("/webhooks/{id}/deliveries", get(list_deliveries))
        .route(
            "/webhooks/{id}/deliveries/{delivery_id}/retry",
            post(retry_delivery),
        )
        .route("/webhooks/{id}/test", post(test_webhook))
}

/// A new webhook.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Unique; jobs list it under `notify`.
    #[schema(example = "ops")]
    pub name: String,
    /// Where deliveries are POSTed (http or https).
    #[schema(example = "https://ops.example.com/jobsd-hook")]
    pub url: String,
    /// Event types and groups (`run.failed`, `job.`); none: every event.
    #[serde(default)]
    #[schema(example = json!(["run.failed", "run.timed_out"]))]
    pub event_types: Vec<String>,
    /// Only events of these jobs.
    #[serde(default)]
    pub job_ids: Vec<String>,
    /// Only events of jobs with one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only events of jobs of this handler.
    pub handler: Option<String>,
    /// Created paused: nothing is queued for it until resumed.
    #[serde(default)]
    pub paused: bool,
}

/// Changes to a webhook: the fields given replace the stored ones.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub name: Option<String>,
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub job_ids: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    /// `""` removes the handler filter.
    pub handler: Option<String>,
    /// Pause (true) or resume (false).
    pub paused: Option<bool>,
    /// `true` re-enables a disabled webhook (its failures forgotten).
    pub enabled: Option<bool>,
}

/// A rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the replaced secret keeps signing beside the new one
    /// (`24h` when left out; `0` ends it at once).
    #[schema(example = "24h")]
    pub keep_previous: Option<String>,
}

/// A webhook as the API shows it: never its secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub job_ids: Vec<String>,
    pub tags: Vec<String>,
    pub handler: Option<String>,
    pub paused: bool,
    /// Set when deliveries disabled it (a 410 answer, or 5 days of
    /// failures); `PATCH` with `"enabled": true` re-enables it.
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    /// When its current run of failed attempts began.
    pub failing_since: Option<DateTime<Utc>>,
    /// While a rotation lasts, the replaced secret signs too, until then.
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WebhookView {
    fn of(w: WebhookRow) -> WebhookView {
        let now = Utc::now();
        WebhookView {
            id: w.id,
            name: w.spec.name,
            url: w.spec.url,
            event_types: w.spec.event_types,
            job_ids: w.spec.job_ids,
            tags: w.spec.tags,
            handler: w.spec.handler,
            paused: w.spec.paused,
            disabled_at: w.disabled_at,
            disabled_reason: w.disabled_reason,
            failing_since: w.failing_since,
            previous_secret_until: w
                .previous_secret
                .and(w.previous_until)
                .filter(|until| *until > now),
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEnvelope {
    pub webhook: WebhookView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

/// A created webhook, or a rotated secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    /// The signing secret (`whsec_` and base64): shown only in this
    /// answer, store it now.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
    pub webhook: WebhookView,
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub attempt: i32,
    pub at: DateTime<Utc>,
    /// The answer's status; null when none came (timeout, refused, denied).
    pub status: Option<i32>,
    pub latency_ms: i32,
    /// The first bytes of the answer (up to 1 KiB).
    pub response: Option<String>,
    pub error: Option<String>,
}

/// One message to the webhook and its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    /// The `webhook-id` header, the same on every attempt.
    pub message_id: String,
    pub event_type: String,
    /// The event's cursor (`GET /api/v1/events`); null for a test.
    pub event_id: Option<String>,
    pub state: DeliveryState,
    /// Attempts made (since the last redelivery).
    pub attempt: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub created_at: DateTime<Utc>,
    /// The body sent.
    #[schema(value_type = Object)]
    pub payload: Value,
    pub attempts: Vec<AttemptView>,
}

impl DeliveryView {
    fn of(d: DeliveryRow) -> DeliveryView {
        DeliveryView {
            id: d.id,
            message_id: d.message_id,
            event_type: d.event_type,
            event_id: d.event_id,
            next_attempt_at: (d.state == DeliveryState::Pending).then_some(d.next_attempt_at),
            state: d.state,
            attempt: d.attempt,
            last_status: d.last_status,
            created_at: d.created_at,
            payload: d.payload,
            attempts: d
                .attempts
                .into_iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    at: a.at,
                    status: a.status,
                    latency_ms: a.latency_ms,
                    response: a.response,
                    error: a.error,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryEnvelope {
    pub delivery: DeliveryView,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// Newest first, at most this many (default 50, at most 500).
    pub limit: Option<i64>,
}

fn deliverer(app: &AppState) -> ApiResult<&Deliverer> {
    app.webhooks
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("webhooks are not delivered by this process".into()))
}

fn checked(app: &AppState, spec: &WebhookSpec) -> ApiResult<()> {
    let problems = definition::problems(spec, deliverer(app)?.policy());
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(problems))
    }
}

async fn find(app: &AppState, key: &str) -> ApiResult<WebhookRow> {
    app.store
        .webhook_find(key)
        .await
        .map_err(|e| ApiError::from_store(e, || format!("no webhook {key:?}")))
}

/// Create a webhook (admin)
///
/// The answer holds its signing secret, this once.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = CreatedWebhook), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn create_webhook(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<CreateWebhook>,
) -> ApiResult<(StatusCode, Json<CreatedWebhook>)> {
    let spec = WebhookSpec {
        name: body.name,
        url: body.url,
        event_types: body.event_types,
        job_ids: body.job_ids,
        tags: body.tags,
        handler: body.handler,
        paused: body.paused,
    };
    checked(&app, &spec)?;
    let secret = WebhookSecret::generate().expose();
    let webhook = app
        .store
        .webhook_insert(&NewWebhook {
            id: Uuid::now_v7(),
            spec,
            secret: secret.clone(),
        })
        .await?;
    tracing::info!(webhook = %webhook.spec.name, id = %webhook.id, "webhook created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            secret,
            webhook: WebhookView::of(webhook),
        }),
    ))
}

/// List webhooks (admin)
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn list_webhooks(State(app): State<AppState>) -> ApiResult<Json<WebhookList>> {
    let webhooks = app.store.webhook_list().await?;
    Ok(Json(WebhookList {
        webhooks: webhooks.into_iter().map(WebhookView::of).collect(),
    }))
}

/// One webhook (admin), by id or name
#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id or name")),
    responses((status = 200, body = WebhookEnvelope), (status = 404, body = ErrorBody)))]
async fn get_webhook(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookEnvelope>> {
    Ok(Json(WebhookEnvelope {
        webhook: WebhookView::of(find(&app, &id).await?),
    }))
}

/// Change, pause, resume or re-enable a webhook (admin)
#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "webhooks", request_body = UpdateWebhook,
    params(("id" = String, Path, description = "The webhook's id or name")),
    responses((status = 200, body = WebhookEnvelope), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_webhook(
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateWebhook>,
) -> ApiResult<Json<WebhookEnvelope>> {
    let current = find(&app, &id).await?;
    if body.enabled == Some(false) {
        return Err(ApiError::bad_request(
            "enabled: only true (re-enable a disabled webhook); pause with \"paused\": true",
        ));
    }
    let old = current.spec;
    let spec = WebhookSpec {
        name: body.name.unwrap_or(old.name),
        url: body.url.unwrap_or(old.url),
        event_types: body.event_types.unwrap_or(old.event_types),
        job_ids: body.job_ids.unwrap_or(old.job_ids),
        tags: body.tags.unwrap_or(old.tags),
        handler: match body.handler {
            Some(h) if h.is_empty() => None,
            Some(h) => Some(h),
            None => old.handler,
        },
        paused: body.paused.unwrap_or(old.paused),
    };
    checked(&app, &spec)?;
    let webhook = app
        .store
        .webhook_update(current.id, &spec, body.enabled == Some(true))
        .await
        .map_err(|e| ApiError::from_store(e, || format!("no webhook {id:?}")))?;
    if let Some(d) = &app.webhooks {
        d.wake();
    }
    Ok(Json(WebhookEnvelope {
        webhook: WebhookView::of(webhook),
    }))
}

/// Delete a webhook (admin), with its deliveries
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id or name")),
    responses((status = 200, body = WebhookEnvelope), (status = 404, body = ErrorBody)))]
async fn delete_webhook(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookEnvelope>> {
    let webhook = find(&app, &id).await?;
    app.store
        .webhook_delete(webhook.id)
        .await
        .map_err(|e| ApiError::from_store(e, || format!("no webhook {id:?}")))?;
    tracing::info!(webhook = %webhook.spec.name, "webhook deleted");
    Ok(Json(WebhookEnvelope {
        webhook: WebhookView::of(webhook),
    }))
}

/// Rotate a webhook's secret (admin)
///
/// The answer holds the new secret, this once. Until `keep_previous` has
/// passed, deliveries carry two signatures, the new secret's first.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate", tag = "webhooks", request_body = RotateSecret,
    params(("id" = String, Path, description = "The webhook's id or name")),
    responses((status = 200, body = CreatedWebhook), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn rotate_secret(
    State(app): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RotateSecret>,
) -> ApiResult<Json<CreatedWebhook>> {
    let keep = match body.keep_previous.as_deref() {
        None => std::time::Duration::from_secs(24 * 3600),
        Some(text) => crate::config::parse_flag_duration(text)
            .map_err(|e| ApiError::bad_request(format!("keep_previous: {e}")))?,
    };
    let keep = chrono::Duration::from_std(keep)
        .ok()
        .filter(|k| *k <= chrono::Duration::days(30))
        .ok_or_else(|| ApiError::bad_request("keep_previous: at most 30 days"))?;
    let webhook = find(&app, &id).await?;
    let secret = WebhookSecret::generate().expose();
    let webhook = app
        .store
        .webhook_rotate(webhook.id, &secret, Utc::now() + keep)
        .await
        .map_err(|e| ApiError::from_store(e, || format!("no webhook {id:?}")))?;
    tracing::info!(webhook = %webhook.spec.name, "webhook secret rotated");
    Ok(Json(CreatedWebhook {
        secret,
        webhook: WebhookView::of(webhook),
    }))
}

/// A webhook's deliveries (admin), newest first, with every attempt
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id or name"), DeliveriesQuery),
    responses((status = 200, body = DeliveryList), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn list_deliveries(
    State(app): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<DeliveriesQuery>,
) -> ApiResult<Json<DeliveryList>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit: from 1 to 500"));
    }
    let webhook = find(&app, &id).await?;
    let deliveries = app.store.webhook_deliveries_list(webhook.id, limit).await?;
    Ok(Json(DeliveryList {
        deliveries: deliveries.into_iter().map(DeliveryView::of).collect(),
    }))
}

/// Redeliver (admin): the delivery is queued again, due now, with the
/// same `webhook-id`
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id or name"),
           ("delivery_id" = Uuid, Path, description = "The delivery")),
    responses((status = 202, body = DeliveryEnvelope), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn retry_delivery(
    State(app): State<AppState>,
    Path((id, delivery_id)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<DeliveryEnvelope>)> {
    let delivery_id: Uuid = delivery_id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{delivery_id:?} is not a delivery id")))?;
    let webhook = find(&app, &id).await?;
    let delivery = app
        .store
        .webhook_delivery_retry(webhook.id, delivery_id)
        .await
        .map_err(|e| ApiError::from_store(e, || format!("no delivery {delivery_id} of {id:?}")))?;
    deliverer(&app)?.wake();
    Ok((
        StatusCode::ACCEPTED,
        Json(DeliveryEnvelope {
            delivery: DeliveryView::of(delivery),
        }),
    ))
}

/// Send a test delivery (admin): a `webhook.test` message, queued now
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/test", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id or name")),
    responses((status = 202, body = DeliveryEnvelope), (status = 404, body = ErrorBody)))]
async fn test_webhook(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<DeliveryEnvelope>)> {
    let webhook = find(&app, &id).await?;
    let delivery = deliverer(&app)?
        .queue_test(webhook.id, &webhook.spec.name)
        .await
        .map_err(|e| ApiError::from_store(e, || format!("no webhook {id:?}")))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DeliveryEnvelope {
            delivery: DeliveryView::of(delivery),
        }),
    ))
}
