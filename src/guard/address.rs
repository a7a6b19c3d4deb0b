//! Which addresses and hosts the `http` handler may connect to. Pure: the
//! handler asks it about every address it is about to connect to (after
//! resolving, so DNS rebinding cannot get past it) and about every URL it
//! is about to request (a literal IP is never resolved).
//!
//! The rules, in the order they apply:
//! 1. `--http-deny` entries (CIDR blocks, addresses or host names, `*.` for
//!    every subdomain) refuse whatever they match; nothing overrides them.
//! 2. The default deny list refuses link-local addresses (169.254.0.0/16 and
//!    fe80::/10, where clouds serve instance metadata), AWS's IPv6 metadata
//!    address fd00:ec2::254, and the unspecified addresses (0.0.0.0/8, which
//!    Linux connects to this host, and ::). Only an `--http-allow` block
//!    that lies inside a default block lifts it for its addresses (so
//!    `--http-allow 169.254.169.254` reopens the metadata address, while
//!    `--http-allow 0.0.0.0/0` or a host name never does).
//! 3. With `--http-allow` set, an address must be in one of its blocks, or
//!    the URL's host must match one of its host names.
//!
//! An IPv6 address that embeds an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`,
//! or NAT64's `64:ff9b::a.b.c.d`) is checked as both, so
//! `::ffff:169.254.169.254` is refused like 169.254.169.254.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use super::cidr::Cidr;

/// The flags a refusal points to.
const SEE: &str = "see --http-allow/--http-deny";

/// The default deny list: each block and what it is.
const DEFAULT_DENY: &[(&str, &str)] = &[
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("fe80::/10", "link-local (cloud metadata)"),
    ("fd00:ec2::254/128", "AWS's IPv6 metadata address"),
    (
        "0.0.0.0/8",
        "the unspecified address (it reaches this host)",
    ),
    ("::/128", "the unspecified address"),
];

/// A host name rule: one name, or (written `*.example.com`) every name
/// under a domain, not the domain itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    name: String,
    subdomains: bool,
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        if self.subdomains {
            host.strip_suffix(self.name.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'))
        } else {
            host == self.name
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subdomains {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// Host names compare in lower case, without a trailing dot.
fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// One `--http-deny` or `--http-allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Net(Cidr),
    Host(HostPattern),
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Rule, String> {
        let text = text.trim();
        // Anything with a ':' or a '/', or only digits and dots, is meant
        // as an address: report it as a bad one rather than as a bad name.
        let looks_like_address = text.contains([':', '/'])
            || (!text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.'));
        if looks_like_address {
            return text.parse().map(Rule::Net);
        }
        let (subdomains, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = normalize_host(name);
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(format!(
                "{text:?} is neither an IP address, a CIDR block (10.0.0.0/8) nor a host name \
                 (example.com, or *.example.com for its subdomains)"
            ));
        }
        Ok(Rule::Host(HostPattern { name, subdomains }))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Net(net) => net.fmt(f),
            Rule::Host(host) => host.fmt(f),
        }
    }
}

/// Why a request was refused; the message names the rule and the flags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused: {reason}; {SEE}")]
pub struct Refusal {
    reason: String,
}

impl Refusal {
    fn new(reason: String) -> Refusal {
        Refusal { reason }
    }

    /// Every address `host` resolved to was refused: the first refusal,
    /// and how many others there were.
    pub fn all_addresses(host: &str, refusals: Vec<Refusal>) -> Refusal {
        let count = refusals.len();
        match refusals.into_iter().next() {
            None => Refusal::new(format!("{host} resolved to no address")),
            Some(first) if count == 1 => first,
            Some(first) if count == 2 => Refusal::new(format!(
                "{} (and the other address {host} resolves to is refused too)",
                first.reason
            )),
            Some(first) => Refusal::new(format!(
                "{} (and the {} other addresses {host} resolves to are refused too)",
                first.reason,
                count - 1
            )),
        }
    }
}

/// The IPv4 address an IPv6 one stands for, and how it embeds it.
fn embedded_v4(ip: IpAddr) -> Option<(Ipv4Addr, &'static str)> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some((v4, "IPv4-mapped"));
    }
    let s = v6.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let low = (u32::from(s[6]) << 16) | u32::from(s[7]);
        return Some((Ipv4Addr::from(low), "NAT64"));
    }
    None
}

