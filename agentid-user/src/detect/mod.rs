//! Detection: rules over attributed events → deduplicated [`Alert`]s.
mod alert;

pub use alert::{
    Alert, AlertAgent, ConnectionEvidence, CredentialEvidence, Evidence, ProcessEvidence, Severity,
    Tags,
};
