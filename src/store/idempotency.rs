//! Idempotency keys as the store takes and returns them (see
//! `crate::idempotency` for the rules). A key is stored once per caller,
//! method and route; its first request's answer is kept to replay.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Which key: the caller's, for one method and route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// `token:<id>`, `bootstrap` or `anonymous` (`crate::idempotency::caller_scope`).
    pub caller: String,
    pub method: String,
    /// The route's template (`/api/v1/jobs/{id}/run`), not the path.
    pub route: String,
    /// The `Idempotency-Key` header's value.
    pub key: String,
}

/// A request starting under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyBegin {
    pub key: IdempotencyKey,
    /// This attempt: only it may complete or release the pending row.
    pub claim: Uuid,
    /// Hex SHA-256 of the request (`crate::idempotency::request_hash`).
    pub request_hash: String,
    pub now: DateTime<Utc>,
    /// A stored key created before this has expired: it is taken over as
    /// if it were not there.
    pub expired_before: DateTime<Utc>,
}

/// What [`crate::store::Store::idempotency_begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// The key is this attempt's now (a pending row is stored): run the request.
    Started,
    /// Another request holds the key (pending, or answered).
    Existing(StoredKey),
}

/// A key another request holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub request_hash: String,
    pub created_at: DateTime<Utc>,
    /// None while its request has not answered (or its server stopped first).
    pub answer: Option<StoredAnswer>,
}

/// An answer kept to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    /// The headers replayed (content type, location), in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The headers as stored: a JSON array of `[name, value]` pairs.
pub(crate) fn headers_json(headers: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Array(
        headers
            .iter()
            .map(|(n, v)| serde_json::json!([n, v]))
            .collect(),
    )
}

/// Reads [`headers_json`] back; anything else reads as no headers.
pub(crate) fn headers_from_json(value: &serde_json::Value) -> Vec<(String, String)> {
    value
        .as_array()
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|pair| {
                    Some((
                        pair.get(0)?.as_str()?.to_string(),
                        pair.get(1)?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}
