//! The `http` handler: one HTTP(S) request per run.
//!
//! Guarantees:
//! - `secret_headers` are sent like `headers` (one of the same name
//!   replaces it); they, and `headers`' `Authorization`, `Cookie` and
//!   `X-Api-Key` values (any case), are secrets: shown as `"***"`
//!   everywhere but in the request ([`crate::redact`]);
//! - only `http://` and `https://` URLs are requested; a bad URL, method or
//!   header is a fatal error;
//! - a string `body` is sent as text (`text/plain; charset=utf-8`), any other
//!   JSON `body` as JSON (`application/json`), unless `headers` sets
//!   `content-type`;
//! - unless `run_headers` is false, the request says which run sends it:
//!   `X-Jobsd-Run-Id`, `X-Jobsd-Job-Id`, `X-Jobsd-Scheduled-For` (RFC 3339),
//!   `X-Jobsd-Attempt` and `Idempotency-Key: <run_id>`, so that the service
//!   called can de-duplicate (a run may be executed again after a crash); a
//!   header of the same name in `headers` or `secret_headers` wins;
//! - with `"callback": true` (which needs `--public-url`), the request also
//!   carries `X-Jobsd-Callback-Url` and `X-Jobsd-Callback-Token` (the
//!   attempt's secret, never shown or logged), whatever `run_headers` says
//!   and replacing headers of those names; an accepted answer (in
//!   `expect_status`) then leaves the run `running` until the service
//!   reports back (`crate::callbacks`);
//! - the whole exchange (connect, send, read the body) is bounded by `timeout`
//!   seconds (default 30) and stops promptly when the run is cancelled;
//! - redirects are followed (up to 10); the result describes the final response;
//! - every address connected to, and every URL requested (redirects
//!   included), passes the address policy (`--http-deny`, `--http-allow`,
//!   the default deny list; see `http_guard.rs`); a refusal is a fatal
//!   error naming the rule. Proxy variables from the environment are
//!   ignored (`--http-proxy` sets one);
//! - the result is `{"status", "headers", "body", "body_truncated"}` where
//!   `headers` holds only `content-type`, `content-length` and `location` when
//!   present, and `body` is parsed JSON for a complete JSON response, else text
//!   bounded to `max_output_bytes` (cut at a char boundary);
//! - a status outside `expect_status` (default: any 2xx) is an error naming the
//!   status and the start of the body: retryable for 5xx and 429, fatal
//!   otherwise; connection errors and timeouts are retryable and their message
//!   holds the whole error chain.
//!
//! One `reqwest::Client` (with its connection pool) serves every run.

use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use std::sync::Arc;

use super::http_guard::{build_client, check_url, refusal_in};
use super::{bounded_text, cancelled, error_chain, fatal, parse_kwargs, retryable, seconds};
use crate::guard::AddressPolicy;
use crate::handlers::{Handler, HandlerResult, RunContext};
use crate::redact::SecretField;

const NAME: &str = "http";
const DEFAULT_TIMEOUT_SECONDS: f64 = 30.0;
/// How much of an unexpected response's body goes into the error message.
const ERROR_BODY_BYTES: usize = 512;
/// `headers` whose values are secrets, compared ignoring case.
const SECRET_HEADER_NAMES: [&str; 3] = ["authorization", "cookie", "x-api-key"];
/// Where a callback run's service reports back (`{public_url}/api/v1/runs/{run_id}`).
pub const CALLBACK_URL_HEADER: &str = "x-jobsd-callback-url";
/// The attempt's callback secret, to send back as `Authorization: Bearer`.
pub const CALLBACK_TOKEN_HEADER: &str = "x-jobsd-callback-token";
/// Response headers copied into the result.
const RESULT_HEADERS: [&str; 3] = ["content-type", "content-length", "location"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpKwargs {
    url: String,
    #[serde(default)]
    method: Method,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    secret_headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default = "default_timeout")]
    timeout: f64,
    #[serde(default)]
    expect_status: Option<ExpectStatus>,
    #[serde(default = "default_run_headers")]
    run_headers: bool,
    #[serde(default)]
    callback: bool,
}

fn default_run_headers() -> bool {
    true
}

