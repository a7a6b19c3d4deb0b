//! `/api/v1/events`: the events outbox (`crate::events`) as pages, as a
//! Server-Sent Events stream, and the stream tickets a browser needs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{parse_json, QueryParams, RawBody};
use super::job_view::{run_view, JobView};
use super::runs::parse_run_id;
use super::AppState;
use crate::auth::middleware::{presented_token, verify_token};
use crate::auth::{Caller, Scope};
use crate::events::types::TypeFilter;
use crate::events::{cursor, tickets};
use crate::handlers::HandlerRegistry;
use crate::redact::scrub_text;
use crate::store::{EventPosition, EventQuery, EventRow, Store, StoreResult};

#[derive(OpenApi)]
#[openapi(
    paths(list_events, stream_events, create_ticket),
    components(schemas(Event, EventPage, TicketRequest, Ticket))
)]
pub struct EventsApi;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/events", get(list_events))
        .route("/events/stream", get(stream_events))
        .route("/events/tickets", post(create_ticket))
}

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// A comment line this often keeps a stream open through proxies that
/// close idle connections (30 to 60 s is common).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Event {
    /// Its place in the order every reader sees (commit order); also the
    /// cursor to read on from it, and the stream's `id:`.
    pub event_id: String,
    /// E.g. `run.failed`, `job.paused`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub at: DateTime<Utc>,
    pub job_id: Option<String>,
    pub run_id: Option<Uuid>,
    /// The replica that made the change (run events).
    pub instance: Option<String>,
    /// The transition (`from`, `reason`, `attempt`) and the run (`run`) or
    /// job (`job`) as the API shows it now, secrets redacted; `null` once
    /// it is gone.
    #[schema(value_type = Object)]
    pub data: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Pass as `cursor` for the next page (in the same `order`): where this
    /// page's read got to. A filtered page may hold fewer events than its
    /// `limit` (even none) while more follow; with nothing left to read
    /// yet, it is the cursor asked for (poll again with it).
    pub next_cursor: Option<String>,
}

/// The filters of a page or a stream.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Comma-separated types (`run.failed,run.timed_out`) or groups
    /// (`run.`, `job.`, `service.`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    pub job_id: Option<String>,
    pub run_id: Option<String>,
    /// From after this event (a page's `next_cursor`, an event's `event_id`).
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<i64>,
    /// `asc` (default, oldest first) or `desc`.
    pub order: Option<String>,
    /// Stream only: a ticket from `POST /api/v1/events/tickets`, for a
    /// client that cannot send a header (a browser's `EventSource`).
    pub ticket: Option<String>,
}

/// The filters, checked.
struct Filters {
    types: TypeFilter,
    job_id: Option<String>,
    run_id: Option<Uuid>,
}

impl Filters {
    fn parse(
        event_type: Option<&str>,
        job_id: Option<String>,
        run_id: Option<&str>,
    ) -> ApiResult<Filters> {
        let types = TypeFilter::parse(event_type.unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("type: {e}")))?;
        let run_id = run_id.map(parse_run_id).transpose()?;
        if let Some(j) = job_id.as_deref() {
            if j.is_empty() || j.len() > 200 {
                return Err(ApiError::bad_request("job_id: must be 1 to 200 characters"));
            }
            if j.contains('\0') {
                return Err(ApiError::bad_request(
                    "job_id: must not contain a NUL character",
                ));
            }
        }
        Ok(Filters {
            types,
            job_id,
            run_id,
        })
    }

    /// The canonical form a ticket is bound to.
    fn canonical(&self) -> String {
        let mut parts = Vec::new();
        if !self.types.is_empty() {
            parts.push(format!("type={}", self.types));
        }
        if let Some(job_id) = &self.job_id {
            parts.push(format!("job_id={job_id}"));
        }
        if let Some(run_id) = self.run_id {
            parts.push(format!("run_id={run_id}"));
        }
        parts.join("&")
    }

    fn query(&self, after: Option<EventPosition>, descending: bool, limit: i64) -> EventQuery {
        EventQuery {
            types: self.types.clone(),
            job_id: self.job_id.clone(),
            run_id: self.run_id,
            after,
            descending,
            limit,
        }
    }
}

fn parse_cursor(name: &str, raw: Option<&str>) -> ApiResult<Option<EventPosition>> {
    raw.map(|c| cursor::parse(c).map_err(|e| ApiError::bad_request(format!("{name}: {e}"))))
        .transpose()
}

/// Events, oldest first (or newest first), filtered, from a cursor
///
/// A cursor never skips or repeats an event, even when transactions commit
/// out of order: a page holds only events whose transaction, and every
/// older one, has ended.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody)))]
async fn list_events(
    State(app): State<AppState>,
    QueryParams(q): QueryParams<EventsQuery>,
) -> ApiResult<Json<EventPage>> {
    if q.ticket.is_some() {
        return Err(ApiError::bad_request(
            "ticket: only GET /api/v1/events/stream takes a ticket; send a token here",
        ));
    }
    let filters = Filters::parse(q.event_type.as_deref(), q.job_id, q.run_id.as_deref())?;
    let after = parse_cursor("cursor", q.cursor.as_deref())?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        )));
    }
    let descending = match q.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order: {other:?} is not an order; use asc or desc"
            )))
        }
    };
    let page = app
        .store
        .events_page(&filters.query(after, descending, limit))
        .await?;
    let next_cursor = page.scanned_to.or(after).map(cursor::encode);
    let events = assemble(&app.store, &app.registry, page.events).await?;
    Ok(Json(EventPage {
        events,
        next_cursor,
    }))
}

