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
    #[error(
        "expected HOST:PORT or HOST:*, where HOST is a name, *.NAME, **.NAME, an address, [IPV6] or a CIDR"
    )]
    Shape,
    #[error("an IPv6 address needs brackets: [{0}]:PORT")]
    UnbracketedV6(String),
    #[error("{0:?} is not an IP address or CIDR")]
    Address(String),
    #[error("{0:?} is not a port (1-65535) or '*'")]
    Port(String),
    #[error("{0:?} is not a host name: {1}")]
    Name(String, &'static str),
}

/// Where a rule allows connections to: a network (a single address is a /32 or /128) or
/// a DNS name pattern, matched against the names the agent itself resolved to the
/// destination address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dest {
    Net(IpNet),
    Name(NamePattern),
}

/// How much of the name a pattern's wildcard covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wildcard {
    /// `api.example.org`: that name only.
    Exact,
    /// `*.example.org`: exactly one label below, not `example.org` itself.
    OneLabel,
    /// `**.example.org`: any depth below, not `example.org` itself.
    AnyDepth,
}

/// A DNS name pattern: lowercase, no trailing dot; `base` is the name after the wildcard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamePattern {
    pub wildcard: Wildcard,
    pub base: String,
}

/// Zones where anyone can create names (cloud storage, CDNs, app hosts, wildcard-DNS
/// services): a wildcard over them allows every stranger's host too.
const OPEN_ZONES: &[&str] = &[
    "amazonaws.com",
    "cloudfront.net",
    "azurewebsites.net",
    "blob.core.windows.net",
    "cloudapp.net",
    "appspot.com",
    "googleusercontent.com",
    "storage.googleapis.com",
    "firebaseapp.com",
    "web.app",
    "herokuapp.com",
    "github.io",
    "githubusercontent.com",
    "gitlab.io",
    "netlify.app",
    "vercel.app",
    "pages.dev",
    "workers.dev",
    "ngrok.io",
    "ngrok-free.app",
    "nip.io",
    "sslip.io",
];

impl NamePattern {
    /// Parses `api.example.org`, `*.example.org`, `**.example.org` (any case, trailing
    /// dot accepted).
    pub fn parse(s: &str) -> Result<Self, EgressRuleError> {
        let bad = |why| EgressRuleError::Name(s.to_owned(), why);
        let lower = s.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        let (wildcard, base) = if let Some(b) = name.strip_prefix("**.") {
            (Wildcard::AnyDepth, b)
        } else if let Some(b) = name.strip_prefix("*.") {
            (Wildcard::OneLabel, b)
        } else {
            (Wildcard::Exact, name)
        };
        if base.contains('*') {
            return Err(bad(
                "a wildcard may only be the whole first label: *.NAME (one label) or **.NAME (any depth)",
            ));
        }
        check_name(base).map_err(bad)?;
        Ok(Self {
            wildcard,
            base: base.to_owned(),
        })
    }

    /// Whether `name` (lowercase, no trailing dot, as learned from DNS) matches.
    pub fn matches(&self, name: &str) -> bool {
        let Self { wildcard, base } = self;
        let name = name.strip_suffix('.').unwrap_or(name);
        let below = || {
            name.len() > base.len() + 1
                && name.ends_with(base.as_str())
                && name.as_bytes()[name.len() - base.len() - 1] == b'.'
        };
        match wildcard {
            Wildcard::Exact => name.eq_ignore_ascii_case(base),
            Wildcard::OneLabel => below() && !name[..name.len() - base.len() - 1].contains('.'),
            Wildcard::AnyDepth => below(),
        }
    }

    /// For a wildcard over a zone anyone can create names in, that zone.
    pub fn open_zone(&self) -> Option<&'static str> {
        if self.wildcard == Wildcard::Exact {
            return None;
        }
        if !self.base.contains('.') {
            // `*.com`: a whole top-level domain
            return Some("a top-level domain");
        }
        OPEN_ZONES.iter().copied().find(|z| {
            self.base == *z
                || (self.base.ends_with(z)
                    && self.base.as_bytes()[self.base.len() - z.len() - 1] == b'.'
                    && *z == "amazonaws.com")
        })
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.wildcard {
            Wildcard::Exact => {}
            Wildcard::OneLabel => f.write_str("*.")?,
            Wildcard::AnyDepth => f.write_str("**.")?,
        }
        f.write_str(&self.base)
    }
}

/// A host name as DNS carries it: labels of 1-63 letters, digits, `-` or `_`, not
/// starting or ending with `-`, at most 253 characters, not all-numeric at the end
/// (that would be a mistyped address).
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, '-' and '_' (use punycode for other characters)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with '-'");
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the last label is numeric (not an address either)");
    }
    Ok(())
}

/// One allowed destination and a port, or any port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EgressRule {
    pub dest: Dest,
    /// `None` for `*` (any port).
    pub port: Option<u16>,
}

