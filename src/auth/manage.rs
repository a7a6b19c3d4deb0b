//! Creating, listing and revoking tokens: what `jobsd token` and
//! `/api/v1/tokens` both do, with the rules they share.
//!
//! - A token's secret is returned once, by [`issue`], and never again.
//! - The last live admin token cannot be revoked (409): with auth on, no
//!   one could then manage tokens through the API. Revoke it after
//!   creating another; `jobsd token create` (which needs only the
//!   database) is the way back in should every admin token expire.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::token::{self, Minted};
use super::Scope;
use crate::store::{NewToken, Store, StoreError, TokenKey, TokenRow};

/// The longest token name.
pub const MAX_NAME_CHARS: usize = 100;

/// Why a token operation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The request is invalid (400).
    #[error("{0}")]
    Invalid(String),
    /// No such token (404).
    #[error("no token {0}")]
    NotFound(String),
    /// Refused by a rule (409).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(StoreError),
}

/// A token's state as lists show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
}

impl TokenState {
    pub fn of(token: &TokenRow, now: DateTime<Utc>) -> TokenState {
        if token.revoked_at.is_some() {
            TokenState::Revoked
        } else if token.is_live(now) {
            TokenState::Active
        } else {
            TokenState::Expired
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
        }
    }
}

/// A created token: its row, and the secret to hand out this once.
#[derive(Clone)]
pub struct Issued {
    pub token: TokenRow,
    pub secret: String,
}

