//! The cursor of `GET /api/v1/events` and the SSE `id:`: an event's
//! [`EventPosition`] as text. Clients treat it as opaque.

use crate::store::EventPosition;

/// A cursor that jobsd did not make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an event cursor; pass the `next_cursor` of a page, or an event's `cursor`, as it was given")]
pub struct BadCursor(pub String);

/// `<tx>-<seq>-<ord>`, decimal.
pub fn encode(position: EventPosition) -> String {
    format!("{}-{}-{}", position.tx, position.seq, position.ord)
}

pub fn parse(text: &str) -> Result<EventPosition, BadCursor> {
    let bad = || BadCursor(text.chars().take(80).collect());
    let number = |s: &str| -> Result<i64, BadCursor> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let parts: Vec<&str> = text.trim().split('-').collect();
    let [tx, seq, ord] = parts.as_slice() else {
        return Err(bad());
    };
    Ok(EventPosition {
        tx: number(tx)?,
        seq: number(seq)?,
        ord: number(ord)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_its_position() {
        let p = EventPosition {
            tx: 7_345,
            seq: 12,
            ord: 3,
        };
        assert_eq!(encode(p), "7345-12-3");
        assert_eq!(parse(&encode(p)), Ok(p));
        assert_eq!(
            parse("0-1-0"),
            Ok(EventPosition {
                tx: 0,
                seq: 1,
                ord: 0
            })
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "12",
            "1-2",
            "-1-2-3",
            "1--2",
            "a-1-0",
            "1-b-0",
            "1-2-3-4",
            "99999999999999999999-1-0",
            "+1-2-0",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
