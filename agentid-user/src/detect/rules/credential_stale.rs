//! `credential-stale`: a credential used after it was revoked, longer than the agent's
//! `credential_max_age` after this agent first held it, or — a token agentid issued —
//! after the session it was minted for ended. The alert's `reason` says which.
use std::time::{Duration, SystemTime};

use super::Rule;
use crate::{
    credentials::{Fingerprint, TokenOrigin},
    detect::{
        Alert, AlertAgent, CredentialEvidence, Evidence, Incidents, ProcessEvidence,
        alert::Principal, incidents::AlertDraft, seen::Seen, sightings::CredentialView,
    },
    identity::SpiffeId,
};

rule!(
    unit CredentialStale,
    CREDENTIAL_STALE,
    "credential-stale",
    High,
    "A credential used after the agent's credential_max_age from its first sighting, after it was revoked, or (a token agentid issued) after its session ended.",
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
        let ended = cred
            .observation
            .issued
            .as_deref()
            .filter(|t| !t.session_live);
        let fp = &cred.evidence.fingerprint;
        let (reason, why) = if cred.revoked {
            ("revoked", format!("{fp} was revoked and is still in use"))
        } else if let Some(t) = ended {
            (
                "session-ended",
                format!(
                    "{fp} (jti {}) was issued to {} for session {}, which has ended",
                    t.jti, t.agent, t.session
                ),
            )
        } else if too_old {
            (
                "max-age",
                format!(
                    "{fp} first seen {} ago, beyond the agent's credential_max_age",
                    humantime::format_duration(Duration::from_secs(age.as_secs()))
                ),
            )
        } else {
            return;
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
        draft.reason = Some(reason);
        book.raise(draft);
    }
}

/// `credential-stale` for a token agentid issued, presented to `ValidateJWTSVID` after its
/// session ended (the call is refused; someone still holds and offers the token). The
/// presenter is the caller as the kernel names it (`AlertAgent::unregistered` if no agent).
pub fn presented_after_end(
    book: &mut Incidents,
    token: &TokenOrigin,
    fingerprint: &Fingerprint,
    presenter: AlertAgent,
    process: ProcessEvidence,
    now: SystemTime,
) -> Alert {
    let fp = fingerprint.to_string();
    let mut draft = AlertDraft::new(
        &CREDENTIAL_STALE,
        &[&fingerprint.full_hex(), presenter.id.as_str()],
        now,
        format!("Stale credential presented by {}", presenter.label()),
        format!(
            "{fp} (jti {}) was issued to {} for session {}, which has ended; pid {} presented it to ValidateJWTSVID",
            token.jti, token.agent, token.session, process.pid
        ),
    );
    let minter = AlertAgent {
        session: Some(token.session.clone()),
        ..SpiffeId::parse(&token.agent)
            .map_or_else(|_| AlertAgent::unregistered(), AlertAgent::bare)
    };
    draft.evidence = Evidence {
        processes: vec![process],
        connections: vec![],
        credential: Some(CredentialEvidence {
            fingerprint: fp,
            kind: fingerprint.kind.to_string(),
            seen_as: vec!["ValidateJWTSVID".into()],
            token: Some(token.clone()),
        }),
    };
    draft.agents =
        if presenter.id == Principal::Unregistered || presenter.id == token.agent.as_str() {
            vec![minter]
        } else {
            vec![minter, presenter]
        };
    draft.reason = Some("session-ended");
    book.raise(draft)
}
