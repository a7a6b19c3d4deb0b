//! CORS: off unless `--cors-origin` lists the origins a browser may call
//! the API from. Tokens travel in headers, never in cookies, so no
//! credentials mode is offered.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The layer for `origins` (`*` for any); `None` when there are none.
pub fn layer(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    let origins: Vec<&str> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|origin| check_origin(origin))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static(super::middleware::AUTH_TOKEN_HEADER),
                HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([header::LOCATION])
            .max_age(Duration::from_secs(600)),
    ))
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing after.
fn check_origin(origin: &str) -> Result<HeaderValue, String> {
    let bad = || {
        format!(
            "--cors-origin: {origin:?} is not an origin; use scheme://host[:port], \
             e.g. https://ops.example.com, or *"
        )
    };
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(bad)?;
    if rest.is_empty() || rest.contains('/') {
        return Err(bad());
    }
    HeaderValue::from_str(origin).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_origin_means_no_cors_and_bad_origins_are_refused() {
        assert!(layer(&[]).unwrap().is_none());
        assert!(layer(&[" ".into()]).unwrap().is_none());
        assert!(layer(&["*".into()]).unwrap().is_some());
        assert!(layer(&[
            "https://ops.example.com".into(),
            "http://localhost:3000".into()
        ])
        .unwrap()
        .is_some());
        for bad in [
            "ops.example.com",
            "https://",
            "https://x.com/path",
            "ftp://x",
        ] {
            let err = layer(&[bad.into()]).unwrap_err();
            assert!(err.contains("--cors-origin"), "{err}");
        }
    }
}
