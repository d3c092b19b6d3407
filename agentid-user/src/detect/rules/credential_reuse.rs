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
        // A token agentid issued is bound to one session: `issued-token-transfer` judges
        // it with certainty (and per session), so it is not reported twice.
        if registered.len() < 2 || cred.all_shared || cred.observation.issued.is_some() {
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

/// The fleet's `credential-reuse`: one fingerprint under two agents on two hosts, raised
/// by the host that claimed the incident in the fleet. `holders`: (agent, host) pairs.
pub fn fleet_reuse(
    book: &mut Incidents,
    fingerprint: &str,
    holders: &[(String, String)],
    now: std::time::SystemTime,
) -> crate::detect::Alert {
    let named: Vec<String> = holders
        .iter()
        .map(|(agent, host)| format!("{agent} on {host}"))
        .collect();
    let mut draft = AlertDraft::new(
        &CREDENTIAL_REUSE,
        &["fleet", fingerprint],
        now,
        format!("Credential used by {} agents across hosts", holders.len()),
        format!("{fingerprint} was used by {}", named.join(" and ")),
    );
    draft.agents = fleet_agents(holders);
    draft.evidence.credential = Some(crate::detect::CredentialEvidence {
        fingerprint: fingerprint.to_owned(),
        kind: fingerprint
            .split_once(':')
            .map_or_else(String::new, |(k, _)| k.to_owned()),
        seen_as: named,
        token: None,
    });
    book.raise(draft)
}

/// Agents of a fleet alert, known by id only (their registrations live on other hosts).
pub(super) fn fleet_agents(holders: &[(String, String)]) -> Vec<AlertAgent> {
    let mut ids: Vec<&str> = holders.iter().map(|(a, _)| a.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .map(|id| AlertAgent {
            id: crate::identity::SpiffeId::parse(id).map_or(
                crate::detect::Principal::Unregistered,
                crate::detect::Principal::Agent,
            ),
            name: None,
            owner: None,
            environment: None,
            session: None,
        })
        .collect()
}
