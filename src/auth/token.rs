//! Token secrets: how they are made, recognised and hashed.
//!
//! A token reads `jobsd_<public id>_<secret>`: `jobsd_` makes a leaked one
//! recognisable (secret scanners, logs); the public id (8 characters) is
//! what lists show and what `jobsd token revoke` takes, as `jobsd_<id>`;
//! the secret is 32 characters of `[0-9A-Za-z]` from the operating
//! system's random source, about 190 bits. Only the SHA-256 of the whole
//! token is stored: a high-entropy secret needs no slow, salted hash (there
//! is nothing to guess from the hash), and looking it up by hash needs no
//! constant-time comparison.

use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "jobsd_";
const PUBLIC_ID_LEN: usize = 8;
const SECRET_LEN: usize = 32;
/// `jobsd_` + public id + `_` + secret.
const TOKEN_LEN: usize = TOKEN_PREFIX.len() + PUBLIC_ID_LEN + 1 + SECRET_LEN;

/// A token's SHA-256.
pub type TokenDigest = [u8; 32];

/// A newly made token: the secret to hand out once, and what is stored.
#[derive(Clone)]
pub struct Minted {
    /// The whole token, shown to its owner once and never stored.
    pub secret: String,
    /// `jobsd_<public id>`: shown in lists, unique.
    pub prefix: String,
    /// Hex SHA-256 of `secret`: what is stored and looked up.
    pub hash: String,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Makes a new random token.
pub fn mint() -> Minted {
    let public_id = Alphanumeric.sample_string(&mut OsRng, PUBLIC_ID_LEN);
    let secret = Alphanumeric.sample_string(&mut OsRng, SECRET_LEN);
    let secret = format!("{TOKEN_PREFIX}{public_id}_{secret}");
    Minted {
        prefix: format!("{TOKEN_PREFIX}{public_id}"),
        hash: hex(&digest(&secret)),
        secret,
    }
}

/// Whether `presented` has the shape of a token jobsd made (so that a
/// string that cannot be one costs no database lookup).
pub fn is_well_formed(presented: &str) -> bool {
    let Some(rest) = presented.strip_prefix(TOKEN_PREFIX) else {
        return false;
    };
    let bytes = rest.as_bytes();
    presented.len() == TOKEN_LEN
        && bytes[PUBLIC_ID_LEN] == b'_'
        && bytes[..PUBLIC_ID_LEN].iter().all(u8::is_ascii_alphanumeric)
        && bytes[PUBLIC_ID_LEN + 1..]
            .iter()
            .all(u8::is_ascii_alphanumeric)
}

/// The SHA-256 of a presented token.
pub fn digest(presented: &str) -> TokenDigest {
    Sha256::digest(presented.as_bytes()).into()
}

/// Lower-case hex, as the `hash` column holds it.
pub fn hex(digest: &TokenDigest) -> String {
    use std::fmt::Write;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The stored prefix a reference given by an operator names: `jobsd_<id>`
/// as lists show it, or the bare 8-character public id. `None` when it is
/// neither.
pub fn prefix_of(reference: &str) -> Option<String> {
    let id = reference.strip_prefix(TOKEN_PREFIX).unwrap_or(reference);
    (id.len() == PUBLIC_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| format!("{TOKEN_PREFIX}{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_recognisable_distinct_and_stored_only_as_their_hash() {
        let a = mint();
        let b = mint();
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.prefix, b.prefix);
        assert!(a.secret.starts_with(&format!("{}_", a.prefix)), "{a:?}");
        assert_eq!(a.secret.len(), 47);
        assert!(is_well_formed(&a.secret));
        assert_eq!(a.hash, hex(&digest(&a.secret)));
        assert_eq!(a.hash.len(), 64);
        assert!(!a.hash.contains(&a.secret[15..]));
        assert!(
            !format!("{a:?}").contains(&a.secret),
            "Debug hides the secret"
        );
    }

    #[test]
    fn the_hash_is_sha256_in_lower_case_hex() {
        assert_eq!(
            hex(&digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn only_the_shape_jobsd_makes_is_well_formed() {
        let good = "jobsd_Ab3dEf9h_0123456789abcdefghijABCDEFGHIJkl";
        assert!(is_well_formed(good));
        let changed = |at: usize, to: &str| format!("{}{to}{}", &good[..at], &good[at + 1..]);
        for bad in [
            String::new(),
            "jobsd_".to_string(),
            format!("Bearer {good}"),
            good[..46].to_string(),
            format!("{good}m"),
            changed(14, "-"),
            changed(46, "!"),
            changed(46, "é"),
            changed(10, "_"),
            changed(4, "x"),
        ] {
            assert!(!is_well_formed(&bad), "{bad:?}");
        }
    }

    #[test]
    fn references_name_a_prefix_with_or_without_jobsd() {
        assert_eq!(
            prefix_of("jobsd_Ab3dEf9h").as_deref(),
            Some("jobsd_Ab3dEf9h")
        );
        assert_eq!(prefix_of("Ab3dEf9h").as_deref(), Some("jobsd_Ab3dEf9h"));
        assert_eq!(prefix_of("jobsd_Ab3d"), None);
        assert_eq!(prefix_of("ci"), None);
        assert_eq!(prefix_of("jobsd_Ab3dEf9h_0123"), None);
    }
}
