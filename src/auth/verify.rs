//! [`Auth`]: whether auth is on, and who a presented token is, answered
//! from memory on the request path.
//!
//! - **Cache.** A looked-up hash (found or not) is kept for [`CACHE_TTL`],
//!   then looked up again: a revocation on any replica, or by the CLI, is
//!   seen within that (the replica that revokes forgets the token at once).
//!   Expiry is checked on every request against the cached expiry time.
//!   At most [`MAX_CACHED`] hashes are kept, so random tokens cannot grow
//!   memory without bound.
//! - **Auto mode.** Until a token exists, [`Auth::run`] checks every
//!   [`TICK`] whether one does (created by the CLI or another replica);
//!   once one does, auth stays on: tokens are never deleted.
//! - **Last use.** A token's `last_used_at` is marked at most once a
//!   minute per replica, and written by [`Auth::run`], off the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::config::{AuthConfig, AuthMode};
use super::token::{self, TokenDigest};
use super::Scope;
use crate::store::{Store, StoreError, TokenRow};

/// How long a looked-up token is trusted before it is looked up again:
/// the bound on how late a revocation elsewhere is seen (≤ 5 s asked).
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// How often auto mode looks for a first token, and used tokens are written.
pub const TICK: Duration = Duration::from_secs(1);
/// The most hashes cached.
const MAX_CACHED: usize = 10_000;
/// `last_used_at` is written at most this often per token (per replica).
const LAST_USED_EVERY_SECS: i64 = 60;
/// The shortest bootstrap token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Who made a request, once its token is accepted (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// None for the bootstrap token, which is not stored.
    pub token_id: Option<Uuid>,
    pub name: String,
    pub scope: Scope,
}

/// Why a presented token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a token jobsd makes (nor the bootstrap token).
    Malformed,
    /// Well formed, but no such token.
    Unknown,
    Revoked {
        prefix: String,
    },
    Expired {
        prefix: String,
        at: DateTime<Utc>,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed => f.write_str(
                "the token is not a jobsd token (they start with jobsd_); \
                 create one with `jobsd token create`",
            ),
            Refusal::Unknown => f.write_str("unknown token; `jobsd token list` shows the tokens"),
            Refusal::Revoked { prefix } => write!(f, "the token {prefix} was revoked"),
            Refusal::Expired { prefix, at } => write!(
                f,
                "the token {prefix} expired at {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        }
    }
}

/// Why [`Auth::verify`] accepted no caller.
#[derive(Debug)]
pub enum VerifyError {
    Refused(Refusal),
    /// The store could not be asked.
    Store(StoreError),
}

/// Whether `token` (as found by its hash, or not found) is accepted at `now`.
pub fn judge(token: Option<&TokenRow>, now: DateTime<Utc>) -> Result<Caller, Refusal> {
    let token = token.ok_or(Refusal::Unknown)?;
    if token.revoked_at.is_some() {
        return Err(Refusal::Revoked {
            prefix: token.prefix.clone(),
        });
    }
    if let Some(at) = token.expires_at.filter(|at| *at <= now) {
        return Err(Refusal::Expired {
            prefix: token.prefix.clone(),
            at,
        });
    }
    Ok(Caller {
        token_id: Some(token.id),
        name: token.name.clone(),
        scope: token.scope,
    })
}

/// Whether serving on `bind` with auth `on` (as it is at start) may go on:
/// `Err` with what to do when it may not, `Ok(Some(warning))` when
/// `--insecure-no-auth` lets it.
pub fn exposure(
    bind: SocketAddr,
    auth_on: bool,
    insecure_no_auth: bool,
) -> Result<Option<String>, String> {
    if auth_on || bind.ip().is_loopback() {
        return Ok(None);
    }
    if insecure_no_auth {
        return Ok(Some(format!(
            "serving {bind} WITHOUT AUTHENTICATION (--insecure-no-auth): anyone who can \
             reach it can create, change and run jobs; only do this behind a proxy that \
             authenticates"
        )));
    }
    Err(format!(
        "refusing to serve {bind} without authentication: anyone who can reach it could \
         create jobs that call any address or run programs. Either create a token first \
         (`jobsd token create --name admin --scope admin`: under --auth auto, auth is on \
         once a token exists), or set JOBSD_ADMIN_TOKEN (a bootstrap admin token), or \
         bind a loopback address (--bind 127.0.0.1:8080), or pass --insecure-no-auth when \
         a proxy in front authenticates"
    ))
}

/// A cached lookup of one hash.
struct Cached {
    fetched: Instant,
    token: Option<Arc<CachedToken>>,
}

struct CachedToken {
    row: TokenRow,
    /// When this replica last marked the token used, in Unix seconds.
    last_marked: AtomicI64,
}

struct Inner {
    store: Store,
    mode: AuthMode,
    metrics_public: bool,
    bootstrap: Option<TokenDigest>,
    /// A token has been seen in the store (under auto, auth is on by it).
    tokens_seen: AtomicBool,
    cache: RwLock<HashMap<TokenDigest, Cached>>,
    /// Tokens used since the last write of `last_used_at`.
    used: Mutex<HashMap<Uuid, DateTime<Utc>>>,
    cors: Option<tower_http::cors::CorsLayer>,
}

