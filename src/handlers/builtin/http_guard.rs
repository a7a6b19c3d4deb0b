//! The `http` handler's client under the address policy
//! (`crate::guard::address`):
//!
//! - every name is resolved by [`GuardedResolver`], which drops the
//!   addresses the policy refuses and fails when none is left, so the
//!   check applies to the addresses actually connected to (a name that
//!   resolves to an allowed address when checked and a denied one later,
//!   DNS rebinding, gets nowhere: there is no "later");
//! - a literal IP is never resolved, so [`check_url`] checks the URL
//!   before the request is sent, and the redirect policy checks every hop
//!   the same way (and its names are resolved by the resolver again);
//! - the environment's proxy variables (`HTTP_PROXY`, `HTTPS_PROXY`,
//!   `ALL_PROXY`) are ignored, since a proxy resolves and connects past
//!   the checks; only `--http-proxy` sets one. Through it, names are not
//!   resolved here, so only what the URL's host shows is checked.

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::guard::{AddressPolicy, Refusal};

/// Redirects followed before giving up (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// Resolves names and keeps only the addresses the policy allows.
pub(crate) struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut allowed = Vec::with_capacity(found.len());
            let mut refused = Vec::new();
            for address in found {
                match policy.check(Some(&host), address.ip()) {
                    Ok(()) => allowed.push(address),
                    Err(refusal) => refused.push(refusal),
                }
            }
            if allowed.is_empty() {
                let refusal = Refusal::all_addresses(&host, refused);
                return Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// A resolver that keeps only the addresses `policy` allows (the
/// webhooks' client uses it too).
pub(crate) fn guarded_resolver(policy: Arc<AddressPolicy>) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver { policy })
}

/// Checks what a URL's host shows, before a request (or a redirect) to it
/// is sent; the addresses of a name are checked when it is resolved.
pub(crate) fn check_url(
    policy: &AddressPolicy,
    url: &reqwest::Url,
    via_proxy: bool,
) -> Result<(), Refusal> {
    let Some(host) = url.host_str() else {
        return Ok(()); // reqwest refuses a URL without a host itself
    };
    if via_proxy {
        policy.check_host_via_proxy(host)
    } else {
        policy.check_host(host)
    }
}

/// The refusal behind a failed request, if the policy caused it.
pub(crate) fn refusal_in(error: &reqwest::Error) -> Option<Refusal> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<Refusal>() {
            return Some(refusal.clone());
        }
        source = cause.source();
    }
    None
}

/// Whether `proxy` is a proxy URL reqwest takes.
pub(super) fn check_proxy(proxy: &str) -> Result<(), String> {
    reqwest::Proxy::all(proxy)
        .map(|_| ())
        .map_err(|e| format!("--http-proxy {:?}: {e}", shown(proxy)))
}

/// A proxy URL without its password, for logs and messages.
pub(super) fn shown(proxy: &str) -> String {
    match reqwest::Url::parse(proxy) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "(not a URL)".to_string(),
    }
}

/// The handler's client: the guarded resolver (or the proxy), and a
/// redirect policy that checks every hop.
pub(super) fn build_client(
    policy: Arc<AddressPolicy>,
    proxy: Option<&str>,
) -> Result<reqwest::Client, String> {
    let via_proxy = proxy.is_some();
    let hop_policy = policy.clone();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        match check_url(&hop_policy, attempt.url(), via_proxy) {
            Ok(()) => attempt.follow(),
            Err(refusal) => attempt.error(refusal),
        }
    });
    let builder = reqwest::Client::builder()
        .user_agent(concat!("jobsd/", env!("CARGO_PKG_VERSION")))
        .redirect(redirects)
        .no_proxy();
    let builder = match proxy {
        // Through a proxy the only name resolved here is the proxy's own.
        Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy).map_err(|e| e.to_string())?),
        None => builder.dns_resolver(Arc::new(GuardedResolver { policy })),
    };
    builder.build().map_err(|e| super::error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> reqwest::Url {
        reqwest::Url::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Checked without a request: a wrong answer here must not send one.
    #[test]
    fn every_spelling_of_a_literal_address_is_checked() {
        let policy = AddressPolicy::default();
        for text in [
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://0251.0376.0251.0376/",
            "http://169.254.43518/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
            "https://[fe80::1]:8443/",
            "http://[fd00:ec2::254]/",
            "http://0.0.0.0:8080/",
            "http://0/",
            "http://[::]/",
        ] {
            let refusal = check_url(&policy, &url(text), false)
                .expect_err(text)
                .to_string();
            assert!(refusal.starts_with("refused: "), "{text}: {refusal}");
            let via_proxy = check_url(&policy, &url(text), true);
            assert!(via_proxy.is_err(), "{text} through a proxy");
        }
        for text in [
            "http://127.0.0.1:8080/",
            "http://example.com/",
            "http://[::1]/",
        ] {
            assert_eq!(check_url(&policy, &url(text), false), Ok(()), "{text}");
        }
    }

    #[test]
    fn a_proxy_password_is_not_shown() {
        assert_eq!(
            shown("http://user:secret@proxy.internal:3128"),
            "http://user:***@proxy.internal:3128/"
        );
        assert_eq!(shown("http://proxy:3128"), "http://proxy:3128/");
        assert!(check_proxy("http://proxy:3128").is_ok());
        let error = check_proxy("http://user:secret@[bad").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
    }

    #[tokio::test]
    async fn the_resolver_drops_denied_addresses_and_refuses_when_none_is_left() {
        let rules = |deny: &[&str]| {
            let deny: Vec<String> = deny.iter().map(|s| s.to_string()).collect();
            Arc::new(AddressPolicy::from_flags(&deny, &[]).unwrap())
        };
        let resolve = |policy: Arc<AddressPolicy>| async move {
            let resolver = GuardedResolver { policy };
            resolver
                .resolve("localhost".parse().unwrap())
                .await
                .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>())
        };
        let all = resolve(rules(&[])).await.expect("localhost resolves");
        assert!(all.iter().any(|ip| ip.is_loopback()), "{all:?}");
        let error = resolve(rules(&["127.0.0.0/8", "::1"])).await.unwrap_err();
        let refusal = error.downcast_ref::<Refusal>().expect("a refusal");
        assert!(refusal.to_string().contains("localhost ("), "{refusal}");
        // Where localhost has an IPv6 address too, only that one is left.
        if all.iter().any(|ip| ip.is_ipv6()) {
            let left = resolve(rules(&["127.0.0.0/8"])).await.unwrap();
            assert!(left.iter().all(|ip| ip.is_ipv6()), "{left:?}");
        }
    }
}
