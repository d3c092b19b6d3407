//! Detection: rules over attributed events → deduplicated [`Alert`]s.
mod alert;
mod engine;
mod rules;

pub use alert::{
    Alert, AlertAgent, ConnectionEvidence, CredentialEvidence, Evidence, ProcessEvidence, Severity,
    Tags,
};
pub use engine::{CredentialSighting, Detector, Output, UNREGISTERED};
pub use rules::Rule;