/// Whether auth is on and who a token is; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.inner.mode)
            .field("enabled", &self.enabled())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Reads whether a token exists, and refuses to go on (with what to do)
    /// when `bind` is not a loopback address and auth would be off, or the
    /// bootstrap token is too short to be a secret.
    pub async fn start(
        store: &Store,
        config: &AuthConfig,
        bind: SocketAddr,
    ) -> anyhow::Result<Auth> {
        let bootstrap = match (&config.admin_token, config.mode) {
            (Some(_), AuthMode::Off) => {
                tracing::warn!("JOBSD_ADMIN_TOKEN is ignored: --auth off");
                None
            }
            (Some(secret), _) if secret.chars().count() < MIN_ADMIN_TOKEN_LEN => {
                anyhow::bail!(
                    "JOBSD_ADMIN_TOKEN is shorter than {MIN_ADMIN_TOKEN_LEN} characters; \
                     use a long random value, e.g. the output of `openssl rand -hex 32`"
                );
            }
            (Some(secret), _) => Some(token::digest(secret)),
            (None, _) => None,
        };
        let cors = super::cors::layer(&config.cors_origin).map_err(anyhow::Error::msg)?;
        let tokens_seen = match config.mode {
            AuthMode::Auto | AuthMode::On => store
                .token_exists()
                .await
                .map_err(|e| anyhow::anyhow!("reading the API tokens: {e}"))?,
            AuthMode::Off => false,
        };
        let auth = Auth {
            inner: Arc::new(Inner {
                store: store.clone(),
                mode: config.mode,
                metrics_public: config.metrics_public,
                bootstrap,
                tokens_seen: AtomicBool::new(tokens_seen),
                cache: RwLock::new(HashMap::new()),
                used: Mutex::new(HashMap::new()),
                cors,
            }),
        };
        let enabled = auth.enabled();
        if let Some(warning) =
            exposure(bind, enabled, config.insecure_no_auth).map_err(anyhow::Error::msg)?
        {
            tracing::warn!("{warning}");
        }
        match (config.mode, enabled) {
            (AuthMode::Off, _) => tracing::info!("API authentication is off (--auth off)"),
            (AuthMode::On, _) if !tokens_seen && auth.inner.bootstrap.is_none() => {
                tracing::info!(
                    "API authentication is on; no token is configured yet: create one with \
                     `jobsd token create --name admin --scope admin`"
                )
            }
            (_, true) => tracing::info!(
                "API authentication is on: send Authorization: Bearer <token> (or auth-token: <token>)"
            ),
            (_, false) => tracing::info!(
                "API authentication is off until a token exists (--auth auto); \
                 create one with `jobsd token create`"
            ),
        }
        Ok(auth)
    }

    /// Whether requests need a token now.
    pub fn enabled(&self) -> bool {
        match self.inner.mode {
            AuthMode::On => true,
            AuthMode::Off => false,
            AuthMode::Auto => {
                self.inner.bootstrap.is_some() || self.inner.tokens_seen.load(Ordering::Relaxed)
            }
        }
    }

    /// The CORS layer `--cors-origin` asks for, if any.
    pub fn cors(&self) -> Option<tower_http::cors::CorsLayer> {
        self.inner.cors.clone()
    }

    /// Whether `/metrics` is served without a token (`--metrics-public`).
    pub fn metrics_public(&self) -> bool {
        self.inner.metrics_public
    }

    /// Who `presented` is, at `now`.
    pub async fn verify(&self, presented: &str, now: DateTime<Utc>) -> Result<Caller, VerifyError> {
        let digest = token::digest(presented);
        if self.inner.bootstrap == Some(digest) {
            return Ok(Caller {
                token_id: None,
                name: "JOBSD_ADMIN_TOKEN".into(),
                scope: Scope::Admin,
            });
        }
        if !token::is_well_formed(presented) {
            return Err(VerifyError::Refused(Refusal::Malformed));
        }
        let cached = self.cached(&digest);
        let token = match cached {
            Some(token) => token,
            None => self.look_up(digest).await.map_err(VerifyError::Store)?,
        };
        let caller = judge(token.as_deref().map(|t| &t.row), now).map_err(VerifyError::Refused)?;
        if let Some(token) = &token {
            self.mark_used(token, now);
        }
        Ok(caller)
    }

    /// The fresh cache entry of `digest`, if any.
    fn cached(&self, digest: &TokenDigest) -> Option<Option<Arc<CachedToken>>> {
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(digest)?;
        (entry.fetched.elapsed() < CACHE_TTL).then(|| entry.token.clone())
    }

    async fn look_up(&self, digest: TokenDigest) -> Result<Option<Arc<CachedToken>>, StoreError> {
        let fetched = Instant::now();
        let row = self
            .inner
            .store
            .token_find_by_hash(&token::hex(&digest))
            .await?;
        let mut cache = self.inner.cache.write().unwrap_or_else(|e| e.into_inner());
        // Keep this replica's last mark across look-ups, so that a token in
        // steady use is still written once a minute, not once per look-up.
        let marked_before = cache
            .get(&digest)
            .and_then(|c| c.token.as_ref())
            .map_or(0, |t| t.last_marked.load(Ordering::Relaxed));
        let token = row.map(|row| {
            let stored = row.last_used_at.map_or(0, |at| at.timestamp());
            Arc::new(CachedToken {
                row,
                last_marked: AtomicI64::new(marked_before.max(stored)),
            })
        });
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.fetched.elapsed() < CACHE_TTL);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            digest,
            Cached {
                fetched,
                token: token.clone(),
            },
        );
        Ok(token)
    }

    fn mark_used(&self, token: &CachedToken, now: DateTime<Utc>) {
        let secs = now.timestamp();
        let last = token.last_marked.load(Ordering::Relaxed);
        if secs.saturating_sub(last) >= LAST_USED_EVERY_SECS
            && token
                .last_marked
                .compare_exchange(last, secs, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let mut used = self.inner.used.lock().unwrap_or_else(|e| e.into_inner());
            used.insert(token.row.id, now);
        }
    }

    /// A token was created through this replica: auto mode turns auth on now.
    pub fn token_created(&self) {
        self.inner.tokens_seen.store(true, Ordering::Relaxed);
    }

    /// A token was revoked through this replica: forget it now.
    pub fn token_revoked(&self, id: Uuid) {
        let mut cache = self.inner.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, c| c.token.as_ref().is_none_or(|t| t.row.id != id));
    }

    /// Until `shutdown`: every [`TICK`], looks for a first token (auto
    /// mode) and writes the last uses marked since the previous tick.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            self.refresh().await;
        }
        self.write_last_uses().await;
    }

    /// One round of [`Auth::run`].
    pub async fn refresh(&self) {
        if self.inner.mode == AuthMode::Auto && !self.inner.tokens_seen.load(Ordering::Relaxed) {
            match self.inner.store.token_exists().await {
                Ok(true) => {
                    self.token_created();
                    tracing::info!("API authentication is on: a token exists (--auth auto)");
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not check for API tokens"),
            }
        }
        self.write_last_uses().await;
    }

    async fn write_last_uses(&self) {
        let used: Vec<(Uuid, DateTime<Utc>)> = {
            let mut used = self.inner.used.lock().unwrap_or_else(|e| e.into_inner());
            used.drain().collect()
        };
        if let Err(e) = self.inner.store.token_touch(&used).await {
            // Best effort: a lost mark is written again a minute later.
            tracing::warn!(error = %e, "could not record when API tokens were last used");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scope: Scope) -> TokenRow {
        TokenRow {
            id: Uuid::now_v7(),
            name: "ci".into(),
            prefix: "jobsd_Ab3dEf9h".into(),
            scope,
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn a_live_token_is_accepted_with_its_name_and_scope() {
        let t = token(Scope::Write);
        let caller = judge(Some(&t), Utc::now()).unwrap();
        assert_eq!(
            caller,
            Caller {
                token_id: Some(t.id),
                name: "ci".into(),
                scope: Scope::Write
            }
        );
    }

    #[test]
    fn unknown_revoked_and_expired_tokens_are_refused() {
        let now = Utc::now();
        assert_eq!(judge(None, now), Err(Refusal::Unknown));
        let mut revoked = token(Scope::Admin);
        revoked.revoked_at = Some(now - chrono::Duration::seconds(1));
        assert_eq!(
            judge(Some(&revoked), now),
            Err(Refusal::Revoked {
                prefix: "jobsd_Ab3dEf9h".into()
            })
        );
        let mut expiring = token(Scope::Read);
        let at = now + chrono::Duration::seconds(10);
        expiring.expires_at = Some(at);
        assert!(judge(Some(&expiring), now).is_ok());
        assert!(judge(Some(&expiring), at - chrono::Duration::microseconds(1)).is_ok());
        let refused = judge(Some(&expiring), at).unwrap_err();
        assert_eq!(
            refused,
            Refusal::Expired {
                prefix: "jobsd_Ab3dEf9h".into(),
                at
            }
        );
        assert!(refused.to_string().contains("expired at"), "{refused}");
    }

    #[test]
    fn only_a_non_loopback_bind_with_auth_off_is_refused_or_warned() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let local6: SocketAddr = "[::1]:8080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let lan: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        for bind in [local, local6] {
            assert_eq!(exposure(bind, false, false), Ok(None));
        }
        for bind in [any, lan] {
            assert_eq!(exposure(bind, true, false), Ok(None));
            let refused = exposure(bind, false, false).unwrap_err();
            for hint in [
                "jobsd token create",
                "JOBSD_ADMIN_TOKEN",
                "--insecure-no-auth",
                "127.0.0.1",
            ] {
                assert!(refused.contains(hint), "{hint:?} in {refused}");
            }
            let warned = exposure(bind, false, true).unwrap().unwrap();
            assert!(warned.contains("WITHOUT AUTHENTICATION"), "{warned}");
        }
    }
}
