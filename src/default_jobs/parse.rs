//! One default-job file's text into a [`JobSpec`] (pure: no file system, no
//! clock, no database).
//!
//! - The file is one YAML mapping. Its keys that are job fields (SPEC §4,
//!   the fields of [`JobSpec`]) are job fields; `kwargs` is a mapping of
//!   handler arguments; every other top-level key is a handler argument too
//!   (the original service's format). A key given both at the top level and
//!   under `kwargs` is a problem, not a silent choice.
//! - `job_id` is required (restarts find the job again by it); `handler` is
//!   checked by [`JobSpec::validate`].
//! - Every problem is reported, each naming its field; a field with a
//!   problem is left out so the rest can still be checked.
//! - Nothing in the text can make this panic: YAML that JSON cannot hold
//!   (tags, non-string keys, `.nan`) is a problem like any other.
//! - Nothing in the text can make this slow: flow collections (`[`, `{`)
//!   nested deeper than [`MAX_FLOW_DEPTH`] are refused by a linear scan
//!   before the YAML parser sees them (its time grows with the square of
//!   their depth: 200 KB of `[[[[…` took it 41 s). Block nesting costs it
//!   little, and it refuses past 128 levels of either kind itself.

use serde_json::{Map, Number, Value};
use serde_yaml::Value as Yaml;

use crate::job_spec::{FieldError, JobSpec};

/// A parsed file: the spec (absent when the text is not a usable mapping)
/// and the problems found so far.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub spec: Option<JobSpec>,
    pub problems: Vec<FieldError>,
}

