//! Batch output files (the Go job manager's "blob rows"): beside its
//! result, a row's handler may return lines for named files, and a batch's
//! file is the concatenation of its succeeded rows' lines for that name,
//! in row order (`GET /api/v1/batches/{id}/files/{name}`).
//!
//! A row asks for them with the reserved top-level key [`KEY`] of a result
//! that is a JSON object: `{"$files": {"out.csv": "a,1\nb,2", "log.txt":
//! ["one", "two"]}}` — each name mapped to a string (one line, or several
//! separated by `\n`) or an array of strings (each split the same way).
//!
//! Invariants (kept by [`split_result`], the only way to get [`RowFiles`]
//! from a handler's result):
//! - a name is [`valid_name`]: 1 to [`MAX_NAME_CHARS`] of `[A-Za-z0-9._-]`,
//!   not starting with `.` (so never a path, never hidden);
//! - no line holds a `\n`, ends with `\r`, holds a NUL, or is empty: a file
//!   never has an empty line (the original's "empty lines in outputs" bug);
//! - a name without any line is left out (a file exists once a row gave it
//!   a line);
//! - a row's files, stored as JSON (`{name: [lines]}`), are at most the
//!   bytes a stored result may be (the worker's `max_result_bytes`, 64 KiB),
//!   or the row fails.
//!
//! A `$files` that breaks a rule fails the row (it is not retried: the
//! handler would return the same again), with an error naming the problem.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The reserved top-level key of a row's result.
pub const KEY: &str = "$files";

/// The longest file name, in characters (ASCII, so bytes too).
pub const MAX_NAME_CHARS: usize = 200;

/// Characters of a bad name quoted in an error, at most.
const QUOTED_CHARS: usize = 64;

/// One row's lines, by file name (sorted by name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowFiles(BTreeMap<String, Vec<String>>);

impl RowFiles {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The lines of `name`, if this row gave it any.
    pub fn lines(&self, name: &str) -> Option<&[String]> {
        self.0.get(name).map(Vec::as_slice)
    }

    /// As stored: `{name: [lines]}`.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(name, lines)| (name.clone(), Value::from(lines.clone())))
                .collect(),
        )
    }

    /// The stored size: the bytes of [`RowFiles::to_json`]'s text.
    pub fn json_bytes(&self) -> usize {
        self.to_json().to_string().len()
    }
}

/// Why a row's `$files` was refused. The texts start with `$files:` so a
/// failed row's error says where to look.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilesError {
    #[error("$files: must be an object mapping file names to lines, not {0}")]
    NotAnObject(&'static str),
    #[error("$files: {} is not a valid file name (1 to {MAX_NAME_CHARS} letters, digits, . _ -; not starting with .)", quoted(.0))]
    BadName(String),
    #[error("$files: the lines of {} must be a string or an array of strings, not {kind}", quoted(.name))]
    BadLines { name: String, kind: &'static str },
    #[error("$files: line {line} of {} must be a string, not {kind}", quoted(.name))]
    BadLine {
        name: String,
        line: usize,
        kind: &'static str,
    },
    #[error("$files: {bytes} bytes of files, more than the {max} bytes a row's files may hold")]
    TooLarge { bytes: usize, max: usize },
}

/// A name for an error: JSON-quoted, cut to [`QUOTED_CHARS`] characters.
fn quoted(name: &str) -> String {
    let mut chars = name.chars();
    let head: String = chars.by_ref().take(QUOTED_CHARS).collect();
    let more = if chars.next().is_some() { "…" } else { "" };
    format!("{}{more}", Value::from(head))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether `name` may name a file: 1 to [`MAX_NAME_CHARS`] of
/// `[A-Za-z0-9._-]`, not starting with `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The content type a file is served with: CSV for `*.csv`, else text.
pub fn content_type(name: &str) -> &'static str {
    if name.to_ascii_lowercase().ends_with(".csv") {
        "text/csv; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    }
}

/// Splits `text` into lines: on `\n`, each without a trailing `\r`, NULs
/// replaced, empty ones dropped.
fn push_lines(text: &str, out: &mut Vec<String>) {
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !line.is_empty() {
            out.push(crate::guard::text::without_nul(line).into_owned());
        }
    }
}

/// Parses a `$files` value (see the module's rules), unbounded.
pub fn parse(value: &Value) -> Result<RowFiles, FilesError> {
    let Value::Object(map) = value else {
        return Err(FilesError::NotAnObject(kind(value)));
    };
    let mut files = BTreeMap::new();
    for (name, value) in map {
        if !valid_name(name) {
            return Err(FilesError::BadName(name.clone()));
        }
        let mut lines = Vec::new();
        match value {
            Value::String(text) => push_lines(text, &mut lines),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let Value::String(text) = item else {
                        return Err(FilesError::BadLine {
                            name: name.clone(),
                            line: i,
                            kind: kind(item),
                        });
                    };
                    push_lines(text, &mut lines);
                }
            }
            other => {
                return Err(FilesError::BadLines {
                    name: name.clone(),
                    kind: kind(other),
                })
            }
        }
        if !lines.is_empty() {
            files.insert(name.clone(), lines);
        }
    }
    Ok(RowFiles(files))
}

