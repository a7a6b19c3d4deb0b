//! The OpenAPI document: generated from the code (utoipa), plus one
//! `POST /api/v1/jobs/{name}` entry per registered (not inert) handler carrying that
//! handler's kwargs schema and example — no per-handler boilerplate.

use serde_json::{json, Map, Value};
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};

use super::jobs::CreateQuery;
use crate::handlers::HandlerRegistry;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "jobsd",
        description = "A job-scheduling service on PostgreSQL: periodic and one-shot jobs that survive restarts and fire exactly once across replicas.",
        license(name = "MIT")
    ),
    components(schemas(super::error::ErrorBody, crate::job_spec::FieldError)),
    modifiers(&TokenSchemes),
    security(("bearer" = []), ("auth_token" = [])),
    tags(
        (name = "jobs", description = "Job definitions"),
        (name = "handlers", description = "Create a job of one handler: query parameters for the schedule, the body for the kwargs"),
        (name = "runs", description = "Runs of jobs and their history"),
        (name = "events", description = "What happened: run transitions, job changes and service pauses, as pages and as a Server-Sent Events stream"),
        (name = "callbacks", description = "Reports from the services that callback runs (http, \"callback\": true) call, authenticated by the run's callback token"),
        (name = "service", description = "Service state and probes"),
        (name = "cluster", description = "Replicas sharing the database, and held lock keys"),
        (name = "tokens", description = "API tokens (admin scope)"),
        (name = "webhooks", description = "Webhooks (Standard Webhooks v1): events POSTed to URLs, signed and retried (admin scope)"),
        (name = "batches", description = "Batches: rows processed by one handler on every replica's workers, appended until wait-off, with exact counts and streamed outputs"),
        (name = "audit", description = "The audit log of mutating calls (admin scope)")
    )
)]
struct ApiDoc;

/// The two ways to send an API token, so that Swagger UI offers an
/// Authorize button: `Authorization: Bearer`, and the original service's
/// `auth-token` header.
struct TokenSchemes;

impl Modify for TokenSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("jobsd_…")
                    .description(Some(
                        "An API token (`jobsd token create`), as `Authorization: Bearer <token>`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "callback_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("jobsdcb_…")
                    .description(Some(
                        "A callback run's token, as its request's X-Jobsd-Callback-Token sent it, as `Authorization: Bearer <token>` (the callback routes only)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "auth_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "auth-token",
                "An API token in the original service's `auth-token` header",
            ))),
        );
    }
}

/// The whole document, as served at `/api/v1/openapi.json` and committed as
/// `openapi/openapi.json`.
pub fn document(registry: &HandlerRegistry) -> Value {
    // Each resource documents its own paths (full paths, so they are merged
    // rather than nested).
    let mut api = ApiDoc::openapi();
    api.merge(super::jobs::JobsApi::openapi());
    api.merge(super::runs::RunsApi::openapi());
    api.merge(super::callbacks::CallbacksApi::openapi());
    api.merge(super::events::EventsApi::openapi());
    api.merge(super::service::ServiceApi::openapi());
    api.merge(super::stats::StatsApi::openapi());
    api.merge(super::instances::InstancesApi::openapi());
    api.merge(super::tokens::TokensApi::openapi());
    api.merge(super::webhooks::WebhooksApi::openapi());
    api.merge(super::batches::BatchesApi::openapi());
    api.merge(super::batch_files::BatchFilesApi::openapi());
    api.merge(super::audit::AuditApi::openapi());
    let mut doc = serde_json::to_value(api).unwrap_or_else(|_| json!({}));
    let parameters: Vec<Value> = CreateQuery::into_params(|| Some(ParameterIn::Query))
        .into_iter()
        .filter_map(|p| serde_json::to_value(p).ok())
        .collect();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        // Inert handlers (failure records) cannot be created, so get no form.
        for handler in registry.iter().filter(|h| !h.inert()) {
            let name = handler.name();
            let mut description = handler.description().to_string();
            if let Some(reason) = handler.disabled_reason() {
                description.push_str(&format!("\n\nDisabled here: {reason}."));
            }
            let operation = json!({
                "tags": ["handlers"],
                "summary": format!("Create a `{name}` job"),
                "description": description,
                "operationId": format!("create_{}_job", name.to_ascii_lowercase()),
                "parameters": parameters,
                "requestBody": {
                    "description": format!("The kwargs of the `{name}` handler"),
                    "required": false,
                    "content": {"application/json": {
                        "schema": handler.kwargs_schema(),
                        "example": handler.example(),
                    }}
                },
                "responses": {
                    "201": {"description": "Created",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobEnvelope"}}}},
                    "400": {"description": "Invalid schedule, policy or kwargs",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}},
                    "409": {"description": "job_id taken",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
                }
            });
            let mut item = Map::new();
            item.insert("post".into(), operation);
            paths.insert(format!("/api/v1/jobs/{name}"), Value::Object(item));
        }
    }
    doc
}

/// The document as pretty JSON with a trailing newline (the committed form).
pub fn document_text(registry: &HandlerRegistry) -> String {
    let mut text = serde_json::to_string_pretty(&document(registry)).unwrap_or_default();
    text.push('\n');
    text
}
