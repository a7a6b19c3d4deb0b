//! API tokens as the store takes and returns them. The secret itself is
//! never stored: a token is kept as the hash of its secret (see
//! `crate::auth::token`), and no row read back carries even that.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::Scope;

/// A token to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewToken {
    pub id: Uuid,
    /// Who or what it is for (`ci`, `grafana`), as the operator named it.
    pub name: String,
    /// `jobsd_<public id>`: unique, shown in lists.
    pub prefix: String,
    /// Hex SHA-256 of the whole token: unique, what a request is looked up by.
    pub hash: String,
    pub scope: Scope,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A stored token, without its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scope: Scope,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Written at most once a minute per token and replica.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl TokenRow {
    /// Neither revoked nor expired at `now`: it is accepted.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

/// Which token an operator means: its id, or its prefix (`jobsd_<public id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKey {
    Id(Uuid),
    Prefix(String),
}

impl std::fmt::Display for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenKey::Id(id) => write!(f, "{id}"),
            TokenKey::Prefix(prefix) => f.write_str(prefix),
        }
    }
}