/// The headers that tell the called service which run sends the request.
/// The run id and `Idempotency-Key` stay the same for every attempt of a
/// run; `X-Jobsd-Attempt` tells the attempts apart.
fn run_header_values(ctx: &RunContext) -> [(&'static str, String); 5] {
    [
        ("x-jobsd-run-id", ctx.run_id.to_string()),
        ("x-jobsd-job-id", ctx.job_id.clone()),
        (
            "x-jobsd-scheduled-for",
            ctx.scheduled_for
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        ("x-jobsd-attempt", ctx.attempt.to_string()),
        ("idempotency-key", ctx.run_id.to_string()),
    ]
}

fn default_timeout() -> f64 {
    DEFAULT_TIMEOUT_SECONDS
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum Method {
    #[default]
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
    Options,
}

impl Method {
    fn to_reqwest(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
            Method::Head => reqwest::Method::HEAD,
            Method::Options => reqwest::Method::OPTIONS,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ExpectStatus {
    One(u16),
    Many(Vec<u16>),
}

impl ExpectStatus {
    fn accepts(expected: Option<&ExpectStatus>, status: u16) -> bool {
        match expected {
            None => (200..300).contains(&status),
            Some(ExpectStatus::One(one)) => *one == status,
            Some(ExpectStatus::Many(many)) => many.contains(&status),
        }
    }
}

/// Sends one HTTP request per run.
pub struct HttpHandler {
    /// Built once; an error here (no TLS backend) fails each run instead of
    /// panicking at startup.
    client: Result<reqwest::Client, String>,
    policy: Arc<AddressPolicy>,
    via_proxy: bool,
    max_output_bytes: usize,
    /// Whether `--public-url` is set (callback jobs are refused without).
    callbacks_enabled: bool,
}

impl HttpHandler {
    pub fn new(max_output_bytes: usize, policy: Arc<AddressPolicy>, proxy: Option<String>) -> Self {
        let client = build_client(policy.clone(), proxy.as_deref());
        HttpHandler {
            client,
            policy,
            via_proxy: proxy.is_some(),
            max_output_bytes,
            callbacks_enabled: false,
        }
    }

    /// Accepts callback jobs (`--public-url` is set).
    pub fn with_callbacks(mut self, enabled: bool) -> Self {
        self.callbacks_enabled = enabled;
        self
    }

    async fn request(&self, ctx: &RunContext, kwargs: HttpKwargs) -> HandlerResult {
        let client = self
            .client
            .as_ref()
            .map_err(|e| fatal(format!("the HTTP client could not be built: {e}")))?;
        let url = reqwest::Url::parse(&kwargs.url)
            .map_err(|e| fatal(format!("invalid url {:?}: {e}", kwargs.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(fatal(format!(
                "url {:?}: only http and https are supported",
                kwargs.url
            )));
        }
        let timeout = seconds("timeout", kwargs.timeout)?;
        if timeout.is_zero() {
            return Err(fatal("timeout must be greater than 0"));
        }
        let method = kwargs.method.to_reqwest();
        // A literal IP is never resolved: the resolver cannot check it.
        check_url(&self.policy, &url, self.via_proxy)
            .map_err(|refusal| fatal(format!("{method} {url}: {refusal}")))?;
        let mut headers = header_map(&kwargs.headers, &kwargs.secret_headers)?;
        if kwargs.run_headers {
            for (name, value) in run_header_values(ctx) {
                // A job id is any text; one a header cannot carry is left out.
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers
                        .entry(HeaderName::from_static(name))
                        .or_insert(value);
                }
            }
        }
        if kwargs.callback {
            let grant = ctx.callback().ok_or_else(|| {
                fatal("callback: true, but this replica has no --public-url to be called back at")
            })?;
            let mut token = HeaderValue::from_str(&grant.token)
                .map_err(|_| fatal("the callback token cannot be sent as a header"))?;
            token.set_sensitive(true);
            let url = HeaderValue::from_str(&grant.url)
                .map_err(|_| fatal("the callback URL cannot be sent as a header"))?;
            headers.insert(HeaderName::from_static(CALLBACK_URL_HEADER), url);
            headers.insert(HeaderName::from_static(CALLBACK_TOKEN_HEADER), token);
        }
        let has_content_type = headers.contains_key(CONTENT_TYPE);
        let mut request = client
            .request(method.clone(), url.clone())
            .timeout(timeout)
            .headers(headers);
        match kwargs.body {
            None => {}
            Some(Value::String(text)) => {
                if !has_content_type {
                    request = request.header(CONTENT_TYPE, "text/plain; charset=utf-8");
                }
                request = request.body(text);
            }
            Some(value) => {
                if !has_content_type {
                    request = request.header(CONTENT_TYPE, "application/json");
                }
                let bytes = serde_json::to_vec(&value)
                    .map_err(|e| fatal(format!("body cannot be serialized: {e}")))?;
                request = request.body(bytes);
            }
        }

        let what = format!("{method} {url}");
        let transport_error = |e: reqwest::Error| {
            if let Some(refusal) = refusal_in(&e) {
                return fatal(format!("{what}: {refusal}"));
            }
            let (timeout, builder) = (e.is_timeout(), e.is_builder());
            let chain = error_chain(&e.without_url());
            if timeout {
                retryable(format!(
                    "{what}: timed out after {}s: {chain}",
                    kwargs.timeout
                ))
            } else if builder {
                fatal(format!("{what}: invalid request: {chain}"))
            } else {
                retryable(format!("{what}: {chain}"))
            }
        };
        let mut response = request.send().await.map_err(transport_error)?;

        let status = response.status();
        let mut result_headers = Map::new();
        for name in RESULT_HEADERS {
            if let Some(value) = response.headers().get(name) {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                result_headers.insert(name.to_string(), Value::String(value));
            }
        }
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_content_type);

        // Keep one byte past the bound (so `bounded_text` knows where a char
        // starts) and stop downloading there.
        let limit = self.max_output_bytes.saturating_add(1);
        let mut bytes: Vec<u8> = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            let room = limit - bytes.len();
            bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if bytes.len() >= limit {
                break;
            }
        }
        let over = bytes.len() > self.max_output_bytes;

        if !ExpectStatus::accepts(kwargs.expect_status.as_ref(), status.as_u16()) {
            let (start, cut) = bounded_text(&bytes, ERROR_BODY_BYTES);
            let ellipsis = if cut || over { "…" } else { "" };
            let message = format!("{what}: unexpected status {status}; body: {start}{ellipsis}");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                retryable(message)
            } else {
                fatal(message)
            });
        }

        let (body, body_truncated) = if over {
            let (text, _) = bounded_text(&bytes, self.max_output_bytes);
            (Value::String(text), true)
        } else {
            let parsed = if is_json && !bytes.is_empty() {
                serde_json::from_slice(&bytes).ok()
            } else {
                None
            };
            match parsed {
                Some(value) => (value, false),
                None => {
                    let (text, cut) = bounded_text(&bytes, self.max_output_bytes);
                    (Value::String(text), cut)
                }
            }
        };
        // A batch row's endpoint may answer with output files: they go to
        // the top of the result, where the row's worker takes them
        // (README "Batches"); a run's result keeps its body as it came.
        let mut body = body;
        let files = match (&mut body, ctx.batch()) {
            (Value::Object(fields), Some(_)) => fields.remove(crate::batches::files::KEY),
            _ => None,
        };
        let mut result = json!({
            "status": status.as_u16(),
            "headers": result_headers,
            "body": body,
            "body_truncated": body_truncated,
        });
        if let (Some(files), Value::Object(fields)) = (files, &mut result) {
            fields.insert(crate::batches::files::KEY.to_string(), files);
        }
        Ok(result)
    }
}

/// The request headers: `headers`, then `secret_headers`, each of which
/// replaces any header of its name (a second `Authorization` would be
/// ambiguous). Errors never quote a value: it may be a secret.
fn header_map(
    headers: &BTreeMap<String, String>,
    secret_headers: &BTreeMap<String, String>,
) -> Result<HeaderMap, crate::handlers::HandlerError> {
    let mut map = HeaderMap::new();
    for (field, entries, secret) in [
        ("headers", headers, false),
        ("secret_headers", secret_headers, true),
    ] {
        for (name, value) in entries {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| fatal(format!("{field}: invalid header name {name:?}: {e}")))?;
            let mut header_value = HeaderValue::from_str(value)
                .map_err(|e| fatal(format!("{field}: invalid value for header {name:?}: {e}")))?;
            if secret {
                header_value.set_sensitive(true);
                map.insert(header_name, header_value);
            } else {
                map.append(header_name, header_value);
            }
        }
    }
    Ok(map)
}

/// `application/json`, `application/problem+json`, ... (parameters ignored).
fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[async_trait]
impl Handler for HttpHandler {
    fn name(&self) -> &str {
        NAME
    }

    fn wants_callback(&self, kwargs: &Value) -> bool {
        kwargs.get("callback") == Some(&Value::Bool(true))
    }

    fn check_kwargs(&self, kwargs: &Value) -> Vec<(String, String)> {
        if self.wants_callback(kwargs) && !self.callbacks_enabled {
            return vec![(
                "/callback".into(),
                "true needs --public-url (JOBSD_PUBLIC_URL): the base URL at which the called \
                 service reaches jobsd to report back; set it on every replica, or drop \
                 \"callback\""
                    .into(),
            )];
        }
        Vec::new()
    }

    fn description(&self) -> &str {
        "Sends an HTTP request and stores the status, a few headers and the bounded body"
    }

    fn kwargs_schema(&self) -> Value {
        let status = json!({"type": "integer", "minimum": 100, "maximum": 599});
        json!({
            "type": "object",
            "properties": {
                "url": {
                    "type": "string",
                    "format": "uri",
                    "pattern": "^https?://",
                    "description": "The http:// or https:// URL to request.",
                },
                "method": {
                    "type": "string",
                    "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                    "default": "GET",
                    "description": "The HTTP method.",
                },
                "headers": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Request headers, name to value. The values of Authorization, Cookie and X-Api-Key (any case) are secret: stored, sent, and shown everywhere else as \"***\" (a PATCH sending \"***\" keeps the stored value).",
                },
                "secret_headers": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "writeOnly": true},
                    "writeOnly": true,
                    "description": "More request headers, name to value, every value secret: stored, sent (replacing a header of the same name), and shown everywhere else as \"***\" (a PATCH sending \"***\" keeps the stored value).",
                },
                "body": {
                    "description": "Request body: a string is sent as text, any other JSON value as JSON (content-type application/json unless headers set one).",
                },
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "default": DEFAULT_TIMEOUT_SECONDS,
                    "description": "Seconds for the whole exchange (connect, send, read the body).",
                },
                "run_headers": {
                    "type": "boolean",
                    "default": true,
                    "description": "Send X-Jobsd-Run-Id, X-Jobsd-Job-Id, X-Jobsd-Scheduled-For, X-Jobsd-Attempt and Idempotency-Key (the run id), so the service called can de-duplicate a run executed again after a crash. A header of the same name in headers wins.",
                },
                "callback": {
                    "type": "boolean",
                    "default": false,
                    "description": "The service called completes the run itself: the request also carries X-Jobsd-Callback-Url ({public_url}/api/v1/runs/{run_id}) and X-Jobsd-Callback-Token (a secret per attempt); an accepted answer leaves the run running until the service calls POST {url}/complete (and /progress, /heartbeat) with Authorization: Bearer <token>, or until its timeout (default --callback-timeout) passes. Needs --public-url.",
                },
                "expect_status": {
                    "oneOf": [
                        status,
                        {"type": "array", "items": status, "minItems": 1},
                    ],
                    "description": "Accepted status code(s); default any 2xx. Another status fails the run (retryably for 5xx and 429).",
                },
            },
            "required": ["url"],
            "additionalProperties": false,
        })
    }

    fn example(&self) -> Value {
        json!({
            "url": "https://example.com/api/refresh",
            "method": "POST",
            "headers": {"accept": "application/json"},
            "secret_headers": {"authorization": "Bearer example-token"},
            "body": {"full": true},
            "timeout": 10,
            "expect_status": [200, 202],
        })
    }

    fn secret_fields(&self) -> Vec<SecretField> {
        vec![
            SecretField::values_named("headers", &SECRET_HEADER_NAMES),
            SecretField::every_value("secret_headers"),
        ]
    }

    async fn execute(&self, ctx: RunContext, kwargs: Value) -> HandlerResult {
        let kwargs: HttpKwargs = parse_kwargs(NAME, kwargs)?;
        let what = format!("{} {}", kwargs.method.to_reqwest(), kwargs.url);
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => Err(cancelled(format!("{what}: cancelled"))),
            result = self.request(&ctx, kwargs) => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};
    use axum::{Json, Router};

    use super::super::tests::{assert_rejected, ctx};
    use super::*;
    use crate::handlers::HandlerError;

    async fn echo(headers: HeaderMap, body: String) -> Json<Value> {
        let content_type = headers.get("content-type").map(|v| v.to_str().unwrap());
        Json(json!({"content_type": content_type, "body": body}))
    }

    async fn status(Path(code): Path<u16>) -> (StatusCode, String) {
        (
            StatusCode::from_u16(code).unwrap(),
            format!("status body {code}"),
        )
    }

    /// Starts a test server on 127.0.0.1 and returns its base URL.
    async fn server() -> String {
        let app = Router::new()
            .route("/json", get(|| async { Json(json!({"hello": "world"})) }))
            .route("/echo", post(echo).put(echo))
            .route("/text", get(|| async { "plain text" }))
            .route(
                "/headers",
                get(|headers: HeaderMap| async move {
                    let custom = headers
                        .get("x-custom")
                        .map(|v| v.to_str().unwrap().to_string());
                    Json(json!({"x-custom": custom}))
                }),
            )
            .route(
                "/run-headers",
                get(|headers: HeaderMap| async move {
                    let seen: Map<String, Value> = headers
                        .iter()
                        .filter(|(name, _)| {
                            name.as_str().starts_with("x-jobsd-")
                                || name.as_str() == "idempotency-key"
                        })
                        .map(|(name, value)| (name.to_string(), json!(value.to_str().unwrap())))
                        .collect();
                    Json(Value::Object(seen))
                }),
            )
            .route("/status/{code}", get(status))
            .route(
                "/created",
                post(|| async { (StatusCode::CREATED, [("location", "/things/1")], "made") }),
            )
            .route("/big", get(|| async { "é".repeat(100_000) }))
            .route("/emoji", get(|| async { "😀".repeat(1000) }))
            .route(
                "/bad-json",
                get(|| async { ([("content-type", "application/json")], "{not json") }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn handler(max_output_bytes: usize) -> HttpHandler {
        HttpHandler::new(max_output_bytes, Arc::default(), None)
    }

    async fn run(kwargs: Value) -> HandlerResult {
        handler(64 * 1024).execute(ctx(), kwargs).await
    }

    #[tokio::test]
    async fn requests_say_which_run_sends_them_unless_turned_off() {
        let base = server().await;
        let url = format!("{base}/run-headers");
        let mut ctx = ctx();
        ctx.attempt = 3;
        ctx.scheduled_for = chrono::DateTime::parse_from_rfc3339("2026-12-02T05:00:00.250Z")
            .unwrap()
            .into();
        let run_id = ctx.run_id.to_string();
        let out = handler(64 * 1024)
            .execute(ctx.clone(), json!({"url": url}))
            .await
            .unwrap();
        assert_eq!(
            out["body"],
            json!({
                "x-jobsd-run-id": run_id,
                "x-jobsd-job-id": "test-job",
                "x-jobsd-scheduled-for": "2026-12-02T05:00:00.250Z",
                "x-jobsd-attempt": "3",
                "idempotency-key": run_id,
            })
        );

        // A header of the job's own wins.
        let out = handler(64 * 1024)
            .execute(
                ctx.clone(),
                json!({"url": url, "headers": {"Idempotency-Key": "mine"}}),
            )
            .await
            .unwrap();
        assert_eq!(out["body"]["idempotency-key"], "mine");
        assert_eq!(out["body"]["x-jobsd-run-id"], run_id.as_str());

        let out = handler(64 * 1024)
            .execute(ctx, json!({"url": url, "run_headers": false}))
            .await
            .unwrap();
        assert_eq!(out["body"], json!({}));
    }

    fn message(error: &HandlerError) -> String {
        format!("{:#}", error.error)
    }

    #[tokio::test]
    async fn get_json() {
        let base = server().await;
        let result = run(json!({"url": format!("{base}/json")})).await.unwrap();
        assert_eq!(result["status"], 200);
        assert_eq!(result["body"], json!({"hello": "world"}));
        assert_eq!(result["body_truncated"], false);
        assert_eq!(result["headers"]["content-type"], "application/json");
        assert_eq!(result["headers"]["content-length"], "17");
        assert!(result["headers"].get("location").is_none());
    }

    #[tokio::test]
    async fn post_json_body_is_sent_as_json() {
        let base = server().await;
        let kwargs =
            json!({"url": format!("{base}/echo"), "method": "POST", "body": {"a": [1, 2]}});
        let result = run(kwargs).await.unwrap();
        let echoed = &result["body"];
        assert_eq!(echoed["content_type"], "application/json");
        let sent: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
        assert_eq!(sent, json!({"a": [1, 2]}));
    }

    #[tokio::test]
    async fn string_body_is_sent_as_text() {
        let base = server().await;
        let kwargs = json!({"url": format!("{base}/echo"), "method": "PUT", "body": "hi there"});
        let result = run(kwargs).await.unwrap();
        assert_eq!(result["body"]["content_type"], "text/plain; charset=utf-8");
        assert_eq!(result["body"]["body"], "hi there");
    }

    #[tokio::test]
    async fn text_response_is_text() {
        let base = server().await;
        let result = run(json!({"url": format!("{base}/text")})).await.unwrap();
        assert_eq!(result["body"], "plain text");
        assert_eq!(
            result["headers"]["content-type"],
            "text/plain; charset=utf-8"
        );
        // Invalid JSON labelled as JSON falls back to text.
        let result = run(json!({"url": format!("{base}/bad-json")}))
            .await
            .unwrap();
        assert_eq!(result["body"], "{not json");
    }

    #[tokio::test]
    async fn custom_headers_are_sent_and_win_over_defaults() {
        let base = server().await;
        let kwargs = json!({"url": format!("{base}/headers"), "headers": {"X-Custom": "abc"}});
        let result = run(kwargs).await.unwrap();
        assert_eq!(result["body"], json!({"x-custom": "abc"}));
        let kwargs = json!({
            "url": format!("{base}/echo"),
            "method": "POST",
            "headers": {"content-type": "application/merge-patch+json"},
            "body": {"a": null},
        });
        let result = run(kwargs).await.unwrap();
        assert_eq!(
            result["body"]["content_type"],
            "application/merge-patch+json"
        );
    }

    #[tokio::test]
    async fn secret_headers_are_sent_and_replace_headers_of_their_name() {
        let base = server().await;
        let kwargs = json!({
            "url": format!("{base}/headers"),
            "headers": {"x-custom": "plain"},
            "secret_headers": {"X-Custom": "hidden-value"},
        });
        let result = run(kwargs).await.unwrap();
        assert_eq!(result["body"], json!({"x-custom": "hidden-value"}));
        let error = run(json!({"url": "http://x/", "secret_headers": {"X-A": "bad\nvalue"}}))
            .await
            .unwrap_err();
        let text = message(&error);
        assert!(
            text.contains("secret_headers") && !text.contains("bad"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn expect_status_accepts_listed_codes() {
        let base = server().await;
        let result = run(json!({"url": format!("{base}/status/404"), "expect_status": 404}))
            .await
            .unwrap();
        assert_eq!(result["status"], 404);
        assert_eq!(result["body"], "status body 404");
        let kwargs = json!({"url": format!("{base}/created"), "method": "POST", "expect_status": [200, 201]});
        let result = run(kwargs).await.unwrap();
        assert_eq!(result["status"], 201);
        assert_eq!(result["headers"]["location"], "/things/1");
    }

    #[tokio::test]
    async fn unexpected_status_fails() {
        let base = server().await;
        let error = run(json!({"url": format!("{base}/json"), "expect_status": [201]}))
            .await
            .unwrap_err();
        assert!(!error.retryable);
        let text = message(&error);
        assert!(
            text.contains("unexpected status 200") && text.contains("hello"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn server_errors_and_429_are_retryable() {
        let base = server().await;
        for code in [500, 503, 429] {
            let error = run(json!({"url": format!("{base}/status/{code}")}))
                .await
                .unwrap_err();
            assert!(error.retryable, "{code}");
            let text = message(&error);
            assert!(
                text.contains(&format!("unexpected status {code}")),
                "{text}"
            );
            assert!(text.contains(&format!("status body {code}")), "{text}");
        }
    }

    #[tokio::test]
    async fn client_errors_are_fatal() {
        let base = server().await;
        for code in [400, 404] {
            let error = run(json!({"url": format!("{base}/status/{code}")}))
                .await
                .unwrap_err();
            assert!(!error.retryable, "{code}");
            let text = message(&error);
            assert!(
                text.contains(&format!("{code}")) && text.contains("status body"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn big_body_is_truncated_at_a_char_boundary() {
        let base = server().await;
        let result = handler(1001)
            .execute(ctx(), json!({"url": format!("{base}/big")}))
            .await
            .unwrap();
        assert_eq!(result["body_truncated"], true);
        assert_eq!(result["body"], "é".repeat(500));
        for (max, emojis) in [(7, 1), (8, 2), (9, 2), (3, 0)] {
            let result = handler(max)
                .execute(ctx(), json!({"url": format!("{base}/emoji")}))
                .await
                .unwrap();
            assert_eq!(result["body_truncated"], true);
            assert_eq!(result["body"], "😀".repeat(emojis), "max {max}");
        }
    }

    #[tokio::test]
    async fn timeout_is_retryable() {
        let base = server().await;
        let started = Instant::now();
        let error = run(json!({"url": format!("{base}/slow"), "timeout": 0.2}))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(error.retryable);
        assert!(
            message(&error).contains("timed out after 0.2s"),
            "{}",
            message(&error)
        );
    }

    #[tokio::test]
    async fn cancellation_stops_the_request() {
        let base = server().await;
        let ctx = ctx();
        let cancel = ctx.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let error = handler(1024)
            .execute(ctx, json!({"url": format!("{base}/slow")}))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(message(&error).contains("cancelled"), "{}", message(&error));
    }

    #[tokio::test]
    async fn connection_errors_are_retryable_with_their_chain() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = run(json!({"url": format!("http://{addr}/")}))
            .await
            .unwrap_err();
        assert!(error.retryable);
        let text = message(&error);
        assert!(text.contains("refused"), "{text}");
    }

    #[tokio::test]
    async fn bad_kwargs_are_fatal() {
        for kwargs in [
            json!({}),
            json!({"url": "ftp://example.com/file"}),
            json!({"url": "not a url"}),
            json!({"url": "http://x", "method": "FETCH"}),
            json!({"url": "http://x", "timeout": -1}),
            json!({"url": "http://x", "headers": {"bad name": "v"}}),
            json!({"url": "http://x", "surprise": true}),
        ] {
            let error = run(kwargs.clone()).await.unwrap_err();
            assert!(!error.retryable, "{kwargs}: {}", message(&error));
        }
    }

    #[test]
    fn schema_rejects_bad_kwargs_naming_the_field() {
        assert_rejected(NAME, json!({}), "url");
        assert_rejected(NAME, json!({"url": 5}), "/url");
        assert_rejected(NAME, json!({"url": "ftp://x"}), "/url");
        assert_rejected(
            NAME,
            json!({"url": "http://x", "method": "FETCH"}),
            "/method",
        );
        assert_rejected(
            NAME,
            json!({"url": "http://x", "headers": {"a": 1}}),
            "/headers/a",
        );
        assert_rejected(NAME, json!({"url": "http://x", "timeout": 0}), "/timeout");
        assert_rejected(
            NAME,
            json!({"url": "http://x", "expect_status": "200"}),
            "/expect_status",
        );
        assert_rejected(
            NAME,
            json!({"url": "http://x", "expect_status": [99]}),
            "/expect_status",
        );
        assert_rejected(NAME, json!({"url": "http://x", "surprise": 1}), "surprise");
    }

    #[test]
    fn example_fits_the_kwargs_struct() {
        let kwargs: HttpKwargs = serde_json::from_value(handler(1).example()).unwrap();
        assert!(matches!(kwargs.expect_status, Some(ExpectStatus::Many(_))));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/problem+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/jsonl"));
    }
}
