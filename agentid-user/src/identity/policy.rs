//! An agent's policy: where it may connect, which tools it may run, how old its
//! credentials may get, and whom it accepts delegated work from.
//!
//! Everything is parsed and validated when the registry loads, so the detectors that
//! consult a policy per event do no parsing and cannot fail.
use std::{fmt, net::IpAddr, time::Duration};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ipnet::IpNet;

use super::spiffe::SpiffeId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressRuleError {
    #[error("expected ADDRESS:PORT, ADDRESS:*, [IPV6]:PORT or a CIDR in place of ADDRESS")]
    Shape,
    #[error("an IPv6 address needs brackets: [{0}]:PORT")]
    UnbracketedV6(String),
    #[error("{0:?} is not an IP address or CIDR")]
    Address(String),
    #[error("{0:?} is not a port (1-65535) or '*'")]
    Port(String),
}

/// One allowed destination: a network (a single address is a /32 or /128) and a port,
/// or any port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EgressRule {
    pub net: IpNet,
    /// `None` for `*` (any port).
    pub port: Option<u16>,
}

impl EgressRule {
    /// Parses `10.0.0.0/8:443`, `127.0.0.1:8080`, `[::1]:*`, `[2001:db8::/32]:443`.
    pub fn parse(s: &str) -> Result<Self, EgressRuleError> {
        let (addr, port) = if let Some(rest) = s.strip_prefix('[') {
            let (addr, port) = rest.split_once("]:").ok_or(EgressRuleError::Shape)?;
            (addr, port)
        } else {
            let (addr, port) = s.rsplit_once(':').ok_or(EgressRuleError::Shape)?;
            if addr.contains(':') {
                return Err(EgressRuleError::UnbracketedV6(addr.to_owned()));
            }
            (addr, port)
        };
        let net = if addr.contains('/') {
            // trunc(): `10.1.2.3/8` means the network, as the reader surely meant.
            addr.parse::<IpNet>().ok().map(|n| n.trunc())
        } else {
            addr.parse::<IpAddr>().ok().map(IpNet::from)
        }
        .ok_or_else(|| EgressRuleError::Address(addr.to_owned()))?;
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| EgressRuleError::Port(p.to_owned()))?,
            ),
        };
        Ok(Self { net, port })
    }

    /// Whether a connection to `ip:port` is allowed by this rule. IPv4-mapped IPv6
    /// addresses (`::ffff:10.0.0.1`, what a dual-stack socket reports) are matched as
    /// the IPv4 address they carry, so a v4 rule covers them.
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        self.net.contains(&ip) && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.net.max_prefix_len() == self.net.prefix_len();
        match (self.net, host) {
            (IpNet::V4(n), true) => write!(f, "{}", n.addr())?,
            (IpNet::V4(n), false) => write!(f, "{n}")?,
            (IpNet::V6(n), true) => write!(f, "[{}]", n.addr())?,
            (IpNet::V6(n), false) => write!(f, "[{n}]")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => f.write_str(":*"),
        }
    }
}

/// A list of path globs compiled into one matcher: `*` stays within a path component,
/// `**` crosses `/`. A trailing `/**` also matches the path before it: `/agents/bot/**`
/// is meant to cover the `/agents/bot` cgroup and everything below it, and a process
/// may well sit in `/agents/bot` itself.
#[derive(Debug, Clone)]
pub struct GlobList {
    patterns: Vec<String>,
    set: GlobSet,
}

