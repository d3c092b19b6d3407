//! Detection: rules over attributed events → deduplicated [`Alert`]s (incidents).
//!
//! [`Detector`] runs each rule of [`rules`] (one file per rule, behind one
//! [`rules::Rule`] trait) over what it [`Seen`] of an event, records credential
//! [`sightings`] and keeps the [`Incidents`] book: a condition seen again updates its
//! incident instead of raising a new one.
mod alert;
mod detector;
mod incidents;
pub mod rules;
mod seen;
pub mod sightings;

pub use alert::{
    Alert, AlertAgent, ConnectionEvidence, CredentialEvidence, Evidence, Principal,
    ProcessEvidence, Severity, Tags,
};
pub use detector::{Detector, Output};
pub use incidents::{AlertDraft, Incidents};
pub use rules::{Rule, RuleInfo};
pub use seen::Seen;
pub use sightings::CredentialSighting;
