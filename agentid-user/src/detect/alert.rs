//! The alert: what detection hands to the store, the audit log and every SIEM sink.
//!
//! An alert is an *incident*, not a single sighting: the same condition seen again updates
//! `count`/`last_seen` of the alert with the same `uid` instead of raising a new one.
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use crate::identity::SpiffeId;

/// Severity, ordered. Maps to OCSF `severity_id` 1..5 and syslog severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// Threat-framework references (see `shared/design/REFERENCES.md`): a rule's, fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Tags {
    /// OWASP Top 10 for Agentic Applications, e.g. `ASI03`.
    pub owasp: &'static [&'static str],
    /// OWASP Agentic AI Threats & Mitigations, e.g. `T9`.
    pub threats: &'static [&'static str],
    /// CSA MAESTRO layers, e.g. `L7`.
    pub maestro: &'static [&'static str],
    /// NIST AI RMF subcategories, e.g. `MEASURE 2.7`.
    pub nist: &'static [&'static str],
}

/// Who acted: a registered agent, or any workload no registration matched. On the wire
/// (alerts, sinks, the store) it is the SPIFFE ID or the string `unregistered`, and it
/// sorts as that string does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Agent(SpiffeId),
    Unregistered,
}

impl Principal {
    pub const UNREGISTERED: &'static str = "unregistered";

    pub fn as_str(&self) -> &str {
        match self {
            Self::Agent(id) => id.as_str(),
            Self::Unregistered => Self::UNREGISTERED,
        }
    }

    pub fn is_registered(&self) -> bool {
        matches!(self, Self::Agent(_))
    }
}

impl Ord for Principal {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for Principal {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Principal {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Principal {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An agent involved in the incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertAgent {
    pub id: Principal,
    pub name: Option<String>,
    pub owner: Option<String>,
    pub environment: Option<String>,
    pub session: Option<String>,
}

/// A process as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessEvidence {
    pub exec_id: Option<String>,
    pub pid: u32,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    pub uid: u32,
    pub cgroup: Option<String>,
    pub acting_for: Vec<String>,
}

/// A connection as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionEvidence {
    pub dst_ip: std::net::IpAddr,
    pub dst_port: u16,
    pub protocol: String,
    /// The names the agent's own DNS resolved to `dst_ip`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dst_names: Vec<String>,
}

/// A credential as evidence: never the value, only its keyed fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialEvidence {
    /// `kind:first-12-hex`.
    pub fingerprint: String,
    pub kind: String,
    /// Where it was seen: `env:NAME`, `arg:INDEX`, `file:PATH`.
    pub seen_as: Vec<String>,
    /// A token agentid issued: who it was minted for (jti, kid, agent, session, chain,
    /// exp), never the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<crate::credentials::TokenOrigin>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Evidence {
    pub processes: Vec<ProcessEvidence>,
    pub connections: Vec<ConnectionEvidence>,
    pub credential: Option<CredentialEvidence>,
}

/// One incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// Stable: the same incident always has the same uid (a hash of rule + subject).
    pub uid: String,
    /// Rule id, e.g. `credential-reuse`.
    pub rule: &'static str,
    pub title: String,
    pub description: String,
    pub severity: Severity,
    #[serde(serialize_with = "rfc3339")]
    pub first_seen: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub last_seen: SystemTime,
    /// Sightings folded into this incident.
    pub count: u64,
    pub agents: Vec<AlertAgent>,
    pub evidence: Evidence,
    pub tags: Tags,
    /// Policy rules: `blocked` (enforced in the kernel) or `allowed` (monitor mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    /// Why a rule with several conditions fired (`credential-stale`: `revoked`, `max-age`,
    /// `session-ended`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_nanos(
        crate::event::rfc3339_range(*t),
    ))
}

impl Alert {
    /// Whether this is the first sighting (OCSF activity Create) or an update.
    pub fn is_new(&self) -> bool {
        self.count == 1
    }

    /// A sample alert for encoder and sink tests.
    #[doc(hidden)]
    pub fn sample() -> Self {
        let agent = |id: &str| {
            #[expect(clippy::expect_used, reason = "constant, valid SPIFFE IDs")]
            let id = SpiffeId::parse(id).expect("valid SPIFFE ID");
            Principal::Agent(id)
        };
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_335_000_123);
        Self {
            uid: "a1b2c3d4e5f60718".into(),
            rule: "credential-reuse",
            title: "Credential used by 2 agents".into(),
            description: "openai:3f9a0c1d2e4b was used by research-bot and billing-bot".into(),
            severity: Severity::High,
            first_seen: t,
            last_seen: t,
            count: 1,
            agents: vec![
                AlertAgent {
                    id: agent("spiffe://example.org/agent/research-bot"),
                    name: Some("research-bot".into()),
                    owner: Some("ml-platform@example.org".into()),
                    environment: Some("prod".into()),
                    session: Some("research-bot/4242-1234".into()),
                },
                AlertAgent {
                    id: agent("spiffe://example.org/agent/billing-bot"),
                    name: Some("billing-bot".into()),
                    owner: Some("finance@example.org".into()),
                    environment: Some("prod".into()),
                    session: Some("billing-bot/4343-1300".into()),
                },
            ],
            evidence: Evidence {
                processes: vec![ProcessEvidence {
                    exec_id: Some("node1:0123abcd:1234:4242".into()),
                    pid: 4242,
                    exe: Some("/usr/bin/python3".into()),
                    argv: vec!["python3".into(), "agent.py".into()],
                    uid: 1001,
                    cgroup: Some("/agents/research-bot".into()),
                    acting_for: vec![],
                }],
                connections: vec![],
                credential: Some(CredentialEvidence {
                    fingerprint: "openai:3f9a0c1d2e4b".into(),
                    kind: "openai".into(),
                    seen_as: vec!["env:OPENAI_API_KEY".into()],
                    token: None,
                }),
            },
            tags: super::rules::CREDENTIAL_REUSE.tags,
            action: None,
            reason: None,
        }
    }
}
