//! `GET /batches/{id}/output?format=csv`: row results flattened into
//! columns. An object's nested keys become dotted columns (`a.b`); arrays
//! and other values are written as JSON; a result that is not an object
//! is the `result` column. The columns are the union of every result's,
//! in order of first appearance, after `row`.

use serde_json::{Map, Value};

/// More columns than this are left out (a table nobody can read).
pub const MAX_COLUMNS: usize = 1000;

/// `(column, cell)` pairs of one result.
pub fn flatten(result: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    match result {
        Value::Object(map) => flatten_into("", map, &mut out),
        other => out.push(("result".to_string(), cell(other))),
    }
    out
}

fn flatten_into(prefix: &str, map: &Map<String, Value>, out: &mut Vec<(String, String)>) {
    for (key, value) in map {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) if !inner.is_empty() => flatten_into(&name, inner, out),
            other => out.push((name, cell(other))),
        }
    }
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The columns seen so far, in order of first appearance.
#[derive(Debug, Default, Clone)]
pub struct Columns {
    names: Vec<String>,
    seen: std::collections::HashSet<String>,
}

impl Columns {
    pub fn add(&mut self, result: &Value) {
        for (name, _) in flatten(result) {
            if self.names.len() < MAX_COLUMNS && self.seen.insert(name.clone()) {
                self.names.push(name);
            }
        }
    }

    /// The header line.
    pub fn header(&self) -> String {
        let mut line = String::from("row");
        for name in &self.names {
            line.push(',');
            line.push_str(&escape(name));
        }
        line.push('\n');
        line
    }

    /// One result's line.
    pub fn line(&self, row: i64, result: &Value) -> String {
        let cells: std::collections::HashMap<String, String> =
            flatten(result).into_iter().collect();
        let mut line = row.to_string();
        for name in &self.names {
            line.push(',');
            if let Some(cell) = cells.get(name) {
                line.push_str(&escape(cell));
            }
        }
        line.push('\n');
        line
    }
}

/// RFC 4180: quoted when it holds a comma, a quote or a line break.
pub fn escape(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_are_flattened_into_the_union_of_their_columns() {
        let mut cols = Columns::default();
        let a = json!({"id": 1, "score": {"value": 0.5, "label": "ok, fine"}});
        let b = json!({"id": 2, "tags": ["x"], "note": "say \"hi\""});
        cols.add(&a);
        cols.add(&b);
        // serde_json keeps an object's keys sorted.
        assert_eq!(cols.header(), "row,id,score.label,score.value,note,tags\n");
        assert_eq!(cols.line(0, &a), "0,1,\"ok, fine\",0.5,,\n");
        assert_eq!(
            cols.line(7, &b),
            "7,2,,,\"say \"\"hi\"\"\",\"[\"\"x\"\"]\"\n"
        );
    }

    #[test]
    fn other_results_are_the_result_column() {
        let mut cols = Columns::default();
        cols.add(&json!("text"));
        cols.add(&json!(3));
        assert_eq!(cols.header(), "row,result\n");
        assert_eq!(cols.line(1, &json!("a\nb")), "1,\"a\nb\"\n");
    }
}
