//! Secrets in kwargs (issue #12 §3): the rules, as pure functions.
//!
//! A handler names where its kwargs hold secrets ([`SecretField`], from
//! [`crate::handlers::Handler::secret_fields`]). The secrets are stored as
//! given and reach the handler unchanged, but everything jobsd shows (API
//! answers, log lines, events, failure records, error texts) carries
//! [`MASK`] in their place:
//!
//! - [`redact`] masks the secret values of kwargs;
//! - [`keep_stored`] reads a [`MASK`] sent back (a PATCH of what a GET
//!   showed) as "keep the stored value";
//! - [`secret_values`] and [`scrub_text`] / [`scrub_value`] mask secrets
//!   that a handler's error message or result repeats (a program echoing
//!   its environment, a server echoing a header).
//!
//! [`crate::handlers::HandlerRegistry::redact_kwargs`] and
//! [`crate::handlers::HandlerRegistry::secrets_of`] apply these with the
//! right handler's rules; output paths call those, not these.

use serde_json::{Map, Value};

/// What a secret is shown as.
pub const MASK: &str = "***";

/// Secrets shorter than this are not searched for in texts: masking every
/// `a` or `42` of an error message would hide more than it protects.
pub const MIN_SCRUBBED_CHARS: usize = 4;

/// Where a handler's kwargs hold a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretField {
    /// The value of a top-level field (`password`).
    Value(String),
    /// Every value of an object field (`env`, `secret_headers`).
    EveryValue(String),
    /// The values of an object field whose keys are among `keys`, compared
    /// ignoring ASCII case (`headers`' `Authorization`, `Cookie`, ...).
    ValuesNamed { field: String, keys: Vec<String> },
}

impl SecretField {
    pub fn value(field: &str) -> Self {
        SecretField::Value(field.to_string())
    }

    pub fn every_value(field: &str) -> Self {
        SecretField::EveryValue(field.to_string())
    }

    pub fn values_named(field: &str, keys: &[&str]) -> Self {
        SecretField::ValuesNamed {
            field: field.to_string(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    /// The top-level field it is about.
    pub fn field(&self) -> &str {
        match self {
            SecretField::Value(field)
            | SecretField::EveryValue(field)
            | SecretField::ValuesNamed { field, .. } => field,
        }
    }

    /// Whether `key` of the field's object is secret (for `Value`: never,
    /// the field itself is).
    fn covers_key(&self, key: &str) -> bool {
        match self {
            SecretField::Value(_) => false,
            SecretField::EveryValue(_) => true,
            SecretField::ValuesNamed { keys, .. } => {
                keys.iter().any(|k| k.eq_ignore_ascii_case(key))
            }
        }
    }
}

/// One secret's place: the top-level field, and the key within it (none
/// for [`SecretField::Value`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    field: String,
    key: Option<String>,
}

impl Slot {
    /// As the API names fields: `kwargs/headers/Authorization`.
    fn name(&self) -> String {
        match &self.key {
            None => format!("kwargs/{}", self.field),
            Some(key) => format!("kwargs/{}/{key}", self.field),
        }
    }
}

/// The secret places that `kwargs` fills (null values hold no secret).
fn slots(kwargs: &Value, fields: &[SecretField]) -> Vec<Slot> {
    let mut found = Vec::new();
    let Some(object) = kwargs.as_object() else {
        return found;
    };
    for rule in fields {
        let field = rule.field();
        match (rule, object.get(field)) {
            (_, None | Some(Value::Null)) => {}
            (SecretField::Value(_), Some(_)) => found.push(Slot {
                field: field.to_string(),
                key: None,
            }),
            (_, Some(Value::Object(map))) => found.extend(
                map.iter()
                    .filter(|(key, value)| rule.covers_key(key) && !value.is_null())
                    .map(|(key, _)| Slot {
                        field: field.to_string(),
                        key: Some(key.clone()),
                    }),
            ),
            // Not an object: the schema refuses it; nothing to find.
            (_, Some(_)) => {}
        }
    }
    found
}

fn get<'a>(kwargs: &'a Value, slot: &Slot) -> Option<&'a Value> {
    let value = kwargs.get(&slot.field)?;
    match &slot.key {
        None => Some(value),
        Some(key) => value.get(key),
    }
}

fn get_mut<'a>(kwargs: &'a mut Value, slot: &Slot) -> Option<&'a mut Value> {
    let value = kwargs.get_mut(&slot.field)?;
    match &slot.key {
        None => Some(value),
        Some(key) => value.get_mut(key),
    }
}

/// `kwargs` with every secret value replaced by [`MASK`].
pub fn redact(kwargs: &Value, fields: &[SecretField]) -> Value {
    let mut shown = kwargs.clone();
    for slot in slots(kwargs, fields) {
        if let Some(value) = get_mut(&mut shown, &slot) {
            *value = Value::String(MASK.to_string());
        }
    }
    shown
}

/// Whether `kwargs` hold any secret at all.
pub fn has_secrets(kwargs: &Value, fields: &[SecretField]) -> bool {
    !slots(kwargs, fields).is_empty()
}

/// The stored secret a [`MASK`] at `slot` stands for. A header name's case
/// may differ between the two (`authorization` and `Authorization`).
fn stored_secret<'a>(stored: &'a Value, slot: &Slot, rule: &SecretField) -> Option<&'a Value> {
    if let Some(value) = get(stored, slot).filter(|v| !v.is_null()) {
        return Some(value);
    }
    let (Some(key), SecretField::ValuesNamed { .. }) = (&slot.key, rule) else {
        return None;
    };
    stored
        .get(&slot.field)?
        .as_object()?
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case(key) && !v.is_null())
        .map(|(_, v)| v)
}

