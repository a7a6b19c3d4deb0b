//! Idempotent requests (issue #12 §6): a route that opts in
//! ([`opt_in`]) honours an `Idempotency-Key` header, so that a client may
//! retry a request it got no answer to without doing it twice.
//!
//! - A key belongs to its caller (the token, the bootstrap token, or
//!   `anonymous` with auth off), the method and the route's template, for
//!   [`TTL`] from its first use.
//! - The first request under a key stores it pending BEFORE its handler
//!   runs (the store's primary key decides who is first), then its answer.
//!   A retry gets that answer again (status, body, content type and
//!   location), marked `Idempotent-Replayed: true`.
//! - Only 2xx and 4xx answers are kept: a 5xx (or an answer too large to
//!   keep) releases the key, so a retry runs the request again.
//! - A retry while the first is still running, or after its server stopped
//!   before answering, gets 409: nothing is created twice; the key expires
//!   after [`TTL`]. The same key with another request (path, query or
//!   body) gets 422.
//!
//! The rules are the pure functions here; [`layer`] is the middleware.

mod layer;

use std::time::Duration;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::store::{StoredAnswer, StoredKey};

pub use layer::{honour_key, opt_in, Idempotency};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The header a replayed answer carries.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long a key is kept (and a retry replays its answer).
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// The largest answer body kept to replay; a larger answer releases its key.
pub const MAX_STORED_BODY: usize = 1024 * 1024;
/// The answer headers kept and replayed.
const REPLAYED_HEADERS: [&str; 2] = ["content-type", "location"];

/// The key a header value holds, or why it is refused: 1 to
/// [`MAX_KEY_LEN`] printable ASCII characters.
pub fn parse_key(value: &[u8]) -> Result<&str, String> {
    if value.is_empty() || value.len() > MAX_KEY_LEN {
        return Err(format!(
            "Idempotency-Key: must be 1 to {MAX_KEY_LEN} characters (got {})",
            value.len()
        ));
    }
    if !value.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err("Idempotency-Key: must be printable ASCII characters only".into());
    }
    std::str::from_utf8(value).map_err(|_| "Idempotency-Key: must be printable ASCII".into())
}

/// Whose keys these are: `token:<id>`, `bootstrap` for the bootstrap
/// token (which has no id), `anonymous` without a verified caller.
pub fn caller_scope(caller: Option<&Caller>) -> String {
    match caller {
        None => "anonymous".into(),
        Some(Caller {
            token_id: Some(id), ..
        }) => format!("token:{id}"),
        Some(_) => "bootstrap".into(),
    }
}

/// Hex SHA-256 of what makes a request this request: its path and query,
/// and its body.
pub fn request_hash(path_and_query: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(path_and_query.as_bytes());
    hasher.update([0u8]);
    hasher.update(body);
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What to answer a request whose key another request holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The same request, answered: answer it again.
    Replay(StoredAnswer),
    /// Another request under the same key: 422.
    Mismatch { first_at: DateTime<Utc> },
    /// The same request, not answered yet (or never will be): 409.
    InProgress { since: DateTime<Utc> },
}

pub fn decide(stored: StoredKey, request_hash: &str) -> Decision {
    if stored.request_hash != request_hash {
        return Decision::Mismatch {
            first_at: stored.created_at,
        };
    }
    match stored.answer {
        Some(answer) => Decision::Replay(answer),
        None => Decision::InProgress {
            since: stored.created_at,
        },
    }
}

/// Whether an answer of `status` is kept to replay: 2xx and 4xx (what a
/// retry would get again), not 5xx (a fault a retry may not meet).
pub fn keeps(status: u16) -> bool {
    (200..300).contains(&status) || (400..500).contains(&status)
}

/// The headers of an answer that are kept and replayed.
pub fn replayed_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    REPLAYED_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// The header in the OpenAPI document of the routes that take it.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// 1 to 255 printable ASCII characters. A retry with the same key
    /// within 24 h gets the first answer again and changes nothing; the
    /// same key with another request answers 422; while the first is in
    /// progress, 409.
    #[serde(rename = "Idempotency-Key")]
    #[allow(dead_code)]
    idempotency_key: Option<String>,
}