impl GlobList {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        for p in patterns {
            let p = p.as_ref();
            builder.add(glob(p)?);
            if let Some(base) = p.strip_suffix("/**").filter(|b| !b.is_empty()) {
                builder.add(glob(base)?);
            }
        }
        Ok(Self {
            patterns: patterns.iter().map(|p| p.as_ref().to_owned()).collect(),
            set: builder.build()?,
        })
    }

    pub fn is_match(&self, path: &str) -> bool {
        self.set.is_match(path)
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

impl Default for GlobList {
    /// Matches nothing.
    fn default() -> Self {
        Self {
            patterns: Vec::new(),
            set: GlobSet::empty(),
        }
    }
}

impl PartialEq for GlobList {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

/// The project's one glob dialect, shared by selectors, tools and credential files.
fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

/// What an agent is allowed to do. An absent `egress` or `tools` list means "not
/// restricted" (no rule was written), while an empty list means "nothing is allowed":
/// the difference between not having a policy and having a strict one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub egress: Option<Vec<EgressRule>>,
    pub tools: Option<GlobList>,
    pub credential_max_age: Option<Duration>,
    pub accepts_delegation_from: Vec<SpiffeId>,
}

impl Policy {
    pub fn allows_egress(&self, ip: IpAddr, port: u16) -> bool {
        self.egress
            .as_ref()
            .is_none_or(|rules| rules.iter().any(|r| r.allows(ip, port)))
    }

    pub fn allows_tool(&self, exe: &str) -> bool {
        self.tools.as_ref().is_none_or(|t| t.is_match(exe))
    }

    /// Whether this agent accepts work delegated by `from`. Nobody is accepted unless
    /// listed: delegation is the path by which one agent's authority reaches another.
    pub fn accepts_delegation(&self, from: &SpiffeId) -> bool {
        self.accepts_delegation_from.contains(from)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::{EgressRule, EgressRuleError as E, GlobList, Policy};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_egress_rules() {
        for (s, shown) in [
            ("10.0.0.0/8:443", "10.0.0.0/8:443"),
            ("10.1.2.3/8:443", "10.0.0.0/8:443"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0/0:*", "0.0.0.0/0:*"),
            ("[::1]:*", "[::1]:*"),
            ("[2001:db8::/32]:53", "[2001:db8::/32]:53"),
        ] {
            assert_eq!(EgressRule::parse(s).unwrap().to_string(), shown, "{s}");
        }
        for (s, want) in [
            ("10.0.0.1", E::Shape),
            ("::1:443", E::UnbracketedV6("::1".into())),
            ("[::1]443", E::Shape),
            ("example.org:443", E::Address("example.org".into())),
            ("10.0.0.0/33:443", E::Address("10.0.0.0/33".into())),
            ("10.0.0.1:http", E::Port("http".into())),
            ("10.0.0.1:65536", E::Port("65536".into())),
            ("10.0.0.1:0", E::Port("0".into())),
        ] {
            assert_eq!(EgressRule::parse(s), Err(want), "{s}");
        }
    }

    #[test]
    fn egress_rules_match_network_and_port() {
        let r = EgressRule::parse("10.0.0.0/8:443").unwrap();
        assert!(r.allows(ip("10.200.3.4"), 443));
        assert!(!r.allows(ip("10.200.3.4"), 80));
        assert!(!r.allows(ip("11.0.0.1"), 443));
        // a dual-stack socket's view of an IPv4 peer
        assert!(r.allows(ip("::ffff:10.0.0.1"), 443));
        assert!(!r.allows(ip("::1"), 443));

        let any = EgressRule::parse("[::1]:*").unwrap();
        assert!(any.allows(ip("::1"), 1));
        assert!(any.allows(ip("::1"), 65535));
        assert!(!any.allows(ip("127.0.0.1"), 1));
    }

    #[test]
    fn policy_lists_absent_vs_empty() {
        let open = Policy::default();
        assert!(open.allows_egress(ip("1.2.3.4"), 443));
        assert!(open.allows_tool("/bin/sh"));

        let closed = Policy {
            egress: Some(vec![]),
            tools: Some(GlobList::new::<&str>(&[]).unwrap()),
            ..Policy::default()
        };
        assert!(!closed.allows_egress(ip("1.2.3.4"), 443));
        assert!(!closed.allows_tool("/bin/sh"));

        let some = Policy {
            egress: Some(vec![
                EgressRule::parse("10.0.0.0/8:443").unwrap(),
                EgressRule::parse("127.0.0.1:8080").unwrap(),
            ]),
            tools: Some(GlobList::new(&["/usr/bin/git", "/usr/bin/python3*"]).unwrap()),
            ..Policy::default()
        };
        assert!(some.allows_egress(ip("127.0.0.1"), 8080));
        assert!(!some.allows_egress(ip("127.0.0.1"), 8081));
        assert!(some.allows_tool("/usr/bin/git"));
        assert!(some.allows_tool("/usr/bin/python3.12"));
        assert!(!some.allows_tool("/usr/bin/python3/../../sbin/x"));
        assert!(!some.allows_tool("/usr/bin/gitk"));
        assert!(!some.allows_tool("/usr/local/bin/git"));
    }

    #[test]
    fn globs_star_stays_in_component() {
        let g = GlobList::new(&["/agents/*/bin", "/opt/**/tool"]).unwrap();
        assert!(g.is_match("/agents/bot/bin"));
        assert!(!g.is_match("/agents/bot/x/bin"));
        assert!(g.is_match("/opt/tool"));
        assert!(g.is_match("/opt/a/b/c/tool"));
        let deep = GlobList::new(&["/etc/bot/**"]).unwrap();
        assert!(deep.is_match("/etc/bot"));
        assert!(deep.is_match("/etc/bot/a/token"));
        assert!(!deep.is_match("/etc/botnet/token"));
    }
}
