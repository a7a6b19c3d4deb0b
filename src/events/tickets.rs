//! Stream tickets: what a browser's `EventSource`, which cannot send an
//! `Authorization` header, presents in the stream's URL instead of a token.
//!
//! A ticket is made by `POST /api/v1/events/tickets` (with a token of
//! `read` scope when auth is on) for one stream, named by its filters; it
//! lets that stream (and its reconnects, which resend the same URL) be
//! opened for [`TICKET_TTL`], and only while the token that made it stays
//! valid. It is random (about 190 bits), stored as its SHA-256, and is no
//! token: it opens nothing but that stream, so a URL that leaks into a log
//! gives at most ten minutes of one read-only stream.

use chrono::{DateTime, Duration, Utc};
use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;

use crate::auth::token::{digest, hex};
use crate::store::TicketRow;

/// How long a ticket opens its stream.
pub const TICKET_TTL: Duration = Duration::minutes(10);

pub const TICKET_PREFIX: &str = "jobsd_ticket_";
const SECRET_LEN: usize = 32;

/// A new ticket: the secret for the caller, the hash to store.
pub struct NewTicket {
    pub secret: String,
    pub hash: String,
}

pub fn mint() -> NewTicket {
    let secret = format!(
        "{TICKET_PREFIX}{}",
        Alphanumeric.sample_string(&mut OsRng, SECRET_LEN)
    );
    NewTicket {
        hash: hash(&secret),
        secret,
    }
}

pub fn hash(secret: &str) -> String {
    hex(&digest(secret))
}

/// Whether `presented` could be a ticket (no lookup for anything else).
pub fn is_well_formed(presented: &str) -> bool {
    presented
        .strip_prefix(TICKET_PREFIX)
        .is_some_and(|s| s.len() == SECRET_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Why a ticket does not open a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketRefusal {
    #[error("unknown stream ticket; get one from POST /api/v1/events/tickets")]
    Unknown,
    #[error("the stream ticket expired at {0}; get a new one from POST /api/v1/events/tickets")]
    Expired(DateTime<Utc>),
    #[error("the token that made this stream ticket is revoked or expired")]
    TokenGone,
    #[error("this stream ticket is for the stream {made_for:?}, not {asked:?}; get one for these filters")]
    OtherStream { made_for: String, asked: String },
}

/// Whether the stored `ticket` opens the stream with canonical filters
/// `query` at `now`.
pub fn judge(
    ticket: Option<&TicketRow>,
    query: &str,
    now: DateTime<Utc>,
) -> Result<(), TicketRefusal> {
    let ticket = ticket.ok_or(TicketRefusal::Unknown)?;
    if ticket.expires_at <= now {
        return Err(TicketRefusal::Expired(ticket.expires_at));
    }
    if ticket.token_revoked {
        return Err(TicketRefusal::TokenGone);
    }
    if ticket.query != query {
        return Err(TicketRefusal::OtherStream {
            made_for: ticket.query.clone(),
            asked: query.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(query: &str, expires_in: i64, revoked: bool) -> TicketRow {
        TicketRow {
            token_id: None,
            query: query.into(),
            expires_at: at(0) + Duration::seconds(expires_in),
            token_revoked: revoked,
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_minted_ticket_is_well_formed_and_hashed() {
        let t = mint();
        assert!(is_well_formed(&t.secret), "{}", t.secret);
        assert_eq!(t.hash, hash(&t.secret));
        assert_ne!(t.hash, t.secret);
        assert!(!is_well_formed("jobsd_abcdefgh_0123456789"));
        assert!(!is_well_formed(&format!("{TICKET_PREFIX}short")));
    }

    #[test]
    fn a_ticket_opens_its_own_stream_until_it_expires() {
        let q = "type=run.failed";
        assert_eq!(judge(Some(&row(q, 600, false)), q, at(599)), Ok(()));
        assert_eq!(
            judge(Some(&row(q, 600, false)), q, at(600)),
            Err(TicketRefusal::Expired(at(600)))
        );
        assert_eq!(judge(None, q, at(0)), Err(TicketRefusal::Unknown));
        assert_eq!(
            judge(Some(&row(q, 600, true)), q, at(1)),
            Err(TicketRefusal::TokenGone)
        );
        assert!(matches!(
            judge(Some(&row(q, 600, false)), "job_id=a", at(1)),
            Err(TicketRefusal::OtherStream { .. })
        ));
    }
}
