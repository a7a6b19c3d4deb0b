//! A CIDR block (`10.0.0.0/8`, `fd00::/8`, or one address): what the
//! address policy is written in. Small enough not to need a crate.
//!
//! - A block and an address match only within one family: an IPv4 block
//!   never contains an IPv6 address (the policy maps IPv4-mapped IPv6
//!   addresses to IPv4 itself, see `address.rs`).
//! - A block whose address has bits set past its prefix (`10.0.0.1/8`) is
//!   refused rather than silently widened: it is usually a typo.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Addresses sharing their first `prefix` bits with `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// The address's bits, left-aligned in a u128, and its family's width.
fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => ((u32::from(v4) as u128) << 96, 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// The first `prefix` bits set, left-aligned.
fn mask(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

impl Cidr {
    /// `addr/prefix`; refused when the prefix is longer than the family
    /// allows or `addr` has bits set past it.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, String> {
        let (value, width) = bits(addr);
        if prefix > width {
            return Err(format!(
                "/{prefix} is longer than an IPv{} address ({width} bits)",
                if width == 32 { 4 } else { 6 }
            ));
        }
        if value & !mask(prefix) != 0 {
            let base = Cidr::masked(addr, prefix);
            return Err(format!(
                "{addr}/{prefix} has bits set past its prefix; did you mean {base}?"
            ));
        }
        Ok(Cidr { addr, prefix })
    }

    /// The block of one address.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix: bits(addr).1,
        }
    }

    /// The block of `prefix` bits that holds `addr`.
    fn masked(addr: IpAddr, prefix: u8) -> Cidr {
        let (value, width) = bits(addr);
        let kept = value & mask(prefix);
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(((kept >> 96) as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(kept.into()),
        };
        Cidr {
            addr,
            prefix: prefix.min(width),
        }
    }

    /// Whether `ip` is in this block (same family only).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (block, width) = bits(self.addr);
        let (value, family) = bits(ip);
        width == family && (value ^ block) & mask(self.prefix) == 0
    }

    /// Whether every address of `other` is in this block.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `ADDRESS` or `ADDRESS/PREFIX`; an IPv6 address may be bracketed.
    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        match prefix {
            None => Ok(Cidr::host(addr)),
            Some(p) => {
                let prefix: u8 = p
                    .parse()
                    .map_err(|_| format!("{text:?}: the prefix {p:?} is not a number of bits"))?;
                Cidr::new(addr, prefix)
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn parses_blocks_and_single_addresses() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("127.0.0.1").to_string(), "127.0.0.1/32");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("[fd00:ec2::254]").to_string(), "fd00:ec2::254/128");
        assert_eq!(cidr("fe80::/10").to_string(), "fe80::/10");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").to_string(), "::/0");
    }

    #[test]
    fn refuses_bad_blocks_with_a_reason() {
        for (text, needle) in [
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("10.0.0.0/33", "longer than an IPv4"),
            ("::/129", "longer than an IPv6"),
            ("10.0.0.0/x", "not a number"),
            ("10.0.0.0/", "not a number"),
            ("example.com", "not an IP address"),
            ("", "not an IP address"),
            ("fe80::1/10", "did you mean fe80::/10"),
        ] {
            let error = text.parse::<Cidr>().expect_err(text);
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn contains_addresses_of_its_family_only() {
        let link_local = cidr("169.254.0.0/16");
        assert!(link_local.contains(ip("169.254.169.254")));
        assert!(link_local.contains(ip("169.254.0.0")));
        assert!(link_local.contains(ip("169.254.255.255")));
        assert!(!link_local.contains(ip("169.253.255.255")));
        assert!(!link_local.contains(ip("169.255.0.0")));
        assert!(!link_local.contains(ip("::ffff:169.254.169.254")));
        let v6 = cidr("fe80::/10");
        assert!(v6.contains(ip("fe80::1")));
        assert!(v6.contains(ip("febf:ffff::1")));
        assert!(!v6.contains(ip("fec0::1")));
        assert!(!v6.contains(ip("169.254.1.1")));
        assert!(cidr("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::1")));
        assert!(cidr("::/0").contains(ip("::1")));
        assert!(cidr("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!cidr("127.0.0.1").contains(ip("127.0.0.2")));
    }

    #[test]
    fn covers_narrower_blocks_only() {
        let link_local = cidr("169.254.0.0/16");
        assert!(link_local.covers(&cidr("169.254.169.254/32")));
        assert!(link_local.covers(&link_local));
        assert!(!link_local.covers(&cidr("169.0.0.0/8")));
        assert!(!link_local.covers(&cidr("0.0.0.0/0")));
        assert!(!link_local.covers(&cidr("fe80::/10")));
    }
}
