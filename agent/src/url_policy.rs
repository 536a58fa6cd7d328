//! Which hosts an image URL may reach: a pure decision over IP addresses, table-tested.
//!
//! By default every address is allowed (loopback and private ranges included: local
//! mirrors are common) except link-local (`169.254.0.0/16`, `fe80::/10`), multicast,
//! unspecified, broadcast and the cloud metadata addresses (`169.254.169.254`,
//! `fd00:ec2::254`, `100.100.100.200`). `--deny-image-cidr` refuses more ranges and wins
//! over everything; `--allow-image-cidr` re-allows a range the built-in rules refuse.
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are judged as the IPv4 address.
//! [`crate::image_fetch`] resolves each host (on every redirect hop) and connects only to
//! the addresses this module allowed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network `ADDR/PREFIX` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlPolicyError {
    #[error("{0:?} is not an IP network (expected ADDR/PREFIX, e.g. 10.0.0.0/8 or fd00::/8)")]
    BadCidr(String),
    #[error("{0:?}: prefix length {1} is too long for the address family")]
    BadPrefix(String, u8),
}

impl FromStr for Cidr {
    type Err = UrlPolicyError;
    fn from_str(s: &str) -> Result<Cidr, UrlPolicyError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| UrlPolicyError::BadCidr(s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| UrlPolicyError::BadCidr(s.to_string()))?,
        };
        if prefix > max {
            return Err(UrlPolicyError::BadPrefix(s.to_string(), prefix));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask_bits(bits: u128, total: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        bits >> (total - prefix) << (total - prefix)
    }
}

impl Cidr {
    const fn v4(a: [u8; 4], prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
        let s = segments;
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
            )),
            prefix,
        }
    }

    /// True when `ip` lies in this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_bits(u32::from(net).into(), 32, self.prefix)
                    == mask_bits(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_bits(u128::from(net), 128, self.prefix)
                    == mask_bits(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; everything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The ranges refused unless allowed explicitly, each with the rule name a refusal quotes.
/// The most specific come first so a refusal names the narrowest rule.
const BUILTIN_REFUSED: &[(&str, Cidr)] = &[
    ("cloud metadata", Cidr::v4([169, 254, 169, 254], 32)),
    (
        "cloud metadata",
        Cidr::v6([0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254], 128),
    ),
    ("cloud metadata", Cidr::v4([100, 100, 100, 200], 32)),
    ("unspecified", Cidr::v4([0, 0, 0, 0], 8)),
    ("unspecified", Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128)),
    ("broadcast", Cidr::v4([255, 255, 255, 255], 32)),
    ("link-local", Cidr::v4([169, 254, 0, 0], 16)),
    ("link-local", Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10)),
    ("multicast", Cidr::v4([224, 0, 0, 0], 4)),
    ("multicast", Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8)),
];

/// Why an address is refused: the rule, quoted in `image_url_refused` messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A built-in rule, e.g. `link-local 169.254.0.0/16`.
    Builtin { rule: &'static str, cidr: Cidr },
    /// An operator's `--deny-image-cidr`.
    Denied(Cidr),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Builtin { rule, cidr } => write!(
                f,
                "{rule} range {cidr} is refused by default (--allow-image-cidr re-allows it)"
            ),
            Refusal::Denied(cidr) => write!(f, "--deny-image-cidr {cidr}"),
        }
    }
}