/// Which addresses and hosts the `http` handler may reach.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    deny: Vec<Rule>,
    /// `None`: no allow list (everything not denied is allowed).
    allow: Option<Vec<Rule>>,
    defaults: Vec<(Cidr, &'static str)>,
}

impl Default for AddressPolicy {
    /// The default deny list alone.
    fn default() -> Self {
        AddressPolicy::new(Vec::new(), Vec::new())
    }
}

impl AddressPolicy {
    /// `deny` on top of the default deny list; an empty `allow` is no
    /// allow list.
    pub fn new(deny: Vec<Rule>, allow: Vec<Rule>) -> AddressPolicy {
        let defaults = DEFAULT_DENY
            .iter()
            .filter_map(|(block, what)| block.parse().ok().map(|net| (net, *what)))
            .collect();
        AddressPolicy {
            deny,
            allow: (!allow.is_empty()).then_some(allow),
            defaults,
        }
    }

    /// From the flags' entries (each may hold several, separated by commas;
    /// blank ones are skipped); a bad entry is an error naming its flag.
    pub fn from_flags(deny: &[String], allow: &[String]) -> Result<AddressPolicy, String> {
        let rules = |flag: &str, entries: &[String]| {
            entries
                .iter()
                .flat_map(|e| e.split(','))
                .filter(|e| !e.trim().is_empty())
                .map(|e| e.parse::<Rule>().map_err(|why| format!("{flag}: {why}")))
                .collect::<Result<Vec<Rule>, String>>()
        };
        Ok(AddressPolicy::new(
            rules("--http-deny", deny)?,
            rules("--http-allow", allow)?,
        ))
    }

