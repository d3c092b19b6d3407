//! `credential-reuse`: one credential, two or more agents — the identity question at the
//! heart of agentid. Pairs that declared `credentials.shared_with` are exempt.
use super::Rule;
use crate::detect::{
    AlertAgent, Evidence, Incidents, incidents::AlertDraft, seen::Seen, sightings::CredentialView,
};

rule!(
    unit CredentialReuse,
    CREDENTIAL_REUSE,
    "credential-reuse",
    High,
    "One credential fingerprint observed under two or more agent identities.",
    ["ASI03"],
    ["T3", "T9"],
    ["L4", "L7"],
    ["MEASURE 2.7", "MANAGE 4.1"]
);

impl Rule for CredentialReuse {
    fn on_credential(&mut self, seen: &Seen<'_>, cred: &CredentialView<'_>, book: &mut Incidents) {
        let registered: Vec<_> = cred.registered().collect();
        if registered.len() < 2 || cred.all_shared {
            return;
        }
        let agents: Vec<AlertAgent> = registered.iter().map(|(_, a, _)| a.clone()).collect();
        let names: Vec<String> = agents.iter().map(AlertAgent::label).collect();
        let fp = &cred.evidence.fingerprint;
        let mut draft = AlertDraft::new(
            &CREDENTIAL_REUSE,
            &[&cred.observation.fingerprint.full_hex()],
            seen.event.event.time,
            format!("Credential used by {} agents", agents.len()),
            format!("{fp} was used by {}", names.join(" and ")),
        );
        draft.evidence = Evidence {
            processes: registered.iter().map(|(.., p)| p.clone()).collect(),
            connections: vec![],
            credential: Some(cred.evidence.clone()),
        };
        draft.agents = agents;
        book.raise(draft);
    }
}