impl EgressRule {
    /// Parses `10.0.0.0/8:443`, `127.0.0.1:8080`, `[::1]:*`, `[2001:db8::/32]:443`,
    /// `api.example.org:443`, `*.example.org:443`, `**.example.org:*`.
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
        let is_name = !s.starts_with('[')
            && !addr.contains('/')
            && addr.parse::<IpAddr>().is_err()
            && addr.bytes().any(|b| b.is_ascii_alphabetic() || b == b'*');
        let dest = if is_name {
            Dest::Name(NamePattern::parse(addr)?)
        } else if addr.contains('/') {
            // trunc(): `10.1.2.3/8` means the network, as the reader surely meant.
            addr.parse::<IpNet>()
                .ok()
                .map(|n| Dest::Net(n.trunc()))
                .ok_or_else(|| EgressRuleError::Address(addr.to_owned()))?
        } else {
            addr.parse::<IpAddr>()
                .ok()
                .map(|a| Dest::Net(IpNet::from(a)))
                .ok_or_else(|| EgressRuleError::Address(addr.to_owned()))?
        };
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| EgressRuleError::Port(p.to_owned()))?,
            ),
        };
        Ok(Self { dest, port })
    }

    /// Whether a connection to `ip:port` is allowed by this rule, `names` being the
    /// names the agent resolved to `ip`. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.0.0.1`, what a dual-stack socket reports) are matched as the IPv4
    /// address they carry, so a v4 rule covers them.
    pub fn allows(&self, ip: IpAddr, port: u16, names: &[String]) -> bool {
        let ip = ip.to_canonical();
        let dest = match &self.dest {
            Dest::Net(net) => net.contains(&ip),
            Dest::Name(p) => names.iter().any(|n| p.matches(n)),
        };
        dest && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dest {
            Dest::Name(p) => write!(f, "{p}")?,
            Dest::Net(net) => {
                let host = net.max_prefix_len() == net.prefix_len();
                match (net, host) {
                    (IpNet::V4(n), true) => write!(f, "{}", n.addr())?,
                    (IpNet::V4(n), false) => write!(f, "{n}")?,
                    (IpNet::V6(n), true) => write!(f, "[{}]", n.addr())?,
                    (IpNet::V6(n), false) => write!(f, "[{n}]")?,
                }
            }
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
    /// `enforce = true`: `egress` and `tools` are enforced in the kernel (a connect or send
    /// outside fails with `EPERM`, an exec outside is killed), not only alerted on.
    pub enforce: bool,
    /// Fleet hosts this agent may be live on at once (`identity-sprawl`).
    pub max_hosts: Option<usize>,
    /// Fleet host names (globs) this agent may run on (`identity-sprawl`).
    pub hosts: Option<GlobList>,
}

impl Policy {
    /// `names`: what the agent's own DNS answers said `ip` was (may be empty).
    pub fn allows_egress(&self, ip: IpAddr, port: u16, names: &[String]) -> bool {
        self.egress
            .as_ref()
            .is_none_or(|rules| rules.iter().any(|r| r.allows(ip, port, names)))
    }

    /// Whether an HTTP request for `host` (the `Host` or `:authority` an agent sent over
    /// TLS) to `port` stays inside `egress`. The host is the agent's own claim, so it can
    /// only narrow what the connection was allowed: it is judged only when the policy names
    /// hosts, a name against the name rules alone and an address literal against the
    /// address rules, and the names the agent's DNS gave the connection are not consulted
    /// (a request fronted through an allowed name's address is still outside).
    pub fn allows_request_host(&self, host: &str, port: u16) -> bool {
        let Some(rules) = &self.egress else {
            return true;
        };
        if !rules.iter().any(|r| matches!(r.dest, Dest::Name(_))) {
            return true;
        }
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        if let Ok(ip) = literal.unwrap_or(host).parse::<IpAddr>() {
            return rules
                .iter()
                .any(|r| matches!(r.dest, Dest::Net(_)) && r.allows(ip, port, &[]));
        }
        let name = [host.trim_end_matches('.').to_ascii_lowercase()];
        rules.iter().any(|r| {
            matches!(r.dest, Dest::Name(_)) && r.allows(IpAddr::from([0, 0, 0, 0]), port, &name)
        })
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
            ("API.Example.ORG.:443", "api.example.org:443"),
            ("*.example.org:443", "*.example.org:443"),
            ("**.Example.org:*", "**.example.org:*"),
            ("localhost:8080", "localhost:8080"),
        ] {
            assert_eq!(EgressRule::parse(s).unwrap().to_string(), shown, "{s}");
        }
        for (s, want) in [
            ("10.0.0.1", E::Shape),
            ("::1:443", E::UnbracketedV6("::1".into())),
            ("[::1]443", E::Shape),
            (
                "exa mple.org:443",
                E::Name(
                    "exa mple.org".into(),
                    "only letters, digits, '-' and '_' (use punycode for other characters)",
                ),
            ),
            (
                "a.*.example.org:443",
                E::Name(
                    "a.*.example.org".into(),
                    "a wildcard may only be the whole first label: *.NAME (one label) or **.NAME (any depth)",
                ),
            ),
            (
                "*example.org:443",
                E::Name(
                    "*example.org".into(),
                    "a wildcard may only be the whole first label: *.NAME (one label) or **.NAME (any depth)",
                ),
            ),
            (
                "*:443",
                E::Name(
                    "*".into(),
                    "a wildcard may only be the whole first label: *.NAME (one label) or **.NAME (any depth)",
                ),
            ),
            (
                "-x.example.org:443",
                E::Name("-x.example.org".into(), "a label starts or ends with '-'"),
            ),
            ("a..org:443", E::Name("a..org".into(), "empty label")),
            ("10.0.0.300:443", E::Address("10.0.0.300".into())),
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
        assert!(r.allows(ip("10.200.3.4"), 443, &[]));
        assert!(!r.allows(ip("10.200.3.4"), 80, &[]));
        assert!(!r.allows(ip("11.0.0.1"), 443, &[]));
        // a dual-stack socket's view of an IPv4 peer
        assert!(r.allows(ip("::ffff:10.0.0.1"), 443, &[]));
        assert!(!r.allows(ip("::1"), 443, &[]));

        let any = EgressRule::parse("[::1]:*").unwrap();
        assert!(any.allows(ip("::1"), 1, &[]));
        assert!(any.allows(ip("::1"), 65535, &[]));
        assert!(!any.allows(ip("127.0.0.1"), 1, &[]));
    }

    #[test]
    fn name_patterns_match_names_the_agent_resolved() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let exact = EgressRule::parse("api.example.org:443").unwrap();
        assert!(exact.allows(ip("10.0.0.1"), 443, &names(&["api.example.org"])));
        assert!(exact.allows(ip("10.0.0.1"), 443, &names(&["API.example.org."])));
        assert!(!exact.allows(ip("10.0.0.1"), 80, &names(&["api.example.org"])));
        assert!(!exact.allows(ip("10.0.0.1"), 443, &names(&["x.api.example.org"])));
        // an address alone never matches a name rule
        assert!(!exact.allows(ip("10.0.0.1"), 443, &[]));

        let one = EgressRule::parse("*.example.org:*").unwrap();
        assert!(one.allows(ip("10.0.0.1"), 1, &names(&["a.example.org"])));
        assert!(!one.allows(ip("10.0.0.1"), 1, &names(&["a.b.example.org"])));
        assert!(!one.allows(ip("10.0.0.1"), 1, &names(&["example.org"])));
        assert!(!one.allows(ip("10.0.0.1"), 1, &names(&["aexample.org"])));

        let deep = EgressRule::parse("**.example.org:443").unwrap();
        assert!(deep.allows(ip("10.0.0.1"), 443, &names(&["a.b.c.example.org"])));
        assert!(deep.allows(ip("10.0.0.1"), 443, &names(&["evil.test", "a.example.org"])));
        assert!(!deep.allows(ip("10.0.0.1"), 443, &names(&["example.org"])));
        assert!(!deep.allows(ip("10.0.0.1"), 443, &names(&["example.org.evil.test"])));
    }

    #[test]
    fn wildcards_over_open_zones_are_flagged() {
        let zone = |s: &str| match EgressRule::parse(s).unwrap().dest {
            super::Dest::Name(p) => p.open_zone(),
            super::Dest::Net(_) => None,
        };
        assert_eq!(zone("*.amazonaws.com:443"), Some("amazonaws.com"));
        assert_eq!(zone("**.s3.amazonaws.com:443"), Some("amazonaws.com"));
        assert_eq!(zone("*.nip.io:*"), Some("nip.io"));
        assert_eq!(zone("**.com:443"), Some("a top-level domain"));
        assert_eq!(zone("nip.io:443"), None);
        assert_eq!(zone("*.example.org:443"), None);
        assert_eq!(zone("*.myapp.herokuapp.com:443"), None);
    }

    #[test]
    fn policy_lists_absent_vs_empty() {
        let open = Policy::default();
        assert!(open.allows_egress(ip("1.2.3.4"), 443, &[]));
        assert!(open.allows_tool("/bin/sh"));

        let closed = Policy {
            egress: Some(vec![]),
            tools: Some(GlobList::new::<&str>(&[]).unwrap()),
            ..Policy::default()
        };
        assert!(!closed.allows_egress(ip("1.2.3.4"), 443, &[]));
        assert!(!closed.allows_tool("/bin/sh"));

        let some = Policy {
            egress: Some(vec![
                EgressRule::parse("10.0.0.0/8:443").unwrap(),
                EgressRule::parse("127.0.0.1:8080").unwrap(),
            ]),
            tools: Some(GlobList::new(&["/usr/bin/git", "/usr/bin/python3*"]).unwrap()),
            ..Policy::default()
        };
        assert!(some.allows_egress(ip("127.0.0.1"), 8080, &[]));
        assert!(!some.allows_egress(ip("127.0.0.1"), 8081, &[]));
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
