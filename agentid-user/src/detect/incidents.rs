//! The incident book: every alert is an incident with a stable uid; the same condition
//! seen again updates it (count, last seen, agents, evidence) instead of raising a new one.
use std::{collections::HashMap, time::SystemTime};

use sha2::{Digest as _, Sha256};

use super::{Alert, AlertAgent, Evidence, Severity, rules::RuleInfo};

/// What a rule raises: the incident's subject (which, with the rule, names it) and its
/// current state.
#[derive(Debug, Clone)]
pub struct AlertDraft {
    pub rule: &'static RuleInfo,
    /// The parts that make two sightings the same incident (agent, destination, ...).
    pub subject: Vec<String>,
    /// The rule's default, or a stronger variant's.
    pub severity: Severity,
    pub title: String,
    pub description: String,
    pub time: SystemTime,
    pub agents: Vec<AlertAgent>,
    pub evidence: Evidence,
    /// For policy rules: what became of the action (`blocked` under enforcement,
    /// `allowed` in monitor mode).
    pub action: Option<&'static str>,
    /// Which of the rule's conditions held (see [`Alert::reason`]).
    pub reason: Option<&'static str>,
}

impl AlertDraft {
    /// A draft at the rule's default severity, with no agents and no evidence yet.
    pub fn new(
        rule: &'static RuleInfo,
        subject: &[&str],
        time: SystemTime,
        title: String,
        description: String,
    ) -> Self {
        Self {
            rule,
            subject: subject.iter().map(|s| (*s).to_owned()).collect(),
            severity: rule.severity,
            title,
            description,
            time,
            agents: Vec::new(),
            evidence: Evidence::default(),
            action: None,
            reason: None,
        }
    }
}

/// Incidents by uid, and the alerts raised since the last [`Incidents::take_raised`].
#[derive(Debug, Default)]
pub struct Incidents {
    by_uid: HashMap<String, Alert>,
    raised: Vec<Alert>,
}

/// A stable incident id: the first 8 bytes of SHA-256 over the rule id and the subject.
pub(crate) fn uid(rule: &str, subject: &[impl AsRef<str>]) -> String {
    let mut h = Sha256::new();
    h.update(rule);
    for s in subject {
        h.update([0]);
        h.update(s.as_ref());
    }
    hex::encode(&h.finalize()[..8])
}

impl Incidents {
    /// New incident, or an update of the one with the same uid: count + 1, last seen
    /// now, severity the highest seen, agents and evidence refreshed (a reuse alert gains
    /// the third agent, say). Returns the incident's new state.
    pub fn raise(&mut self, draft: AlertDraft) -> Alert {
        let AlertDraft {
            rule,
            subject,
            severity,
            title,
            description,
            time,
            agents,
            evidence,
            action,
            reason,
        } = draft;
        let uid = uid(rule.id, &subject);
        let alert = self.by_uid.entry(uid.clone()).or_insert_with(|| Alert {
            uid,
            rule: rule.id,
            title: String::new(),
            description: String::new(),
            severity,
            first_seen: time,
            last_seen: time,
            count: 0,
            agents: Vec::new(),
            evidence: Evidence::default(),
            tags: rule.tags,
            action,
            reason,
        });
        alert.count += 1;
        alert.last_seen = alert.last_seen.max(time);
        alert.severity = alert.severity.max(severity);
        alert.title = title;
        alert.description = description;
        alert.agents = agents;
        alert.evidence = evidence;
        alert.action = action;
        alert.reason = reason;
        let alert = alert.clone();
        self.raised.push(alert.clone());
        alert
    }

    /// The alerts raised (new or updated) since the last call, in order.
    pub fn take_raised(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.raised)
    }

    /// Every incident's current state.
    pub fn all(&self) -> impl Iterator<Item = &Alert> {
        self.by_uid.values()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::detect::rules::{CREDENTIAL_REUSE, EGRESS_VIOLATION};

    fn draft(subject: &str, at: u64, severity: Severity) -> AlertDraft {
        let mut d = AlertDraft::new(
            &EGRESS_VIOLATION,
            &["spiffe://t/agent/a", subject],
            SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            format!("title {at}"),
            format!("description {at}"),
        );
        d.severity = severity;
        d
    }

    #[test]
    fn same_subject_is_one_incident_updated_in_place() {
        let mut book = Incidents::default();
        let first = book.raise(draft("10.0.0.1:443", 10, Severity::Medium));
        assert_eq!(first.count, 1);
        assert!(first.is_new());
        assert_eq!(first.rule, "egress-violation");
        assert_eq!(first.tags, EGRESS_VIOLATION.tags);
        // An update: a later sighting, a stronger variant, new text.
        let again = book.raise(draft("10.0.0.1:443", 30, Severity::High));
        assert_eq!(again.uid, first.uid);
        assert_eq!(again.count, 2);
        assert_eq!(again.first_seen, first.first_seen);
        assert_eq!(
            again.last_seen,
            SystemTime::UNIX_EPOCH + Duration::from_secs(30)
        );
        assert_eq!(again.severity, Severity::High);
        assert_eq!(again.title, "title 30");
        // A sighting that arrives late never moves last_seen back, nor lowers severity.
        let late = book.raise(draft("10.0.0.1:443", 20, Severity::Low));
        assert_eq!(late.last_seen, again.last_seen);
        assert_eq!(late.severity, Severity::High);
        assert_eq!(late.count, 3);
        // Another subject is another incident.
        let other = book.raise(draft("10.0.0.2:443", 40, Severity::Medium));
        assert_ne!(other.uid, first.uid);
        assert_eq!(book.all().count(), 2);
        let raised = book.take_raised();
        assert_eq!(
            raised.iter().map(|a| a.count).collect::<Vec<_>>(),
            [1, 2, 3, 1]
        );
        assert!(book.take_raised().is_empty());
    }

    #[test]
    fn uid_is_stable_and_separates_rule_and_subject_parts() {
        // Fixed value: a uid that changed between versions would split every incident.
        assert_eq!(
            uid("credential-reuse", &["abc"]),
            uid(CREDENTIAL_REUSE.id, &["abc"])
        );
        assert_ne!(uid("r", &["ab", "c"]), uid("r", &["a", "bc"]));
        assert_ne!(uid("r", &["x"]), uid("s", &["x"]));
        assert_eq!(uid("r", &["x"]).len(), 16);
    }
}