/// The agent's image URL policy (`--allow-image-cidr`, `--deny-image-cidr`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl UrlPolicy {
    /// `Ok` when an image download may connect to `ip`; else the rule that refuses it.
    /// Deny rules win, then allow rules, then the built-in refusals; the rest is allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        if let Some(cidr) = self.deny.iter().find(|c| c.contains(ip)) {
            return Err(Refusal::Denied(*cidr));
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match BUILTIN_REFUSED.iter().find(|(_, c)| c.contains(ip)) {
            Some((rule, cidr)) => Err(Refusal::Builtin { rule, cidr: *cidr }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn cidr_parse_table() {
        let table: &[(&str, Result<&str, &str>)] = &[
            ("10.0.0.0/8", Ok("10.0.0.0/8")),
            ("127.0.0.1", Ok("127.0.0.1/32")),
            ("fd00::/8", Ok("fd00::/8")),
            ("::1", Ok("::1/128")),
            ("10.0.0.0/33", Err("\"10.0.0.0/33\": prefix length 33 is too long for the address family")),
            ("example.com/8", Err("\"example.com/8\" is not an IP network (expected ADDR/PREFIX, e.g. 10.0.0.0/8 or fd00::/8)")),
            ("10.0.0.0/x", Err("\"10.0.0.0/x\" is not an IP network (expected ADDR/PREFIX, e.g. 10.0.0.0/8 or fd00::/8)")),
        ];
        for (input, want) in table {
            let got = input
                .parse::<Cidr>()
                .map(|c| c.to_string())
                .map_err(|e| e.to_string());
            assert_eq!(
                got,
                want.map(str::to_string).map_err(str::to_string),
                "{input}"
            );
        }
    }

    #[test]
    fn url_policy_default_table() {
        let policy = UrlPolicy::default();
        let table: &[(&str, Option<&str>)] = &[
            ("127.0.0.1", None),
            ("::1", None),
            ("10.1.2.3", None),
            ("192.168.1.1", None),
            ("172.16.0.1", None),
            ("fd12::1", None),
            ("93.184.216.34", None),
            ("2001:db8::1", None),
            (
                "169.254.169.254",
                Some("cloud metadata range 169.254.169.254/32"),
            ),
            (
                "::ffff:169.254.169.254",
                Some("cloud metadata range 169.254.169.254/32"),
            ),
            (
                "fd00:ec2::254",
                Some("cloud metadata range fd00:ec2::254/128"),
            ),
            (
                "100.100.100.200",
                Some("cloud metadata range 100.100.100.200/32"),
            ),
            ("169.254.1.1", Some("link-local range 169.254.0.0/16")),
            ("fe80::1", Some("link-local range fe80::/10")),
            ("febf::1", Some("link-local range fe80::/10")),
            ("224.0.0.1", Some("multicast range 224.0.0.0/4")),
            ("ff02::1", Some("multicast range ff00::/8")),
            ("0.0.0.0", Some("unspecified range 0.0.0.0/8")),
            ("::", Some("unspecified range ::/128")),
            (
                "255.255.255.255",
                Some("broadcast range 255.255.255.255/32"),
            ),
        ];
        for (addr, want) in table {
            let got = policy.check(ip(addr)).err().map(|r| r.to_string());
            let want = want
                .map(|w| format!("{w} is refused by default (--allow-image-cidr re-allows it)"));
            assert_eq!(got, want, "{addr}");
        }
    }

    #[test]
    fn url_policy_deny_wins_then_allow_overrides_builtin() {
        let policy = UrlPolicy {
            allow: cidrs(&["169.254.10.0/24", "10.0.0.0/8"]),
            deny: cidrs(&["10.9.0.0/16", "127.0.0.0/8"]),
        };
        assert_eq!(policy.check(ip("169.254.10.7")), Ok(()));
        assert!(policy.check(ip("169.254.169.254")).is_err());
        assert_eq!(policy.check(ip("10.1.1.1")), Ok(()));
        assert_eq!(
            policy.check(ip("10.9.1.1")).unwrap_err().to_string(),
            "--deny-image-cidr 10.9.0.0/16"
        );
        assert_eq!(
            policy
                .check(ip("::ffff:127.0.0.1"))
                .unwrap_err()
                .to_string(),
            "--deny-image-cidr 127.0.0.0/8"
        );
        assert_eq!(policy.check(ip("::1")), Ok(()));
    }

    #[test]
    fn cidr_contains_edges() {
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!(!all.contains(ip("::1")));
        let net: Cidr = "192.168.4.0/22".parse().unwrap();
        assert!(net.contains(ip("192.168.7.255")));
        assert!(!net.contains(ip("192.168.8.0")));
    }
}