    /// Whether an allow list is set.
    pub fn has_allow_list(&self) -> bool {
        self.allow.is_some()
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        let list = |rules: &[Rule]| {
            rules
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let defaults: Vec<String> = self.defaults.iter().map(|(n, _)| n.to_string()).collect();
        let mut text = format!("denied by default: {}", defaults.join(", "));
        if !self.deny.is_empty() {
            text.push_str(&format!("; --http-deny: {}", list(&self.deny)));
        }
        if let Some(allow) = &self.allow {
            text.push_str(&format!("; --http-allow (only these): {}", list(allow)));
        }
        text
    }

    /// Checks an address about to be connected to; `host` is the name it
    /// was resolved from (`None` for a literal IP in the URL).
    pub fn check(&self, host: Option<&str>, ip: IpAddr) -> Result<(), Refusal> {
        let host = host.map(normalize_host);
        if let Some(host) = &host {
            self.check_denied_name(host)?;
        }
        let embedded = embedded_v4(ip);
        let mut forms = vec![ip];
        forms.extend(embedded.map(|(v4, _)| IpAddr::V4(v4)));
        let subject = match (&host, embedded) {
            (Some(h), _) if *h != ip.to_string() => format!("{h} ({ip})"),
            (_, Some((v4, how))) => format!("{ip} ({how} {v4})"),
            _ => ip.to_string(),
        };

        for form in &forms {
            for rule in &self.deny {
                if let Rule::Net(net) = rule {
                    if net.contains(*form) {
                        return Err(Refusal::new(format!(
                            "{subject} is in {net}, denied by --http-deny"
                        )));
                    }
                }
            }
        }
        for form in &forms {
            for (net, what) in &self.defaults {
                if net.contains(*form) && !self.lifted(net, *form) {
                    return Err(Refusal::new(format!(
                        "{subject} is {what}, denied by default"
                    )));
                }
            }
        }
        if let Some(allow) = &self.allow {
            let allowed = allow.iter().any(|rule| match rule {
                Rule::Net(net) => forms.iter().any(|f| net.contains(*f)),
                Rule::Host(pattern) => host.as_deref().is_some_and(|h| pattern.matches(h)),
            });
            if !allowed {
                return Err(Refusal::new(format!(
                    "{subject} is not in --http-allow ({})",
                    self.allow_list()
                )));
            }
        }
        Ok(())
    }

    /// What the URL's host alone decides, before anything is resolved: a
    /// literal IP is checked in full; a name only against the host names
    /// of `--http-deny` (its addresses are checked when they are known).
    pub fn check_host(&self, host: &str) -> Result<(), Refusal> {
        match literal_ip(host) {
            Some(ip) => self.check(None, ip),
            None => self.check_denied_name(&normalize_host(host)),
        }
    }

    /// [`AddressPolicy::check_host`] for a request sent through a proxy,
    /// which resolves names itself: under an allow list, a name must be
    /// one of its host names, since its addresses are never seen here.
    pub fn check_host_via_proxy(&self, host: &str) -> Result<(), Refusal> {
        self.check_host(host)?;
        let Some(allow) = &self.allow else {
            return Ok(());
        };
        if literal_ip(host).is_some() {
            return Ok(());
        }
        let host = normalize_host(host);
        let named = allow
            .iter()
            .any(|rule| matches!(rule, Rule::Host(p) if p.matches(&host)));
        if named {
            Ok(())
        } else {
            Err(Refusal::new(format!(
                "{host} is not a host name in --http-allow ({}), and through --http-proxy \
                 its addresses are not known here",
                self.allow_list()
            )))
        }
    }

    fn check_denied_name(&self, host: &str) -> Result<(), Refusal> {
        for rule in &self.deny {
            if let Rule::Host(pattern) = rule {
                if pattern.matches(host) {
                    return Err(Refusal::new(format!(
                        "host {host} matches {pattern}, denied by --http-deny"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether an `--http-allow` block inside the default block `net`
    /// holds `ip`.
    fn lifted(&self, net: &Cidr, ip: IpAddr) -> bool {
        self.allow.iter().flatten().any(|rule| match rule {
            Rule::Net(allowed) => allowed.contains(ip) && net.covers(allowed),
            Rule::Host(_) => false,
        })
    }

    fn allow_list(&self) -> String {
        self.allow
            .iter()
            .flatten()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The IP address a URL host is, if it is one (`[::1]` bracketed or not).
fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(deny: &[&str], allow: &[&str]) -> AddressPolicy {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        AddressPolicy::from_flags(&owned(deny), &owned(allow)).expect("valid flags")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// The refusal's message, or panics when `ip` is allowed.
    fn refused(policy: &AddressPolicy, host: Option<&str>, address: &str) -> String {
        match policy.check(host, ip(address)) {
            Err(refusal) => refusal.to_string(),
            Ok(()) => panic!("{host:?} {address} should be refused"),
        }
    }

    #[test]
    fn cloud_metadata_and_link_local_are_denied_by_default() {
        let p = AddressPolicy::default();
        assert_eq!(
            refused(&p, None, "169.254.169.254"),
            "refused: 169.254.169.254 is link-local (cloud metadata), denied by default; \
             see --http-allow/--http-deny"
        );
        assert!(refused(&p, None, "169.254.0.1").contains("link-local"));
        assert!(refused(&p, None, "fe80::1").contains("link-local"));
        assert!(refused(&p, None, "febf::1").contains("link-local"));
        assert!(refused(&p, None, "fd00:ec2::254").contains("AWS's IPv6 metadata"));
        assert!(refused(&p, None, "0.0.0.0").contains("unspecified"));
        assert!(refused(&p, None, "0.1.2.3").contains("unspecified"));
        assert!(refused(&p, None, "::").contains("unspecified"));
        let by_name = refused(&p, Some("metadata.google.internal"), "169.254.169.254");
        assert!(
            by_name.contains("metadata.google.internal (169.254.169.254) is link-local"),
            "{by_name}"
        );
    }

    #[test]
    fn ordinary_addresses_are_allowed_by_default() {
        let p = AddressPolicy::default();
        for address in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "192.168.0.1",
            "8.8.8.8",
            "2001:db8::1",
            "fd00:ec2::253",
            "169.255.0.1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "1.0.0.0",
        ] {
            assert_eq!(p.check(None, ip(address)), Ok(()), "{address}");
        }
        assert_eq!(p.check(Some("localhost"), ip("127.0.0.1")), Ok(()));
    }

    #[test]
    fn ipv4_embedded_in_ipv6_is_checked_as_ipv4() {
        let p = AddressPolicy::default();
        let mapped = refused(&p, None, "::ffff:169.254.169.254");
        assert!(
            mapped.contains("::ffff:169.254.169.254 (IPv4-mapped 169.254.169.254) is link-local"),
            "{mapped}"
        );
        assert!(refused(&p, None, "::ffff:0.0.0.0").contains("unspecified"));
        let nat64 = refused(&p, None, "64:ff9b::a9fe:a9fe");
        assert!(nat64.contains("NAT64 169.254.169.254"), "{nat64}");
        let denied = policy(&["127.0.0.0/8"], &[]);
        assert!(refused(&denied, None, "::ffff:127.0.0.1").contains("in 127.0.0.0/8"));
        // The deprecated IPv4-compatible form is not mapped: ::1 stays loopback.
        assert_eq!(p.check(None, ip("::1")), Ok(()));
    }

    #[test]
    fn deny_entries_refuse_blocks_addresses_and_names() {
        let p = policy(
            &[
                "127.0.0.1/32",
                "10.0.0.0/8,",
                "::1",
                "internal.example",
                "*.corp",
            ],
            &[],
        );
        assert_eq!(
            refused(&p, None, "127.0.0.1"),
            "refused: 127.0.0.1 is in 127.0.0.1/32, denied by --http-deny; \
             see --http-allow/--http-deny"
        );
        assert!(refused(&p, Some("localhost"), "127.0.0.1")
            .contains("localhost (127.0.0.1) is in 127.0.0.1/32"));
        assert!(refused(&p, None, "10.200.0.1").contains("10.0.0.0/8"));
        assert!(refused(&p, None, "::1").contains("::1/128"));
        assert_eq!(p.check(None, ip("127.0.0.2")), Ok(()));
        assert!(refused(&p, Some("Internal.Example."), "192.0.2.1")
            .contains("host internal.example matches internal.example"));
        assert!(refused(&p, Some("db.corp"), "192.0.2.1").contains("matches *.corp"));
        assert!(refused(&p, Some("a.b.corp"), "192.0.2.1").contains("matches *.corp"));
        assert_eq!(p.check(Some("corp"), ip("192.0.2.1")), Ok(()));
        assert_eq!(p.check(Some("xcorp"), ip("192.0.2.1")), Ok(()));
        assert!(p.check_host("internal.example").is_err());
        assert!(p.check_host("[::1]").is_err());
        assert!(p.check_host("127.0.0.1").is_err());
        assert_eq!(p.check_host("example.com"), Ok(()));
    }

    #[test]
    fn an_allow_list_admits_only_its_blocks_and_names() {
        let p = policy(&[], &["127.0.0.2", "192.168.0.0/16", "api.example.com"]);
        let text = refused(&p, None, "127.0.0.1");
        assert!(
            text.contains(
                "127.0.0.1 is not in --http-allow (127.0.0.2/32, 192.168.0.0/16, api.example.com)"
            ),
            "{text}"
        );
        assert_eq!(p.check(None, ip("127.0.0.2")), Ok(()));
        assert_eq!(p.check(None, ip("192.168.7.7")), Ok(()));
        assert_eq!(p.check(None, ip("::ffff:192.168.7.7")), Ok(()));
        assert_eq!(p.check(Some("api.example.com"), ip("203.0.113.9")), Ok(()));
        assert!(p
            .check(Some("other.example.com"), ip("203.0.113.9"))
            .is_err());
        // An allowed name never reaches a default-denied address.
        assert!(
            refused(&p, Some("api.example.com"), "169.254.169.254").contains("denied by default")
        );
    }

    #[test]
    fn only_a_block_inside_a_default_block_lifts_it() {
        let lifted = policy(&[], &["169.254.169.254"]);
        assert_eq!(lifted.check(None, ip("169.254.169.254")), Ok(()));
        assert!(refused(&lifted, None, "169.254.169.253").contains("denied by default"));
        let broad = policy(&[], &["0.0.0.0/0", "::/0"]);
        assert!(refused(&broad, None, "169.254.169.254").contains("denied by default"));
        assert!(refused(&broad, None, "fd00:ec2::254").contains("denied by default"));
        assert_eq!(broad.check(None, ip("8.8.8.8")), Ok(()));
        // A deny entry wins over an allow entry.
        let both = policy(&["169.254.169.254"], &["169.254.0.0/16"]);
        assert!(refused(&both, None, "169.254.169.254").contains("--http-deny"));
        assert_eq!(both.check(None, ip("169.254.1.1")), Ok(()));
    }

    #[test]
    fn through_a_proxy_an_allow_list_admits_names_it_lists() {
        let p = policy(&[], &["api.example.com", "10.0.0.0/8"]);
        assert_eq!(p.check_host_via_proxy("api.example.com"), Ok(()));
        assert_eq!(p.check_host_via_proxy("10.1.1.1"), Ok(()));
        let text = p
            .check_host_via_proxy("other.example.com")
            .unwrap_err()
            .to_string();
        assert!(text.contains("not a host name in --http-allow"), "{text}");
        assert!(p.check_host_via_proxy("169.254.169.254").is_err());
        assert_eq!(
            AddressPolicy::default().check_host_via_proxy("x.example"),
            Ok(())
        );
    }

    #[test]
    fn bad_entries_are_refused_naming_the_flag() {
        for (deny, allow, needle) in [
            (
                vec!["10.0.0.1/8"],
                vec![],
                "--http-deny: 10.0.0.1/8 has bits set",
            ),
            (
                vec![],
                vec!["999.1.1.1"],
                "--http-allow: \"999.1.1.1\" is not an IP",
            ),
            (vec!["exa mple.com"], vec![], "neither an IP address"),
            (vec!["*."], vec![], "neither an IP address"),
            (vec!["http://x"], vec![], "not an IP address"),
        ] {
            let owned = |l: &Vec<&str>| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let error = AddressPolicy::from_flags(&owned(&deny), &owned(&allow)).unwrap_err();
            assert!(error.contains(needle), "{error}");
        }
        let blank = policy(&["", " "], &[""]);
        assert!(!blank.has_allow_list());
    }

    #[test]
    fn several_refused_addresses_are_summed_up() {
        let p = policy(&["127.0.0.0/8", "::1"], &[]);
        let refusals = vec![
            p.check(Some("localhost"), ip("127.0.0.1")).unwrap_err(),
            p.check(Some("localhost"), ip("::1")).unwrap_err(),
        ];
        let text = Refusal::all_addresses("localhost", refusals).to_string();
        assert!(
            text.contains("localhost (127.0.0.1) is in 127.0.0.0/8"),
            "{text}"
        );
        assert!(
            text.contains("the other address localhost resolves to is refused"),
            "{text}"
        );
        assert!(p.describe().contains("--http-deny: 127.0.0.0/8, ::1/128"));
    }
}