/// A token name as given, trimmed: 1 to 100 characters, no control characters.
pub fn check_name(name: &str) -> Result<String, TokenError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(TokenError::Invalid(
            "name: give the token a name saying who uses it, e.g. ci".into(),
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(TokenError::Invalid(format!(
            "name: longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(TokenError::Invalid(
            "name: control characters are not allowed".into(),
        ));
    }
    Ok(name.to_string())
}

/// When a token given `expires` (a duration such as `90d`) at `now` expires.
pub fn expiry(expires: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, TokenError> {
    let invalid = |why: String| TokenError::Invalid(format!("expires: {why}"));
    let after = crate::schedule::parse_duration(expires).map_err(|e| invalid(e.to_string()))?;
    if after <= chrono::Duration::zero() {
        return Err(invalid(
            "must be longer than zero, e.g. 90d; leave it out for a token that does not expire"
                .into(),
        ));
    }
    now.checked_add_signed(after)
        .ok_or_else(|| invalid("too far in the future".into()))
}

/// What an operator's reference names: a token id, or a prefix
/// (`jobsd_<public id>` or the bare public id).
pub fn key_of(reference: &str) -> Result<TokenKey, TokenError> {
    let reference = reference.trim();
    if let Ok(id) = reference.parse::<Uuid>() {
        return Ok(TokenKey::Id(id));
    }
    token::prefix_of(reference)
        .map(TokenKey::Prefix)
        .ok_or_else(|| {
            TokenError::Invalid(format!(
            "{reference:?} is neither a token id nor a prefix (jobsd_ and 8 letters or digits, \
             as `jobsd token list` shows)"
        ))
        })
}

/// Creates a token; the secret is in the answer and nowhere else.
pub async fn issue(
    store: &Store,
    name: &str,
    scope: Scope,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Issued, TokenError> {
    let name = check_name(name)?;
    // A prefix repeats once in about 10^14 tokens; then try again.
    let mut attempts = 0;
    loop {
        let Minted {
            secret,
            prefix,
            hash,
        } = token::mint();
        let new = NewToken {
            id: Uuid::now_v7(),
            name: name.clone(),
            prefix,
            hash,
            scope,
            created_at: now,
            expires_at,
        };
        match store.token_insert(&new).await {
            Ok(token) => return Ok(Issued { token, secret }),
            Err(StoreError::Conflict(_)) if attempts < 3 => attempts += 1,
            Err(e) => return Err(TokenError::Store(e)),
        }
    }
}

/// Why revoking `token` at `now` is refused, if it is: it is the last live
/// admin token (`other_live_admins` are the others).
pub fn revocation_refusal(
    token: &TokenRow,
    other_live_admins: i64,
    now: DateTime<Utc>,
) -> Option<String> {
    (token.scope == Scope::Admin && token.is_live(now) && other_live_admins == 0).then(|| {
        format!(
            "refusing to revoke {} ({}): it is the last live admin token, and without one \
             no one could manage tokens through the API. Create another admin token first \
             (`jobsd token create --name NAME --scope admin`), then revoke this one",
            token.prefix, token.name
        )
    })
}

/// Revokes the token `reference` names (see [`key_of`]), unless it is the
/// last live admin token. Revoking a revoked token changes nothing.
pub async fn revoke(
    store: &Store,
    reference: &str,
    now: DateTime<Utc>,
) -> Result<TokenRow, TokenError> {
    let key = key_of(reference)?;
    store
        .token_revoke(&key, now, |token, others| {
            revocation_refusal(token, others, now).map_or(Ok(()), Err)
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound => TokenError::NotFound(key.to_string()),
            StoreError::Conflict(why) => TokenError::Refused(why),
            other => TokenError::Store(other),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(now: DateTime<Utc>) -> TokenRow {
        TokenRow {
            id: Uuid::now_v7(),
            name: "ops".into(),
            prefix: "jobsd_Ab3dEf9h".into(),
            scope: Scope::Admin,
            created_at: now,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn only_the_last_live_admin_token_is_kept_from_revocation() {
        let now = Utc::now();
        let token = admin(now);
        let refused = revocation_refusal(&token, 0, now).unwrap();
        assert!(refused.contains("last live admin token"), "{refused}");
        assert!(refused.contains("jobsd token create"), "{refused}");
        assert_eq!(revocation_refusal(&token, 1, now), None);
        let read = TokenRow {
            scope: Scope::Read,
            ..token.clone()
        };
        assert_eq!(revocation_refusal(&read, 0, now), None);
        // An expired or revoked admin token protects nothing.
        let expired = TokenRow {
            expires_at: Some(now - chrono::Duration::seconds(1)),
            ..token.clone()
        };
        assert_eq!(revocation_refusal(&expired, 0, now), None);
        let revoked = TokenRow {
            revoked_at: Some(now),
            ..token
        };
        assert_eq!(revocation_refusal(&revoked, 0, now), None);
    }

    #[test]
    fn states_follow_revocation_then_expiry() {
        let now = Utc::now();
        let mut token = admin(now);
        assert_eq!(TokenState::of(&token, now), TokenState::Active);
        token.expires_at = Some(now);
        assert_eq!(TokenState::of(&token, now), TokenState::Expired);
        token.revoked_at = Some(now);
        assert_eq!(TokenState::of(&token, now), TokenState::Revoked);
    }

    #[test]
    fn names_expiries_and_references_are_checked() {
        assert_eq!(check_name("  ci ").unwrap(), "ci");
        for bad in ["", "   ", "a\u{0}b", &"x".repeat(101)] {
            assert!(
                matches!(check_name(bad), Err(TokenError::Invalid(_))),
                "{bad:?}"
            );
        }
        let now = Utc::now();
        assert_eq!(
            expiry("90d", now).unwrap(),
            now + chrono::Duration::days(90)
        );
        assert_eq!(expiry("1h", now).unwrap(), now + chrono::Duration::hours(1));
        for bad in ["0", "soon", "-1d", "3 months"] {
            let err = expiry(bad, now).unwrap_err().to_string();
            assert!(err.starts_with("expires: "), "{bad:?}: {err}");
        }
        let id = Uuid::now_v7();
        assert_eq!(key_of(&id.to_string()).unwrap(), TokenKey::Id(id));
        assert_eq!(
            key_of("jobsd_Ab3dEf9h").unwrap(),
            TokenKey::Prefix("jobsd_Ab3dEf9h".into())
        );
        assert_eq!(
            key_of("Ab3dEf9h").unwrap(),
            TokenKey::Prefix("jobsd_Ab3dEf9h".into())
        );
        assert!(matches!(key_of("ci"), Err(TokenError::Invalid(_))));
    }
}
