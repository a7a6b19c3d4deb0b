//! NUL characters in client text. PostgreSQL cannot keep U+0000 in `text`
//! or `jsonb` (it answers an error, which would be a 500), so input holding
//! one is refused on both stores alike, naming where it is; and text that
//! jobsd keeps from elsewhere (a program's output, an error message) has
//! its NULs replaced before it is stored.

use serde_json::Value;

/// The replacement for a NUL in kept output: U+FFFD, as for invalid bytes.
const REPLACEMENT: char = '\u{FFFD}';

/// Where the first NUL in `value` is, under `field`: `kwargs/headers/x`
/// for a string value, or the object holding a key with one (the key
/// itself is shown escaped in the message). `None` when there is none.
pub fn find_nul(value: &Value, field: &str) -> Option<(String, String)> {
    match value {
        Value::String(text) if text.contains('\0') => Some((
            field.to_string(),
            "must not contain a NUL character (\\u0000)".to_string(),
        )),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_nul(item, &format!("{field}/{i}"))),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                Some((
                    field.to_string(),
                    format!(
                        "the key {:?} contains a NUL character (\\u0000), which cannot be stored",
                        key
                    ),
                ))
            } else {
                find_nul(item, &format!("{field}/{key}"))
            }
        }),
        _ => None,
    }
}

/// `text` with every NUL replaced (borrowed when it has none).
pub fn without_nul(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', &REPLACEMENT.to_string()))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Replaces every NUL in `value`'s strings and keys, in place.
pub fn strip_nul(value: &mut Value) {
    match value {
        Value::String(text) if text.contains('\0') => {
            *text = text.replace('\0', &REPLACEMENT.to_string());
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let entries = std::mem::take(map);
                for (key, item) in entries {
                    map.insert(key.replace('\0', &REPLACEMENT.to_string()), item);
                }
            }
            map.values_mut().for_each(strip_nul);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_nul_in_values_and_keys_anywhere() {
        assert_eq!(
            find_nul(&json!({"a": [1, "ok", {"b": "x"}]}), "kwargs"),
            None
        );
        assert_eq!(
            find_nul(&json!({"a": [1, "ok", {"b": "x\u{0}y"}]}), "kwargs"),
            Some((
                "kwargs/a/2/b".into(),
                "must not contain a NUL character (\\u0000)".into()
            ))
        );
        let (field, message) = find_nul(&json!({"h": {"k\u{0}": 1}}), "kwargs").unwrap();
        assert_eq!(field, "kwargs/h");
        assert!(message.contains("\"k\\0\""), "{message}");
        assert_eq!(
            find_nul(&json!("\u{0}"), "description").map(|(f, _)| f),
            Some("description".into())
        );
    }

    #[test]
    fn strips_nul_from_kept_text() {
        assert_eq!(without_nul("a\u{0}b"), "a\u{FFFD}b");
        assert!(matches!(without_nul("ab"), std::borrow::Cow::Borrowed(_)));
        let mut value = json!({"out": "x\u{0}", "k\u{0}": ["\u{0}"], "n": 1});
        strip_nul(&mut value);
        assert_eq!(
            value,
            json!({"out": "x\u{FFFD}", "k\u{FFFD}": ["\u{FFFD}"], "n": 1})
        );
    }
}