/// Events as they commit, as Server-Sent Events
///
/// Each event is sent with `event:` its type, `id:` its `event_id` and
/// `data:` the event as `GET /api/v1/events` shows it. A reconnect that
/// sends `Last-Event-ID` (browsers do) resumes right after that event,
/// losing nothing; so does `cursor`. Without either, the stream starts with
/// the events committed after it opened. A comment every 15 s keeps idle
/// connections open through proxies. Events from every replica arrive.
///
/// With auth on, send a token of `read` scope, or (from a browser's
/// `EventSource`, which cannot send headers) `ticket`, made for these
/// filters by `POST /api/v1/events/tickets`.
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "events", params(EventsQuery),
    responses((status = 200, description = "text/event-stream of events", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn stream_events(
    State(app): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<EventsQuery>,
) -> ApiResult<Response> {
    let filters = Filters::parse(
        q.event_type.as_deref(),
        q.job_id.clone(),
        q.run_id.as_deref(),
    )?;
    if q.limit.is_some() || q.order.is_some() {
        return Err(ApiError::bad_request(
            "a stream takes no limit or order: it sends every event, oldest first",
        ));
    }
    authorize_stream(&app, &headers, q.ticket.as_deref(), &filters).await?;
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID: is not text"))
        })
        .transpose()?;
    let resume = match parse_cursor("Last-Event-ID", last_event_id)? {
        Some(position) => Some(position),
        None => parse_cursor("cursor", q.cursor.as_deref())?,
    };
    let hub = app.events.clone();
    let after = match resume {
        Some(position) => Some(position),
        None => hub.newest().await?,
    };
    let reader = hub.reader(filters.query(after, false, 0)).await;
    let shutdown = app.shutdown.clone();
    let (store, registry) = (app.store.clone(), app.registry.clone());
    let events = stream::unfold(
        (reader, store, registry, shutdown),
        |(mut reader, store, registry, shutdown)| async move {
            loop {
                let page = tokio::select! {
                    // Ends the stream at shutdown, so the server can drain.
                    _ = shutdown.cancelled() => return None,
                    page = reader.next(Duration::from_secs(60)) => page,
                };
                let rows = match page {
                    Ok(rows) if rows.is_empty() => continue,
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream: reading events failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let sent = match assemble(&store, &registry, rows).await {
                    Ok(events) => events.iter().map(sse_event).collect::<Vec<_>>(),
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream: reading the events' runs failed; the stream ends and the client resumes");
                        return None;
                    }
                };
                return Some((stream::iter(sent), (reader, store, registry, shutdown)));
            }
        },
    )
    .flatten();
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

fn sse_event(event: &Event) -> Result<SseEvent, Infallible> {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    Ok(SseEvent::default()
        .id(event.event_id.clone())
        .event(event.event_type.clone())
        .data(data))
}

/// With auth on, the stream needs a token of `read` scope or a ticket for
/// its filters (the route is open in `crate::auth::scope` for this).
async fn authorize_stream(
    app: &AppState,
    headers: &HeaderMap,
    ticket: Option<&str>,
    filters: &Filters,
) -> ApiResult<()> {
    if !app.auth.enabled() {
        return Ok(());
    }
    const HOW: &str = "send `Authorization: Bearer <token>` with read scope, or `ticket` from POST /api/v1/events/tickets";
    let presented =
        presented_token(headers).map_err(|p| ApiError::Unauthorized(format!("{p}; {HOW}")))?;
    match (presented, ticket) {
        (Some(token), _) => {
            let caller = verify_token(&app.auth, token).await?;
            if !caller.scope.allows(Scope::Read) {
                return Err(ApiError::Forbidden(format!(
                    "the token {:?} has {} scope; the stream needs read",
                    caller.name, caller.scope
                )));
            }
            Ok(())
        }
        (None, Some(ticket)) => {
            if !tickets::is_well_formed(ticket) {
                return Err(ApiError::Unauthorized(format!(
                    "ticket: not a stream ticket; {HOW}"
                )));
            }
            let stored = app.store.event_ticket_get(&tickets::hash(ticket)).await?;
            tickets::judge(stored.as_ref(), &filters.canonical(), Utc::now())
                .map_err(|refusal| ApiError::Unauthorized(refusal.to_string()))
        }
        (None, None) => Err(ApiError::Unauthorized(format!(
            "this stream needs a credential; {HOW}"
        ))),
    }
}

/// `POST /api/v1/events/tickets`: the stream's filters.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    /// As the stream's `type`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub job_id: Option<String>,
    pub run_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ticket {
    /// Pass as the stream's `ticket`; shown once.
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
    /// The stream's URL with its filters and the ticket (relative).
    pub url: String,
}

/// A stream ticket, for a browser's EventSource
///
/// Valid for 10 minutes, for the stream with exactly these filters (and
/// its reconnects), while the token that made it is valid. It opens
/// nothing else.
#[utoipa::path(post, path = "/api/v1/events/tickets", tag = "events",
    request_body(content = TicketRequest, description = "The stream's filters (all optional)"),
    responses((status = 201, body = Ticket), (status = 400, body = ErrorBody)))]
