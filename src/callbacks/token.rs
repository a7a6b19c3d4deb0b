//! Callback tokens: `jobsdcb_` and 40 characters of `[0-9A-Za-z]` from the
//! operating system's random source (about 238 bits), one per attempt.
//! Only the SHA-256 (hex) is stored, as for API tokens (`crate::auth::token`
//! explains why a plain hash suffices for a high-entropy secret).

use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;

/// Every callback token starts with this (a leaked one is recognisable).
pub const PREFIX: &str = "jobsdcb_";
const SECRET_LEN: usize = 40;

/// A new token: the secret to send once, and the hash to store.
#[derive(Clone)]
pub struct MintedCallback {
    pub secret: String,
    pub hash: String,
}

impl std::fmt::Debug for MintedCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedCallback").finish_non_exhaustive()
    }
}

/// Makes a new random token.
pub fn mint() -> MintedCallback {
    let secret = format!(
        "{PREFIX}{}",
        Alphanumeric.sample_string(&mut OsRng, SECRET_LEN)
    );
    MintedCallback {
        hash: hash(&secret),
        secret,
    }
}

/// The stored form of a token.
pub fn hash(secret: &str) -> String {
    crate::auth::token::hex(&crate::auth::token::digest(secret))
}

/// Why a presented credential is refused before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`.
    NotBearer,
    /// A bearer credential that cannot be a callback token.
    NotACallbackToken,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Malformed::Missing => {
                "send the run's callback token (X-Jobsd-Callback-Token) as `Authorization: Bearer <token>`"
            }
            Malformed::NotBearer => "the Authorization header must be `Bearer <callback token>`",
            Malformed::NotACallbackToken => {
                "the bearer credential is not a callback token (X-Jobsd-Callback-Token of the run's request)"
            }
        })
    }
}

/// The callback token an `Authorization` header value presents (the
/// scheme in any case). Never echoes the credential.
pub fn parse_authorization(value: Option<&str>) -> Result<&str, Malformed> {
    let value = value.ok_or(Malformed::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(Malformed::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Malformed::NotBearer);
    }
    let token = token.trim();
    let well_formed = token
        .strip_prefix(PREFIX)
        .is_some_and(|s| s.len() == SECRET_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric()));
    if well_formed {
        Ok(token)
    } else {
        Err(Malformed::NotACallbackToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_back_and_are_stored_as_their_hash() {
        let a = mint();
        let b = mint();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.hash.len(), 64);
        assert!(!a.hash.contains(&a.secret[PREFIX.len()..]));
        assert_eq!(a.hash, hash(&a.secret));
        let header = format!("Bearer {}", a.secret);
        assert_eq!(parse_authorization(Some(&header)), Ok(a.secret.as_str()));
        let header = format!("bearer   {} ", a.secret);
        assert_eq!(parse_authorization(Some(&header)), Ok(a.secret.as_str()));
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn malformed_credentials_are_told_apart_without_a_lookup() {
        assert_eq!(parse_authorization(None), Err(Malformed::Missing));
        assert_eq!(
            parse_authorization(Some("Basic dXNlcg==")),
            Err(Malformed::NotBearer)
        );
        assert_eq!(
            parse_authorization(Some("Bearer")),
            Err(Malformed::NotBearer)
        );
        for bad in [
            "Bearer jobsd_abcdefgh_0123456789abcdef0123456789abcdef",
            "Bearer jobsdcb_short",
            &format!("Bearer jobsdcb_{}", "é".repeat(20)),
            &format!("Bearer jobsdcb_{}!", "a".repeat(39)),
        ] {
            assert_eq!(
                parse_authorization(Some(bad)),
                Err(Malformed::NotACallbackToken),
                "{bad}"
            );
        }
        assert!(!Malformed::NotACallbackToken
            .to_string()
            .contains("jobsdcb_"));
    }
}