/// Keys created before this have expired at `now`.
pub fn expired_before(now: DateTime<Utc>) -> DateTime<Utc> {
    chrono::Duration::from_std(TTL)
        .ok()
        .and_then(|ttl| now.checked_sub_signed(ttl))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The 409 message of [`Decision::InProgress`].
pub fn in_progress_message(since: DateTime<Utc>) -> String {
    let expires = chrono::Duration::from_std(TTL)
        .ok()
        .and_then(|ttl| since.checked_add_signed(ttl))
        .unwrap_or(since);
    format!(
        "a request with this Idempotency-Key (first sent at {}) is still in progress, \
         or the server handling it stopped before it answered; retry later. Nothing was \
         done twice; the key expires at {}",
        rfc3339(since),
        rfc3339(expires)
    )
}

/// The 422 message of [`Decision::Mismatch`].
pub fn mismatch_message(first_at: DateTime<Utc>) -> String {
    format!(
        "this Idempotency-Key was used at {} for a different request (another path, query \
         or body); use a new key for a new request",
        rfc3339(first_at)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;

    #[test]
    fn keys_are_one_to_255_printable_ascii_characters() {
        assert_eq!(parse_key(b"a"), Ok("a"));
        assert_eq!(parse_key(b"order 42/retry-1"), Ok("order 42/retry-1"));
        let longest = "k".repeat(MAX_KEY_LEN);
        assert_eq!(parse_key(longest.as_bytes()), Ok(longest.as_str()));
        assert!(parse_key(b"").unwrap_err().contains("1 to 255"));
        assert!(parse_key("k".repeat(256).as_bytes())
            .unwrap_err()
            .contains("got 256"));
        for bad in [&b"tab\there"[..], b"nul\0", "é".as_bytes(), b"\x7f"] {
            assert!(
                parse_key(bad).unwrap_err().contains("printable ASCII"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keys_belong_to_their_token_the_bootstrap_token_or_anonymous() {
        let id = uuid::Uuid::nil();
        let token = Caller {
            token_id: Some(id),
            name: "ci".into(),
            scope: Scope::Write,
        };
        let bootstrap = Caller {
            token_id: None,
            name: "JOBSD_ADMIN_TOKEN".into(),
            scope: Scope::Admin,
        };
        assert_eq!(caller_scope(Some(&token)), format!("token:{id}"));
        assert_eq!(caller_scope(Some(&bootstrap)), "bootstrap");
        assert_eq!(caller_scope(None), "anonymous");
    }

    #[test]
    fn the_hash_covers_the_path_query_and_body() {
        let h = request_hash("/api/v1/jobs", b"{}");
        assert_eq!(h.len(), 64);
        assert_eq!(h, request_hash("/api/v1/jobs", b"{}"));
        assert_ne!(h, request_hash("/api/v1/jobs", b"{ }"));
        assert_ne!(h, request_hash("/api/v1/jobs?x=1", b"{}"));
        // The separator keeps path and body apart.
        assert_ne!(request_hash("/a", b"b"), request_hash("/ab", b""));
    }

    fn stored(hash: &str, answer: Option<StoredAnswer>) -> StoredKey {
        StoredKey {
            request_hash: hash.into(),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            answer,
        }
    }

    #[test]
    fn a_held_key_replays_refuses_another_request_or_says_it_is_in_progress() {
        let answer = StoredAnswer {
            status: 201,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{}".to_vec(),
        };
        assert_eq!(
            decide(stored("h", Some(answer.clone())), "h"),
            Decision::Replay(answer.clone())
        );
        let at = DateTime::<Utc>::UNIX_EPOCH;
        assert_eq!(
            decide(stored("h", Some(answer)), "other"),
            Decision::Mismatch { first_at: at }
        );
        assert_eq!(
            decide(stored("h", None), "other"),
            Decision::Mismatch { first_at: at }
        );
        assert_eq!(
            decide(stored("h", None), "h"),
            Decision::InProgress { since: at }
        );
        assert!(in_progress_message(at).contains("expires at 1970-01-02T00:00:00Z"));
    }

    #[test]
    fn only_2xx_and_4xx_answers_are_kept() {
        for status in [200, 201, 204, 400, 404, 409, 422] {
            assert!(keeps(status), "{status}");
        }
        for status in [100, 301, 307, 500, 503] {
            assert!(!keeps(status), "{status}");
        }
    }

    #[test]
    fn keys_expire_after_a_day() {
        let now = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(2);
        assert_eq!(
            expired_before(now),
            DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(1)
        );
    }
}