async fn create_ticket(
    State(app): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    RawBody(body): RawBody,
) -> ApiResult<(StatusCode, Json<Ticket>)> {
    let request: TicketRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TicketRequest::default()
    } else {
        parse_json(&body)?
    };
    let filters = Filters::parse(
        request.event_type.as_deref(),
        request.job_id,
        request.run_id.as_deref(),
    )?;
    let minted = tickets::mint();
    let expires_at = Utc::now() + tickets::TICKET_TTL;
    let query = filters.canonical();
    let token_id = caller.and_then(|c| c.0.token_id);
    app.store
        .event_ticket_insert(&minted.hash, token_id, &query, expires_at)
        .await?;
    let url = stream_url(&filters, &minted.secret);
    Ok((
        StatusCode::CREATED,
        Json(Ticket {
            ticket: minted.secret,
            expires_at,
            url,
        }),
    ))
}

fn stream_url(filters: &Filters, ticket: &str) -> String {
    let mut url =
        reqwest::Url::parse("http://jobsd/api/v1/events/stream").expect("a constant URL parses");
    {
        let mut pairs = url.query_pairs_mut();
        if !filters.types.is_empty() {
            pairs.append_pair("type", &filters.types.to_string());
        }
        if let Some(job_id) = &filters.job_id {
            pairs.append_pair("job_id", job_id);
        }
        if let Some(run_id) = filters.run_id {
            pairs.append_pair("run_id", &run_id.to_string());
        }
        pairs.append_pair("ticket", ticket);
    }
    format!("{}?{}", url.path(), url.query().unwrap_or_default())
}

/// The events as the API shows them: `data` from the runs and jobs they
/// name as they are now (one read of each kind per page), redacted.
pub async fn assemble(
    store: &Store,
    registry: &HandlerRegistry,
    rows: Vec<EventRow>,
) -> StoreResult<Vec<Event>> {
    let mut run_ids: Vec<Uuid> = rows.iter().filter_map(|e| e.run_id).collect();
    run_ids.sort_unstable();
    run_ids.dedup();
    let is_alert = |e: &EventRow| e.event_type.starts_with("alert.");
    let mut job_ids: Vec<String> = rows
        .iter()
        .filter(|e| e.run_id.is_none() || is_alert(e))
        .filter_map(|e| e.job_id.clone())
        .collect();
    job_ids.sort_unstable();
    job_ids.dedup();
    let runs: HashMap<Uuid, _> = if run_ids.is_empty() {
        HashMap::new()
    } else {
        store
            .run_get_many(&run_ids)
            .await?
            .into_iter()
            .map(|r| (r.run_id, r))
            .collect()
    };
    let jobs: HashMap<String, _> = if job_ids.is_empty() {
        HashMap::new()
    } else {
        store
            .job_get_many(&job_ids)
            .await?
            .into_iter()
            .map(|j| (j.job_id.clone(), j))
            .collect()
    };
    Ok(rows
        .into_iter()
        .map(|row| {
            let data = if let (true, Some(job_id)) = (is_alert(&row), &row.job_id) {
                // An alert: why, and the job as it is now (its
                // `alerts_open`); the run that raised it, if one did, is
                // the event's `run_id`.
                json!({
                    "alert": row.event_type.trim_start_matches("alert."),
                    "reason": row.reason,
                    "job": jobs.get(job_id).map(|j| JobView::build(j.clone(), registry)),
                })
            } else if let Some(data) = &row.data {
                // A batch event: its data was written with it.
                data.clone()
            } else if let Some(run_id) = row.run_id {
                let run = runs.get(&run_id);
                // A reason may quote the run's kwargs: shown only scrubbed,
                // so only while the run (and its handler's rules) is there.
                let reason = run.and_then(|run| {
                    let secrets = registry.secrets_of(&run.handler, &run.kwargs);
                    row.reason.as_deref().map(|r| scrub_text(r, &secrets))
                });
                json!({
                    "from": row.from_state,
                    "reason": reason,
                    "attempt": row.attempt,
                    "run": run.map(|r| run_view(r.clone(), registry)),
                })
            } else if let Some(job_id) = &row.job_id {
                json!({
                    "from": row.from_state,
                    "job": jobs.get(job_id).map(|j| JobView::build(j.clone(), registry)),
                })
            } else if let Some(reason) = &row.reason {
                // A webhook disabled: what and why.
                json!({ "reason": reason })
            } else {
                json!({})
            };
            Event {
                event_id: cursor::encode(row.position),
                event_type: row.event_type,
                at: row.at,
                job_id: row.job_id,
                run_id: row.run_id,
                instance: row.instance,
                data,
            }
        })
        .collect())
}
