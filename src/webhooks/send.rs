//! One delivery attempt over HTTP: a signed POST, no redirects followed,
//! a timeout, and the addresses under the `http` handler's rules (the
//! URL's host checked before sending, every resolved address checked
//! after DNS resolution, so a name rebinding to a denied address gets
//! nowhere).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};

use super::retry::{parse_retry_after, Attempt};
use super::signing::{signature_header, WebhookSecret};
use crate::guard::AddressPolicy;
use crate::handlers::builtin::http_guard::{check_url, guarded_resolver, refusal_in};
use crate::store::ClaimedDelivery;

/// How much of an answer (or an error) the attempt log keeps.
pub const EXCERPT_BYTES: usize = 1024;

/// What the webhooks' client may reach and how long it waits.
#[derive(Clone)]
pub struct Sender {
    client: Result<reqwest::Client, String>,
    policy: Arc<AddressPolicy>,
    timeout: Duration,
}

/// What an attempt found.
#[derive(Debug, Clone)]
pub struct Sent {
    pub result: Attempt,
    pub status: Option<u16>,
    pub latency: Duration,
    pub response: Option<String>,
    pub error: Option<String>,
}

/// The client's error, with its causes (reqwest's top line says little).
fn chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn excerpt(bytes: &[u8]) -> String {
    let end = bytes.len().min(EXCERPT_BYTES);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Sender {
    pub fn new(policy: Arc<AddressPolicy>, timeout: Duration) -> Sender {
        let client = reqwest::Client::builder()
            .user_agent(concat!("jobsd-webhooks/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(guarded_resolver(policy.clone()))
            .build()
            .map_err(|e| chain(&e));
        Sender {
            client,
            policy,
            timeout,
        }
    }

    /// The address rules, for checking URLs when webhooks are defined.
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// Sends one attempt of `delivery`, signed at `now`.
    pub async fn send(&self, delivery: &ClaimedDelivery, now: DateTime<Utc>) -> Sent {
        let started = tokio::time::Instant::now();
        let failed = |error: String, started: tokio::time::Instant| Sent {
            result: Attempt::Failed {
                status: None,
                retry_after: None,
            },
            status: None,
            latency: started.elapsed(),
            response: None,
            error: Some(excerpt(error.as_bytes())),
        };
        let client = match &self.client {
            Ok(client) => client,
            Err(e) => return failed(format!("the HTTP client could not be built: {e}"), started),
        };
        let url = match reqwest::Url::parse(&delivery.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            _ => return failed(format!("{:?} is not an http(s) URL", delivery.url), started),
        };
        if let Err(refusal) = check_url(&self.policy, &url, false) {
            return failed(refusal.to_string(), started);
        }
        let mut secrets = Vec::with_capacity(2);
        for text in std::iter::once(&delivery.secret).chain(delivery.previous_secret.as_ref()) {
            match WebhookSecret::parse(text) {
                Ok(secret) => secrets.push(secret),
                Err(e) => return failed(format!("the webhook's secret: {e}"), started),
            }
        }
        let body = match serde_json::to_vec(&delivery.payload) {
            Ok(body) => body,
            Err(e) => return failed(format!("the payload: {e}"), started),
        };
        let timestamp = now.timestamp();
        let refs: Vec<&WebhookSecret> = secrets.iter().collect();
        let signature = signature_header(&refs, &delivery.message_id, timestamp, &body);
        let mut signature = match HeaderValue::from_str(&signature) {
            Ok(v) => v,
            Err(_) => return failed("the signature is not a header value".into(), started),
        };
        signature.set_sensitive(true);
        let request = client
            .post(url)
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &delivery.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let error = match refusal_in(&e) {
                    Some(refusal) => refusal.to_string(),
                    None => chain(&e),
                };
                return failed(error, started);
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        // The first bytes of the answer; the rest is not read.
        let mut kept = Vec::new();
        let mut read_error = None;
        while kept.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    read_error = Some(chain(&e));
                    break;
                }
            }
        }
        let result = if (200..300).contains(&status) {
            Attempt::Delivered
        } else {
            Attempt::Failed {
                status: Some(status),
                retry_after,
            }
        };
        Sent {
            result,
            status: Some(status),
            latency: started.elapsed(),
            response: Some(excerpt(&kept)),
            error: read_error.map(|e| excerpt(e.as_bytes())),
        }
    }
}