/// The names of the job fields, taken from [`JobSpec`] itself.
fn job_fields() -> Vec<String> {
    match serde_json::to_value(JobSpec::default()) {
        Ok(Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Deepest nesting of flow collections (`[…]`, `{…}`) a file may have. A
/// job definition needs a few; the YAML parser stops at 128 anyway.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Where flow collections first nest deeper than [`MAX_FLOW_DEPTH`], as a
/// 1-based line and column, found in one pass over the text. Brackets in
/// quoted scalars and comments do not count; in plain and block scalars
/// they do, which only matters for text with 64 unclosed brackets.
fn too_deep(text: &str) -> Option<(usize, usize)> {
    enum In {
        Plain,
        Single,
        /// Just after a `'` in a single-quoted scalar: `''` is a quote.
        SingleEnd,
        Double {
            escaped: bool,
        },
        Comment,
    }
    let (mut state, mut depth) = (In::Plain, 0usize);
    let (mut line, mut column) = (1, 0);
    // The character just before, and the last one that was not a space
    // (a newline counts): a quote starts a quoted scalar only where a
    // scalar starts (after `: `, `, `, `[`, `- `, ...), not inside a plain
    // one (`it's`), and `#` starts a comment only after a space.
    let (mut before, mut solid) = ('\n', '\n');
    for c in text.chars() {
        column += 1;
        if let In::SingleEnd = state {
            state = if c == '\'' { In::Single } else { In::Plain };
            if let In::Single = state {
                before = c;
                continue;
            }
        }
        match state {
            In::Comment if c == '\n' => state = In::Plain,
            In::Comment => {}
            In::Single if c == '\'' => state = In::SingleEnd,
            In::Single | In::SingleEnd => {}
            In::Double { escaped: true } => state = In::Double { escaped: false },
            In::Double { .. } if c == '\\' => state = In::Double { escaped: true },
            In::Double { .. } if c == '"' => state = In::Plain,
            In::Double { .. } => {}
            In::Plain => {
                let scalar_starts = matches!(solid, '\n' | ':' | ',' | '[' | '{' | '-' | '?');
                match c {
                    '#' if before.is_whitespace() => state = In::Comment,
                    '\'' if scalar_starts => state = In::Single,
                    '"' if scalar_starts => state = In::Double { escaped: false },
                    '[' | '{' => {
                        depth += 1;
                        if depth > MAX_FLOW_DEPTH {
                            return Some((line, column));
                        }
                    }
                    ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
        }
        if c == '\n' {
            (line, column) = (line + 1, 0);
        }
        before = c;
        if c == '\n' || !c.is_whitespace() {
            solid = c;
        }
    }
    None
}

/// Parses one file's text.
pub fn parse(text: &str) -> Parsed {
    if let Some((line, column)) = too_deep(text) {
        return failed(
            "yaml",
            format!(
                "nested deeper than {MAX_FLOW_DEPTH} levels of [ ] or {{ }} at line {line} \
                 column {column}; a job definition needs a few"
            ),
        );
    }
    let mut problems = Vec::new();
    let mut yaml: Yaml = match serde_yaml::from_str(text) {
        Ok(y) => y,
        Err(e) => return failed("yaml", format!("not valid YAML: {e}")),
    };
    if let Err(e) = yaml.apply_merge() {
        return failed("yaml", format!("bad merge key (<<): {e}"));
    }
    let top = match yaml {
        Yaml::Mapping(m) => m,
        Yaml::Null => {
            return failed(
                "file",
                "the file is empty; it should be a mapping with at least job_id and handler",
            )
        }
        other => {
            return failed(
                "file",
                format!(
                    "expected a mapping with job_id, handler, …; found {}",
                    kind(&other)
                ),
            )
        }
    };

    let fields = job_fields();
    let mut job = Map::new();
    let mut extra = Map::new();
    for (key, value) in top {
        let Some(key) = key_text(&key) else {
            problems.push(FieldError::new(
                "file",
                format!("top-level keys must be strings; found {}", kind(&key)),
            ));
            continue;
        };
        let value = match to_json(value, &key) {
            Ok(v) => v,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        if fields.contains(&key) {
            job.insert(key, value);
        } else {
            extra.insert(key, value);
        }
    }

    // kwargs: the `kwargs` mapping plus the unknown top-level keys.
    let mut kwargs = match job.remove("kwargs") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            problems.push(FieldError::new(
                "kwargs",
                format!(
                    "must be a mapping of handler arguments; found {}",
                    json_kind(&other)
                ),
            ));
            Map::new()
        }
    };
    for (key, value) in extra {
        if kwargs.contains_key(&key) {
            problems.push(FieldError::new(
                format!("kwargs/{key}"),
                "given both at the top level and under kwargs; keep one",
            ));
        } else {
            kwargs.insert(key, value);
        }
    }
    job.insert("kwargs".to_string(), Value::Object(kwargs));

    if job.get("job_id").is_none_or(Value::is_null) {
        problems.push(FieldError::new(
            "job_id",
            "required in a default-job file (restarts find the job again by it)",
        ));
    }

    // Each field on its own first, so one bad type does not hide the others.
    let keys: Vec<String> = job.keys().cloned().collect();
    for key in keys {
        let Some(value) = job.get(&key) else { continue };
        let mut single = Map::new();
        single.insert(key.clone(), value.clone());
        if let Err(e) = serde_json::from_value::<JobSpec>(Value::Object(single)) {
            problems.push(FieldError::new(key.clone(), e.to_string()));
            job.remove(&key);
        }
    }
    match serde_json::from_value::<JobSpec>(Value::Object(job)) {
        Ok(spec) => Parsed {
            spec: Some(spec),
            problems,
        },
        Err(e) => {
            problems.push(FieldError::new("file", e.to_string()));
            Parsed {
                spec: None,
                problems,
            }
        }
    }
}

fn failed(field: &str, message: impl Into<String>) -> Parsed {
    Parsed {
        spec: None,
        problems: vec![FieldError::new(field, message)],
    }
}

/// A mapping key as text: strings as they are; numbers and booleans are
/// not accepted (JSON keys are strings, and `1:` is more likely a mistake).
fn key_text(key: &Yaml) -> Option<String> {
    match key {
        Yaml::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Converts a YAML value into JSON; `path` names it in problems
/// (`kwargs/env/HOME`, `tags/2`).
fn to_json(value: Yaml, path: &str) -> Result<Value, FieldError> {
    Ok(match value {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Number(i.into())
            } else if let Some(u) = n.as_u64() {
                Value::Number(u.into())
            } else {
                match n.as_f64().and_then(Number::from_f64) {
                    Some(f) => Value::Number(f),
                    None => return Err(FieldError::new(path, "not a finite number")),
                }
            }
        }
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{path}/{i}")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Mapping(m) => {
            let mut map = Map::new();
            for (k, v) in m {
                let Some(k) = key_text(&k) else {
                    return Err(FieldError::new(
                        path,
                        format!("mapping keys must be strings; found {}", kind(&k)),
                    ));
                };
                let v = to_json(v, &format!("{path}/{k}"))?;
                map.insert(k, v);
            }
            Value::Object(map)
        }
        Yaml::Tagged(t) => {
            return Err(FieldError::new(
                path,
                format!("YAML tags such as {} are not supported", t.tag),
            ))
        }
    })
}

fn kind(value: &Yaml) -> String {
    match value {
        Yaml::Null => "null".into(),
        Yaml::Bool(b) => format!("the boolean {b}"),
        Yaml::Number(n) => format!("the number {n}"),
        Yaml::String(_) => "a string".into(),
        Yaml::Sequence(_) => "a list".into(),
        Yaml::Mapping(_) => "a mapping".into(),
        Yaml::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(text: &str) -> JobSpec {
        let parsed = parse(text);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        parsed.spec.expect("a spec")
    }

    fn fields(text: &str) -> Vec<String> {
        parse(text).problems.into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn the_original_format_puts_unknown_keys_into_kwargs() {
        let s = spec(
            "handler: sleep\njob_id: nap\nperiodically: 1 day\nmisfire_grace_time: 365 days\n\
             state: paused\nseconds: 3\n",
        );
        assert_eq!(s.job_id.as_deref(), Some("nap"));
        assert_eq!(s.handler.as_deref(), Some("sleep"));
        assert_eq!(s.periodically, Some(json!("1 day")));
        assert_eq!(s.misfire_grace_time, Some(json!("365 days")));
        assert_eq!(s.state.as_deref(), Some("paused"));
        assert_eq!(s.kwargs, Some(json!({"seconds": 3})));
    }

    #[test]
    fn kwargs_mapping_and_top_level_keys_merge() {
        let s = spec(
            "job_id: a\nhandler: http\nkwargs:\n  url: http://x\n  timeout: 5\nmethod: POST\n\
             timeout: 1m\ntags: [a, b]\nmax_retries: 2\ncoalesce: false\n",
        );
        assert_eq!(
            s.kwargs,
            Some(json!({"url": "http://x", "timeout": 5, "method": "POST"}))
        );
        // `timeout` at the top level is the job's field, not the handler's.
        assert_eq!(s.timeout, Some(json!("1m")));
        assert_eq!(s.tags, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(s.max_retries, Some(2));
        assert_eq!(s.coalesce, Some(false));
    }

    #[test]
    fn numbers_stay_numbers_and_durations_stay_strings() {
        let s = spec("job_id: a\nhandler: log\nperiodically: 300\nwhen: 2030-02-20 14:56\nmessage: hi\nratio: 0.5\n");
        assert_eq!(s.periodically, Some(json!(300)));
        assert_eq!(s.when.as_deref(), Some("2030-02-20 14:56"));
        assert_eq!(s.kwargs, Some(json!({"message": "hi", "ratio": 0.5})));
        let s = spec("job_id: a\nhandler: log\nperiodically: 5:00:00\n");
        assert_eq!(s.periodically, Some(json!("5:00:00")));
    }

    #[test]
    fn job_id_is_required() {
        assert_eq!(fields("handler: log\nmessage: hi\n"), ["job_id"]);
        assert_eq!(fields("job_id:\nhandler: log\n"), ["job_id"]);
    }

    #[test]
    fn every_bad_field_is_named_and_the_rest_still_parses() {
        let parsed = parse(
            "job_id: a\nhandler: log\nmax_instances: lots\ntags: 3\ncoalesce: maybe\nmessage: hi\n",
        );
        let names: Vec<&str> = parsed.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(names, ["coalesce", "max_instances", "tags"]);
        let s = parsed.spec.expect("the rest parses");
        assert_eq!(s.handler.as_deref(), Some("log"));
        assert_eq!(s.max_instances, None);
    }

    #[test]
    fn kwargs_must_be_a_mapping_and_not_given_twice() {
        assert_eq!(fields("job_id: a\nhandler: log\nkwargs: [1]\n"), ["kwargs"]);
        assert_eq!(
            fields("job_id: a\nhandler: log\nkwargs: {message: a}\nmessage: b\n"),
            ["kwargs/message"]
        );
    }

    #[test]
    fn files_that_are_not_a_mapping_are_problems() {
        assert_eq!(fields(""), ["file"]);
        assert_eq!(fields("# only a comment\n"), ["file"]);
        assert_eq!(fields("- a\n- b\n"), ["file"]);
        assert_eq!(fields("just text"), ["file"]);
        assert_eq!(fields("job_id: [unclosed\n"), ["yaml"]);
        assert_eq!(fields("a: 1\n---\nb: 2\n"), ["yaml"]);
        assert_eq!(fields("job_id: a\njob_id: b\nhandler: log\n"), ["yaml"]);
        assert_eq!(fields("\t- x: :\n  bad"), ["yaml"]);
    }

    #[test]
    fn yaml_that_json_cannot_hold_is_named() {
        assert_eq!(
            fields("job_id: a\nhandler: log\nmessage: .nan\n"),
            ["message"]
        );
        assert_eq!(fields("job_id: a\nhandler: log\nenv: {1: x}\n"), ["env"]);
        assert_eq!(
            fields("job_id: a\nhandler: log\nmessage: !secret x\n"),
            ["message"]
        );
        assert_eq!(
            fields("job_id: a\nhandler: log\nargs: [a, !t b]\n"),
            ["args/1"]
        );
        assert_eq!(fields("job_id: a\nhandler: log\n7: x\n"), ["file"]);
    }

    #[test]
    fn merge_keys_and_anchors_work() {
        let s = spec(
            "base: &b {message: hi}\njob_id: a\nhandler: log\nkwargs:\n  <<: *b\n  level: warn\n",
        );
        assert_eq!(
            s.kwargs,
            Some(json!({"base": {"message": "hi"}, "message": "hi", "level": "warn"}))
        );
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let nested = |depth: usize| {
            format!(
                "job_id: a\nhandler: log\nmessage: x\nextra: {}{}\n",
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        let started = std::time::Instant::now();
        let problems = parse(&nested(100_000)).problems;
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "yaml");
        assert_eq!(
            problems[0].message,
            "nested deeper than 64 levels of [ ] or { } at line 4 column 72; \
             a job definition needs a few"
        );
        assert_eq!(too_deep(&nested(MAX_FLOW_DEPTH)), None);
        assert_eq!(too_deep(&nested(MAX_FLOW_DEPTH + 1)), Some((4, 72)));
        assert!(too_deep(&"{a: ".repeat(65)).is_some());
        // Siblings are not nesting.
        assert_eq!(too_deep(&format!("a: [{}]", "[], ".repeat(10_000))), None);
    }

    #[test]
    fn brackets_in_quotes_and_comments_are_not_nesting() {
        let many = "[".repeat(100);
        for text in [
            format!("message: '{many}'"),
            format!("message: \"{many}\""),
            format!("message: \"a\\\" {many}\""),
            format!("message: 'it''s {many}'"),
            format!("message: x # {many}"),
            format!("# {many}\nmessage: x"),
            format!("list: ['{many}', \"{many}\"]"),
        ] {
            assert_eq!(too_deep(&text), None, "{text}");
        }
        // A quote inside a plain scalar does not start a quoted one.
        assert!(too_deep(&format!("message: it's {many}")).is_some());
        // Nor does a '#' without a space before it start a comment.
        assert!(too_deep(&format!("message: a#{many}")).is_some());
    }

    #[test]
    fn hostile_input_does_not_panic() {
        let deep = format!(
            "job_id: a\nhandler: log\nx: {}{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(fields(&deep), ["yaml"]);
        let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
        let _ = parse(laughs);
        for text in [
            "\u{0}",
            "{",
            ":",
            "? [a]\n: b",
            "job_id: \"\\ud800\"",
            "&a *a",
        ] {
            let _ = parse(text);
        }
    }
}
