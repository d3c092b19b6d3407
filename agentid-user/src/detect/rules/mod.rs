//! The rules, one file each. A rule owns its catalogue entry ([`RuleInfo`]: id, default
//! severity, description, threat tags — the one source of truth for the README table,
//! `agentid rules` and every alert) and its logic behind [`Rule`].
//!
//! Adding a rule touches this folder only: a new `<rule>.rs` with its `pub const` info and
//! a type implementing [`Rule`], one line in [`CATALOGUE`] and one in [`all`] (plus the
//! README table row, which a test checks against the catalogue).
use std::fmt;

use super::{Incidents, Severity, Tags, seen::Seen, sightings::CredentialView};
use crate::identity::GlobList;

/// Declares a rule's catalogue entry and ties it to the rule's type (`unit` also declares
/// the type, for rules without state):
/// `rule!([unit] Type, CONST, "id", Severity, "description", [owasp], [threats], [maestro], [nist]);`
macro_rules! rule {
    (unit $ty:ident, $($rest:tt)*) => {
        #[derive(Debug)]
        pub struct $ty;

        rule!($ty, $($rest)*);
    };
    ($ty:ident, $name:ident, $id:literal, $sev:ident, $desc:literal,
     [$($o:literal),*], [$($t:literal),*], [$($m:literal),*], [$($n:literal),*]) => {
        pub const $name: $crate::detect::RuleInfo = $crate::detect::RuleInfo {
            id: $id,
            severity: $crate::detect::Severity::$sev,
            description: $desc,
            tags: $crate::detect::Tags {
                owasp: &[$($o),*],
                threats: &[$($t),*],
                maestro: &[$($m),*],
                nist: &[$($n),*],
            },
        };

        impl $crate::detect::rules::Described for $ty {
            fn info(&self) -> &'static $crate::detect::RuleInfo {
                &$name
            }
        }
    };
}

mod ambiguous_identity;
mod credential_misdirected;
mod credential_reuse;
mod credential_scan_incomplete;
mod credential_stale;
mod delivery_loss;
mod egress_violation;
mod human_privilege;
mod identity_escape;
mod identity_sprawl;
mod issued_token_transfer;
mod raw_socket;
mod shadow_agent;
mod telemetry_gap;
mod tool_violation;
mod undeclared_delegation;

pub use ambiguous_identity::{AMBIGUOUS_IDENTITY, AmbiguousIdentity};
pub use credential_misdirected::{CREDENTIAL_MISDIRECTED, CredentialMisdirected, ServiceDomains};
pub use credential_reuse::{CREDENTIAL_REUSE, CredentialReuse, fleet_reuse};
pub use credential_scan_incomplete::{CREDENTIAL_SCAN_INCOMPLETE, CredentialScanIncomplete};
pub use credential_stale::{CREDENTIAL_STALE, CredentialStale, presented_after_end};
pub use delivery_loss::{DELIVERY_LOSS, DeliveryLoss, delivery_loss};
pub use egress_violation::{EGRESS_VIOLATION, EgressViolation};
pub use human_privilege::{HUMAN_PRIVILEGE, HumanPrivilege};
pub use identity_escape::{IDENTITY_ESCAPE, IdentityEscape};
pub use identity_sprawl::{IDENTITY_SPRAWL, IdentitySprawl, identity_sprawl, sprawl_reason};
pub use issued_token_transfer::{ISSUED_TOKEN_TRANSFER, IssuedTokenTransfer};
pub use raw_socket::{RAW_SOCKET, RawSocket};
pub use shadow_agent::{SHADOW_AGENT, ShadowAgent};
pub use telemetry_gap::{DownLoss, TELEMETRY_GAP, TelemetryGap};
pub use tool_violation::{TOOL_VIOLATION, ToolViolation};
pub use undeclared_delegation::{UNDECLARED_DELEGATION, UndeclaredDelegation};

/// A rule's catalogue entry.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleInfo {
    pub id: &'static str,
    /// Default severity (a rule may raise a stronger variant higher).
    pub severity: Severity,
    pub description: &'static str,
    pub tags: Tags,
}

impl RuleInfo {
    /// The tags as one line, group by group (`ASI03 · T3 T9 · L4 L7 · MEASURE 2.7, MANAGE
    /// 4.1`), empty groups left out: the README table's last column.
    pub fn tag_line(&self) -> String {
        let Tags {
            owasp,
            threats,
            maestro,
            nist,
        } = self.tags;
        [
            owasp.join(" "),
            threats.join(" "),
            maestro.join(" "),
            nist.join(", "),
        ]
        .into_iter()
        .filter(|g| !g.is_empty())
        .collect::<Vec<_>>()
        .join(" · ")
    }
}

/// A rule's link to its catalogue entry (written by `rule!`).
pub trait Described {
    fn info(&self) -> &'static RuleInfo;
}

/// Every rule, in the README's order.
pub const CATALOGUE: [&RuleInfo; 16] = [
    &CREDENTIAL_REUSE,
    &CREDENTIAL_STALE,
    &ISSUED_TOKEN_TRANSFER,
    &CREDENTIAL_MISDIRECTED,
    &SHADOW_AGENT,
    &HUMAN_PRIVILEGE,
    &UNDECLARED_DELEGATION,
    &IDENTITY_ESCAPE,
    &AMBIGUOUS_IDENTITY,
    &CREDENTIAL_SCAN_INCOMPLETE,
    &RAW_SOCKET,
    &EGRESS_VIOLATION,
    &TOOL_VIOLATION,
    &TELEMETRY_GAP,
    &DELIVERY_LOSS,
    &IDENTITY_SPRAWL,
];

/// Looks a rule up by id.
pub fn info(id: &str) -> Option<&'static RuleInfo> {
    CATALOGUE.iter().copied().find(|r| r.id == id)
}

/// One detection rule over attributed events. Rules are pure: everything they judge is
/// in [`Seen`] (the event, its agent's registration, the credentials found in it) and
/// [`CredentialView`]; they raise incidents into the book and keep no I/O.
pub trait Rule: Described + fmt::Debug + Send {
    /// Every attributed event.
    fn on_event(&mut self, _seen: &Seen<'_>, _book: &mut Incidents) {}

    /// Every credential found in an event, after its sighting was recorded.
    fn on_credential(
        &mut self,
        _seen: &Seen<'_>,
        _cred: &CredentialView<'_>,
        _book: &mut Incidents,
    ) {
    }
}

/// The event rules, in the order they run (credentials first, as before the split).
/// `watch`: cgroup globs where an unregistered workload is a shadow agent; `domains`:
/// where each service's credentials may go.
pub fn all(watch: Option<GlobList>, domains: ServiceDomains) -> Vec<Box<dyn Rule>> {
    vec![
        Box::new(HumanPrivilege),
        Box::new(CredentialStale),
        Box::new(CredentialReuse),
        Box::new(IssuedTokenTransfer),
        Box::new(CredentialMisdirected { domains }),
        Box::new(ShadowAgent { watch }),
        Box::new(EgressViolation::default()),
        Box::new(ToolViolation),
        Box::new(UndeclaredDelegation),
        Box::new(IdentityEscape),
        Box::new(AmbiguousIdentity),
        Box::new(CredentialScanIncomplete),
        Box::new(RawSocket),
    ]
}

#[cfg(test)]
mod tests;
