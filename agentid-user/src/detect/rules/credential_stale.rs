//! `credential-stale`: a credential used after it was revoked, or longer than the agent's
//! `credential_max_age` after this agent first held it.
use std::time::Duration;

use super::Rule;
use crate::detect::{
    Evidence, Incidents, incidents::AlertDraft, seen::Seen, sightings::CredentialView,
};

rule!(
    unit CredentialStale,
    CREDENTIAL_STALE,
    "credential-stale",
    High,
    "A credential used after the agent's credential_max_age from its first sighting, or after it was revoked.",
    ["ASI03"],
    ["T3", "T9"],
    ["L6"],
    ["GOVERN 1.7", "MANAGE 2.4"]
);

impl Rule for CredentialStale {
    fn on_credential(&mut self, seen: &Seen<'_>, cred: &CredentialView<'_>, book: &mut Incidents) {
        let now = seen.event.event.time;
        let age = now
            .duration_since(cred.first_seen_by_this)
            .unwrap_or(Duration::ZERO);
        let too_old = seen
            .agent
            .and_then(|a| a.policy.credential_max_age)
            .is_some_and(|max| age > max);
        if !cred.revoked && !too_old {
            return;
        }
        let fp = &cred.evidence.fingerprint;
        let why = if cred.revoked {
            format!("{fp} was revoked and is still in use")
        } else {
            format!(
                "{fp} first seen {} ago, beyond the agent's credential_max_age",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            )
        };
        let agent = seen.alert_agent();
        let mut draft = AlertDraft::new(
            &CREDENTIAL_STALE,
            &[&cred.observation.fingerprint.full_hex(), agent.id.as_str()],
            now,
            format!("Stale credential used by {}", agent.label()),
            why,
        );
        draft.evidence = Evidence {
            processes: vec![seen.process()],
            connections: vec![],
            credential: Some(cred.evidence.clone()),
        };
        draft.agents = vec![agent];
        book.raise(draft);
    }
}