/// Takes a row's files out of its handler's result: a result that is an
/// object with [`KEY`] loses it, and is `null` (no output) when nothing
/// else is left; any other result is returned as it is, without files.
/// The files are bounded by `max_bytes` as stored ([`RowFiles::json_bytes`]).
pub fn split_result(result: Value, max_bytes: usize) -> Result<(Value, RowFiles), FilesError> {
    let mut map: Map<String, Value> = match result {
        Value::Object(map) if map.contains_key(KEY) => map,
        other => return Ok((other, RowFiles::default())),
    };
    let files = parse(&map.remove(KEY).unwrap_or(Value::Null))?;
    let bytes = files.json_bytes();
    if !files.is_empty() && bytes > max_bytes {
        return Err(FilesError::TooLarge {
            bytes,
            max: max_bytes,
        });
    }
    let rest = if map.is_empty() {
        Value::Null
    } else {
        Value::Object(map)
    };
    Ok((rest, files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(files: &RowFiles, name: &str) -> Vec<String> {
        files
            .lines(name)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }

    #[test]
    fn a_string_or_an_array_of_strings_gives_lines() {
        let (rest, files) = split_result(
            json!({"score": 3, "$files": {"out.csv": "a,1\nb,2", "log.txt": ["one", "two\nthree"]}}),
            10_000,
        )
        .unwrap();
        assert_eq!(rest, json!({"score": 3}), "the rest is kept");
        assert_eq!(lines(&files, "out.csv"), ["a,1", "b,2"]);
        assert_eq!(
            lines(&files, "log.txt"),
            ["one", "two", "three"],
            "array items are split too"
        );
        assert_eq!(files.names().collect::<Vec<_>>(), ["log.txt", "out.csv"]);
        assert_eq!(
            files.to_json(),
            json!({"log.txt": ["one", "two", "three"], "out.csv": ["a,1", "b,2"]})
        );
    }

    #[test]
    fn only_files_is_no_output() {
        let (rest, files) = split_result(json!({"$files": {"a": "x"}}), 100).unwrap();
        assert_eq!(rest, Value::Null);
        assert_eq!(lines(&files, "a"), ["x"]);
    }

    #[test]
    fn results_without_files_are_untouched() {
        for result in [
            json!(null),
            json!({}),
            json!({"a": 1}),
            json!("text"),
            json!([{"$files": {"a": "x"}}]),
            json!({"nested": {"$files": {"a": "x"}}}),
        ] {
            let (rest, files) = split_result(result.clone(), 100).unwrap();
            assert_eq!(rest, result);
            assert!(files.is_empty());
        }
    }

    #[test]
    fn empty_lines_and_carriage_returns_are_dropped() {
        let (_, files) = split_result(
            json!({"$files": {
                "a.txt": "\n\none\r\n\r\ntwo\n\n",
                "b.txt": ["", "\n", "\r\n", "x\r", "  "],
                "c.txt": "a\rb\r\r",
                "nul.txt": "a\u{0}b",
            }}),
            1000,
        )
        .unwrap();
        assert_eq!(lines(&files, "a.txt"), ["one", "two"]);
        assert_eq!(
            lines(&files, "b.txt"),
            ["x", "  "],
            "a line of spaces is not empty"
        );
        assert_eq!(
            lines(&files, "c.txt"),
            ["a\rb\r"],
            "one trailing \\r is stripped; others are text"
        );
        assert_eq!(lines(&files, "nul.txt"), ["a\u{FFFD}b"]);
    }

    #[test]
    fn a_name_without_lines_is_left_out() {
        let (rest, files) = split_result(
            json!({"$files": {"a": "", "b": [], "c": "\n\r\n"}, "k": 1}),
            100,
        )
        .unwrap();
        assert!(files.is_empty(), "{files:?}");
        assert_eq!(rest, json!({"k": 1}));
        let (rest, files) = split_result(json!({"$files": {}}), 100).unwrap();
        assert!(files.is_empty());
        assert_eq!(rest, Value::Null, "only $files: no output");
    }

    #[test]
    fn names() {
        for good in [
            "a",
            "out.csv",
            "A-b_c.9",
            "x..y",
            "trailing.",
            "-dash",
            &"n".repeat(200),
        ] {
            assert!(valid_name(good), "{good:?}");
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "a b",
            "é.txt",
            "a:b",
            "a\u{0}",
            &"n".repeat(201),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn each_bad_files_value_is_named() {
        let err = |files: Value| {
            split_result(json!({"$files": files}), 10_000)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(json!({"../x": "a"})),
            r#"$files: "../x" is not a valid file name (1 to 200 letters, digits, . _ -; not starting with .)"#
        );
        assert_eq!(
            err(json!(["a"])),
            "$files: must be an object mapping file names to lines, not an array"
        );
        assert_eq!(
            err(json!(null)),
            "$files: must be an object mapping file names to lines, not null"
        );
        assert_eq!(
            err(json!("a.txt")),
            "$files: must be an object mapping file names to lines, not a string"
        );
        assert_eq!(
            err(json!({"a.txt": 5})),
            r#"$files: the lines of "a.txt" must be a string or an array of strings, not a number"#
        );
        assert_eq!(
            err(json!({"a.txt": {"x": "y"}})),
            r#"$files: the lines of "a.txt" must be a string or an array of strings, not an object"#
        );
        assert_eq!(
            err(json!({"a.txt": ["ok", null]})),
            r#"$files: line 1 of "a.txt" must be a string, not null"#
        );
        assert_eq!(
            err(json!({"a.txt": [["nested"]]})),
            r#"$files: line 0 of "a.txt" must be a string, not an array"#
        );
        let long = err(json!({ "/".repeat(500): "a" }));
        assert!(long.contains(&format!("\"{}\"…", "/".repeat(64))), "{long}");
        assert!(long.len() < 200, "a long bad name is cut: {long}");
    }

    #[test]
    fn files_are_bounded_as_stored() {
        let files = json!({"a": "x".repeat(90)});
        let stored = json!({"a": ["x".repeat(90)]}).to_string().len();
        assert!(split_result(json!({"$files": files.clone()}), stored).is_ok());
        assert_eq!(
            split_result(json!({"$files": files}), stored - 1).unwrap_err(),
            FilesError::TooLarge {
                bytes: stored,
                max: stored - 1
            }
        );
        assert_eq!(
            FilesError::TooLarge { bytes: 7, max: 5 }.to_string(),
            "$files: 7 bytes of files, more than the 5 bytes a row's files may hold"
        );
        // Dropped empty lines cost nothing.
        let (_, files) = split_result(json!({"$files": {"a": "\n".repeat(500)}}), 10).unwrap();
        assert!(files.is_empty());
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("out.csv"), "text/csv; charset=utf-8");
        assert_eq!(content_type("OUT.CSV"), "text/csv; charset=utf-8");
        assert_eq!(content_type("out.txt"), "text/plain; charset=utf-8");
        assert_eq!(content_type("csv"), "text/plain; charset=utf-8");
    }
}
