//! NDJSON input, read as it streams: bytes in, one row per non-blank
//! line out, never more than one line (plus one network chunk) held.

use serde_json::Value;

/// Why a line is not a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// The row's index in the request (blank lines are not rows).
    pub row: i64,
    pub message: String,
}

/// Splits a byte stream into rows: each non-blank line one JSON value.
#[derive(Debug, Default)]
pub struct Rows {
    partial: Vec<u8>,
    next_row: i64,
}

impl Rows {
    /// The rows completed by `chunk`, in order, or the first bad one.
    pub fn push(&mut self, chunk: &[u8], max_row_bytes: usize) -> Result<Vec<Value>, LineError> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(end);
            rest = &tail[1..];
            if self.partial.is_empty() {
                self.line(line, max_row_bytes, &mut out)?;
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole, max_row_bytes, &mut out)?;
            }
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > max_row_bytes + 2 && !is_blank(&self.partial) {
            return Err(self.too_big(max_row_bytes));
        }
        Ok(out)
    }

    /// The last row, when the stream did not end with a newline.
    pub fn finish(&mut self, max_row_bytes: usize) -> Result<Option<Value>, LineError> {
        let line = std::mem::take(&mut self.partial);
        let mut out = Vec::new();
        self.line(&line, max_row_bytes, &mut out)?;
        Ok(out.pop())
    }

    /// Rows read so far.
    pub fn count(&self) -> i64 {
        self.next_row
    }

    fn too_big(&self, max_row_bytes: usize) -> LineError {
        LineError {
            row: self.next_row,
            message: format!("longer than the limit of {max_row_bytes} bytes a row may have"),
        }
    }

    fn line(&mut self, line: &[u8], max: usize, out: &mut Vec<Value>) -> Result<(), LineError> {
        let line = trim(line);
        if line.is_empty() {
            return Ok(());
        }
        if line.len() > max {
            return Err(self.too_big(max));
        }
        let row = self.next_row;
        let value = serde_json::from_slice(line).map_err(|e| LineError {
            row,
            message: format!("not a JSON value: {e}"),
        })?;
        self.next_row += 1;
        out.push(value);
        Ok(())
    }
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

fn trim(mut line: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = line {
        if first.is_ascii_whitespace() {
            line = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = line {
        if last.is_ascii_whitespace() {
            line = rest;
        } else {
            break;
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_split_across_chunks_and_blank_lines_are_skipped() {
        let mut rows = Rows::default();
        let a = rows.push(b"{\"a\":1}\n\n  \r\n{\"b\"", 100).unwrap();
        assert_eq!(a, vec![json!({"a": 1})]);
        let b = rows.push(b":2}\r\n3\n\"x\"", 100).unwrap();
        assert_eq!(b, vec![json!({"b": 2}), json!(3)]);
        assert_eq!(rows.finish(100).unwrap(), Some(json!("x")));
        assert_eq!(rows.count(), 4);
        assert_eq!(Rows::default().finish(10).unwrap(), None);
    }

    #[test]
    fn a_bad_line_names_its_row() {
        let mut rows = Rows::default();
        let err = rows.push(b"{}\n\n{nope}\n", 100).unwrap_err();
        assert_eq!(err.row, 1);
        assert!(err.message.contains("not a JSON value"), "{}", err.message);
        let mut rows = Rows::default();
        let err = rows.push(b"1\n[1,2,3,4,5,6,7,8]\n", 8).unwrap_err();
        assert_eq!(err.row, 1);
        assert!(err.message.contains("8 bytes"));
        // A long line is refused before it ends.
        let mut rows = Rows::default();
        assert!(rows.push(&[b'1'; 64], 8).is_err());
    }
}
