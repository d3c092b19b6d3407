//! The rule catalogue: ids, severities, descriptions and threat tags
//! (`shared/design/REFERENCES.md`).
use super::{Severity, Tags};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    CredentialReuse,
    CredentialStale,
    ShadowAgent,
    HumanPrivilege,
    UndeclaredDelegation,
    EgressViolation,
    ToolViolation,
    TelemetryGap,
    DeliveryLoss,
}

impl Rule {
    pub const ALL: [Self; 9] = [
        Self::CredentialReuse,
        Self::CredentialStale,
        Self::ShadowAgent,
        Self::HumanPrivilege,
        Self::UndeclaredDelegation,
        Self::EgressViolation,
        Self::ToolViolation,
        Self::TelemetryGap,
        Self::DeliveryLoss,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Self::CredentialReuse => "credential-reuse",
            Self::CredentialStale => "credential-stale",
            Self::ShadowAgent => "shadow-agent",
            Self::HumanPrivilege => "human-privilege",
            Self::UndeclaredDelegation => "undeclared-delegation",
            Self::EgressViolation => "egress-violation",
            Self::ToolViolation => "tool-violation",
            Self::TelemetryGap => "telemetry-gap",
            Self::DeliveryLoss => "delivery-loss",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::CredentialReuse => {
                "One credential fingerprint observed under two or more agent identities."
            }
            Self::CredentialStale => {
                "A credential used after the agent's credential_max_age from its first sighting, or after it was revoked."
            }
            Self::ShadowAgent => {
                "An unregistered workload acts in a watched scope, or presents a registered agent's credential."
            }
            Self::HumanPrivilege => {
                "A registered agent runs as root or under a human login session its registration does not declare."
            }
            Self::UndeclaredDelegation => {
                "Work was handed from one agent to another that does not list it in accepts_delegation_from."
            }
            Self::EgressViolation => "A connection outside the agent's egress allowlist.",
            Self::ToolViolation => "An exec outside the agent's tools allowlist.",
            Self::TelemetryGap => {
                "The kernel dropped events (ring buffer full): the evidence has a hole."
            }
            Self::DeliveryLoss => {
                "A SIEM sink dropped records (spool full): the SIEM's copy has a hole."
            }
        }
    }

    /// Default severity (a rule may raise it for the stronger variant).
    pub fn severity(self) -> Severity {
        match self {
            Self::CredentialReuse
            | Self::CredentialStale
            | Self::TelemetryGap
            | Self::DeliveryLoss => Severity::High,
            Self::ShadowAgent
            | Self::HumanPrivilege
            | Self::UndeclaredDelegation
            | Self::EgressViolation => Severity::Medium,
            Self::ToolViolation => Severity::Low,
        }
    }

    pub fn tags(self) -> Tags {
        let t = |owasp: &[&'static str],
                 threats: &[&'static str],
                 maestro: &[&'static str],
                 nist: &[&'static str]| Tags {
            owasp: owasp.to_vec(),
            threats: threats.to_vec(),
            maestro: maestro.to_vec(),
            nist: nist.to_vec(),
        };
        match self {
            Self::CredentialReuse => t(
                &["ASI03"],
                &["T3", "T9"],
                &["L4", "L7"],
                &["MEASURE 2.7", "MANAGE 4.1"],
            ),
            Self::CredentialStale => t(
                &["ASI03"],
                &["T3", "T9"],
                &["L6"],
                &["GOVERN 1.7", "MANAGE 2.4"],
            ),
            Self::ShadowAgent => t(
                &["ASI10", "ASI02"],
                &["T13", "T2"],
                &["L4", "L7"],
                &["GOVERN 1.6", "MEASURE 2.4"],
            ),
            Self::HumanPrivilege => t(&["ASI03"], &["T3"], &["L6"], &["MAP 4.2"]),
            Self::UndeclaredDelegation => t(&["ASI03"], &["T8", "T3"], &["L5"], &["MEASURE 2.8"]),
            Self::EgressViolation | Self::ToolViolation => {
                t(&["ASI02"], &["T2"], &["L4"], &["MEASURE 2.4"])
            }
            // Not in the reference table: a hole in the evidence is a repudiation and
            // observability problem.
            Self::TelemetryGap | Self::DeliveryLoss => t(&[], &["T8"], &["L5"], &["MEASURE 2.4"]),
        }
    }
}
