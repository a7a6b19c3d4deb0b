//! A request id for every request: the caller's `x-request-id` when it
//! sends a usable one (so ids from a proxy or the calling service carry
//! through), else a new UUIDv7. It names the request's span, so every log
//! line about the request carries it, and comes back as `x-request-id`.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest caller-sent id taken as it is.
const MAX_SENT_LEN: usize = 128;

/// A caller's id, if it is 1 to 128 printable ASCII characters without
/// spaces (anything else could garble a log line or a header).
pub fn accepted(sent: &HeaderValue) -> Option<String> {
    let bytes = sent.as_bytes();
    let printable = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    (printable && !bytes.is_empty() && bytes.len() <= MAX_SENT_LEN)
        .then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// The middleware: runs the request inside a `request` span carrying its
/// id, and answers with the id.
pub async fn tag_request(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(accepted)
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_id_is_taken_only_when_it_is_short_printable_ascii() {
        let sent = |s: &str| accepted(&HeaderValue::from_str(s).unwrap());
        assert_eq!(sent("req-123_abc.def"), Some("req-123_abc.def".into()));
        assert_eq!(sent(&"a".repeat(128)), Some("a".repeat(128)));
        assert_eq!(sent(&"a".repeat(129)), None);
        assert_eq!(sent(""), None);
        assert_eq!(sent("two words"), None);
        assert_eq!(
            accepted(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()),
            None
        );
    }
}