/// `kwargs` sent by a client, where a [`MASK`] in a secret place takes the
/// value `stored` has there (`stored`: the job's kwargs before a PATCH, or
/// none for a new job). A mask for a secret that `stored` lacks is a
/// problem, named like the API's other field errors
/// (`kwargs/headers/Authorization`): storing the mask itself would send
/// `***` as the password. Other fields are taken as sent.
pub fn keep_stored(
    kwargs: &Value,
    stored: Option<&Value>,
    fields: &[SecretField],
) -> Result<Value, Vec<(String, String)>> {
    let mut kept = kwargs.clone();
    let mut problems = Vec::new();
    for rule in fields {
        for slot in slots(kwargs, std::slice::from_ref(rule)) {
            if get(kwargs, &slot).and_then(Value::as_str) != Some(MASK) {
                continue;
            }
            match stored.and_then(|s| stored_secret(s, &slot, rule)) {
                Some(secret) => {
                    if let Some(value) = get_mut(&mut kept, &slot) {
                        *value = secret.clone();
                    }
                }
                None => problems.push((
                    slot.name(),
                    format!(
                        "{MASK:?} stands for a stored secret, and there is none here to keep; \
                         send the value itself"
                    ),
                )),
            }
        }
    }
    if problems.is_empty() {
        Ok(kept)
    } else {
        Err(problems)
    }
}

/// A secret value as texts may hold it: a string as it is; another value
/// as JSON, and (an array or object, which the schema may refuse, quoting
/// it) every string and number inside it too.
fn texts_of(value: &Value, texts: &mut Vec<String>) {
    match value {
        Value::Null => {}
        Value::String(text) => texts.push(text.clone()),
        Value::Bool(_) | Value::Number(_) => texts.push(value.to_string()),
        Value::Array(items) => {
            texts.push(value.to_string());
            for item in items {
                texts_of(item, texts);
            }
        }
        Value::Object(map) => {
            texts.push(value.to_string());
            for item in map.values() {
                texts_of(item, texts);
            }
        }
    }
}

/// The secret values of `kwargs` worth searching texts for (see
/// [`texts_of`]), of at least [`MIN_SCRUBBED_CHARS`] characters, longest
/// first (so a secret containing another is masked whole).
pub fn secret_values(kwargs: &Value, fields: &[SecretField]) -> Vec<String> {
    let mut secrets = Vec::new();
    for slot in slots(kwargs, fields) {
        if let Some(value) = get(kwargs, &slot) {
            texts_of(value, &mut secrets);
        }
    }
    secrets.retain(|text| text.chars().count() >= MIN_SCRUBBED_CHARS && text != MASK);
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    secrets.dedup();
    secrets
}

/// The forms a secret takes in a text: as it is, escaped inside a JSON
/// string, and escaped by Rust's `{:?}` (error messages quote values so).
fn forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_string()];
    let json = serde_json::to_string(secret).unwrap_or_default();
    let debug = format!("{secret:?}");
    for quoted in [json, debug] {
        if let Some(inner) = quoted
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
        {
            if !forms.iter().any(|f| f == inner) {
                forms.push(inner.to_string());
            }
        }
    }
    forms
}

/// `text` with every occurrence of a secret (as [`secret_values`] lists
/// them) replaced by [`MASK`], before it is stored or logged.
pub fn scrub_text(text: &str, secrets: &[String]) -> String {
    let mut scrubbed = text.to_string();
    let mut patterns: Vec<String> = secrets
        .iter()
        .filter(|s| s.chars().count() >= MIN_SCRUBBED_CHARS)
        .flat_map(|s| forms(s))
        .collect();
    patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for pattern in patterns {
        if scrubbed.contains(&pattern) {
            scrubbed = scrubbed.replace(&pattern, MASK);
        }
    }
    scrubbed
}

/// Scrubs every string in `value` (a run's result or progress), keys too.
pub fn scrub_value(value: &mut Value, secrets: &[String]) {
    if secrets.is_empty() {
        return;
    }
    match value {
        Value::String(text) => {
            let scrubbed = scrub_text(text, secrets);
            if scrubbed != *text {
                *text = scrubbed;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_value(v, secrets)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            *map = entries
                .into_iter()
                .map(|(key, mut v)| {
                    scrub_value(&mut v, secrets);
                    (scrub_text(&key, secrets), v)
                })
                .collect::<Map<String, Value>>();
        }
        _ => {}
    }
}

/// Keys of a failure record's kwargs (see `domain::rules::failure_record`).
const FAILED_KWARGS: &str = "failed_handler_kwargs";
const FAILURE_TEXTS: [&str; 2] = ["exc_str", "exc_traceback"];

/// A failure record's kwargs as they may be shown: the failed run's kwargs
/// redacted with its handler's rules (`failed_fields`), and its error texts
/// scrubbed of those secrets (records written before the worker scrubbed
/// them included).
pub fn redact_failure_record(kwargs: &Value, failed_fields: &[SecretField]) -> Value {
    let mut shown = kwargs.clone();
    let Some(failed) = kwargs.get(FAILED_KWARGS) else {
        return shown;
    };
    let secrets = secret_values(failed, failed_fields);
    if let Some(object) = shown.as_object_mut() {
        object.insert(FAILED_KWARGS.to_string(), redact(failed, failed_fields));
        for key in FAILURE_TEXTS {
            if let Some(text) = object.get_mut(key) {
                scrub_value(text, &secrets);
            }
        }
    }
    shown
}

/// The secrets a failure record's kwargs carry (those of the failed run).
pub fn failure_record_secrets(kwargs: &Value, failed_fields: &[SecretField]) -> Vec<String> {
    kwargs
        .get(FAILED_KWARGS)
        .map(|failed| secret_values(failed, failed_fields))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
