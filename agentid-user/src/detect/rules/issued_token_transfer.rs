//! `issued-token-transfer`: a JWT-SVID agentid issued for one session, held by another —
//! another agent, another session of the same agent, or an unregistered process. Certain,
//! not inferred: the token carries its issuer's signature and the session it was minted
//! for, and the kernel says who holds it. The minting session's own processes are silent.
use super::Rule;
use crate::{
    credentials::TokenOrigin,
    detect::{
        AlertAgent, Evidence, Incidents, alert::Principal, incidents::AlertDraft, seen::Seen,
        sightings::CredentialView,
    },
    identity::SpiffeId,
};

rule!(
    unit IssuedTokenTransfer,
    ISSUED_TOKEN_TRANSFER,
    "issued-token-transfer",
    High,
    "A JWT-SVID agentid issued for one agent session is held by another session or agent.",
    ["ASI03"],
    ["T3", "T9"],
    ["L7"],
    ["MEASURE 2.7", "MANAGE 4.1"]
);

impl Rule for IssuedTokenTransfer {
    fn on_credential(&mut self, seen: &Seen<'_>, cred: &CredentialView<'_>, book: &mut Incidents) {
        let Some(token) = cred.observation.issued.as_deref() else {
            return;
        };
        let holder = seen.alert_agent();
        if holder.id == token.agent.as_str() && holder.session.as_deref() == Some(&token.session) {
            return;
        }
        let minter = minting_agent(seen, token);
        let holder_session = holder.session.clone().unwrap_or_default();
        let chain = if token.acting_for.is_empty() {
            String::new()
        } else {
            format!(" (acting for {})", token.acting_for.join(" → "))
        };
        let mut draft = AlertDraft::new(
            &ISSUED_TOKEN_TRANSFER,
            &[&token.jti, holder.id.as_str(), &holder_session],
            seen.event.event.time,
            format!(
                "Token issued to {} held by {}",
                minter.label(),
                holder.label()
            ),
            format!(
                "{} (jti {}) was issued to {} for session {}{chain}; pid {} of {}{} holds it as {}",
                cred.evidence.fingerprint,
                token.jti,
                token.agent,
                token.session,
                seen.event.event.pid,
                holder.id,
                holder
                    .session
                    .as_deref()
                    .map(|s| format!(" session {s}"))
                    .unwrap_or_default(),
                super::super::sightings::source_label(&cred.observation.source),
            ),
        );
        draft.evidence = Evidence {
            processes: vec![seen.process()],
            connections: vec![],
            credential: Some(cred.evidence.clone()),
        };
        draft.agents = vec![minter, holder];
        book.raise(draft);
    }
}

/// The agent the token was minted for, as its registration names it, in its session.
pub(super) fn minting_agent(seen: &Seen<'_>, token: &TokenOrigin) -> AlertAgent {
    let registered = seen.registry.get_str(&token.agent);
    let id = SpiffeId::parse(&token.agent).map_or(Principal::Unregistered, Principal::Agent);
    AlertAgent {
        id,
        name: registered.and_then(|a| a.name.clone()),
        owner: registered.and_then(|a| a.owner.clone()),
        environment: registered.and_then(|a| a.environment.clone()),
        session: Some(token.session.clone()),
    }
}
