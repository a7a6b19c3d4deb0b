//! What a webhook definition must be (pure rules; the API applies them
//! before anything is written).

use crate::domain::event_types::TypeFilter;
use crate::guard::AddressPolicy;
use crate::job_spec::FieldError;
use crate::store::WebhookSpec;

/// Longest name, URL, list and list item accepted.
pub const MAX_NAME: usize = 100;
pub const MAX_URL: usize = 2048;
pub const MAX_ITEMS: usize = 100;
pub const MAX_ITEM: usize = 200;

fn problem(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Every problem of `spec` (empty: it may be stored). `policy` is the
/// `http` handler's address rules: a URL whose host they deny is refused
/// here, and its resolved addresses are checked again at each delivery.
pub fn problems(spec: &WebhookSpec, policy: &AddressPolicy) -> Vec<FieldError> {
    let mut found = Vec::new();
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= MAX_NAME
        && spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        found.push(problem(
            "name",
            format!("1 to {MAX_NAME} letters, digits, '-', '_' or '.'"),
        ));
    }
    if let Err(message) = check_url(&spec.url, policy) {
        found.push(problem("url", message));
    }
    if let Err(e) = TypeFilter::parse(&spec.event_types.join(",")) {
        found.push(problem("event_types", e.to_string()));
    }
    for (field, items) in [
        ("event_types", &spec.event_types),
        ("job_ids", &spec.job_ids),
        ("tags", &spec.tags),
    ] {
        if items.len() > MAX_ITEMS
            || items
                .iter()
                .any(|i| i.is_empty() || i.len() > MAX_ITEM || i.contains('\0'))
        {
            found.push(problem(
                field,
                format!("at most {MAX_ITEMS} items of 1 to {MAX_ITEM} characters"),
            ));
        }
    }
    if let Some(handler) = &spec.handler {
        if handler.is_empty() || handler.len() > MAX_ITEM || handler.contains('\0') {
            found.push(problem("handler", format!("1 to {MAX_ITEM} characters")));
        }
    }
    found
}

/// An absolute http(s) URL with a host the address rules allow.
pub fn check_url(url: &str, policy: &AddressPolicy) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err(format!("at most {MAX_URL} characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{url:?}: only http and https URLs are delivered to"
        ));
    }
    let Some(host) = parsed.host_str() else {
        return Err(format!("{url:?} has no host"));
    };
    crate::handlers::builtin::http_guard::check_url(policy, &parsed, false)
        .map_err(|refusal| format!("{host}: {refusal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(f: impl FnOnce(&mut WebhookSpec)) -> WebhookSpec {
        let mut s = WebhookSpec {
            name: "ops-alerts".into(),
            url: "https://example.com/hooks".into(),
            event_types: vec!["run.failed".into(), "job.".into()],
            job_ids: vec![],
            tags: vec![],
            handler: None,
            paused: false,
        };
        f(&mut s);
        s
    }

    fn fields(s: &WebhookSpec) -> Vec<String> {
        problems(s, &AddressPolicy::default())
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn a_good_definition_has_no_problem() {
        assert!(fields(&spec(|_| {})).is_empty());
        assert!(fields(&spec(|s| s.url = "http://127.0.0.1:9000/x".into())).is_empty());
    }

    #[test]
    fn bad_urls_names_and_types_are_named() {
        for url in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "not a url",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/",
            "http://0.0.0.0/",
        ] {
            assert_eq!(fields(&spec(|s| s.url = url.into())), ["url"], "{url}");
        }
        assert_eq!(fields(&spec(|s| s.name = "".into())), ["name"]);
        assert_eq!(fields(&spec(|s| s.name = "a b".into())), ["name"]);
        assert_eq!(
            fields(&spec(|s| s.event_types = vec!["run.exploded".into()])),
            ["event_types"]
        );
        assert_eq!(fields(&spec(|s| s.tags = vec!["".into()])), ["tags"]);
    }
}
