//! `human-privilege`: a registered agent running with a human's power — as root or inside
//! a human's login session without declaring that uid (medium), or reading another user's
//! credential file under a home directory (high).
use super::Rule;
use crate::{
    detect::{
        CredentialEvidence, Evidence, Incidents, Severity, incidents::AlertDraft, seen::Seen,
    },
    event::EventKind,
};

rule!(
    unit HumanPrivilege,
    HUMAN_PRIVILEGE,
    "human-privilege",
    Medium,
    "A registered agent runs as root or under a human login session its registration does not declare, or reads another user's credential file.",
    ["ASI03"],
    ["T3"],
    ["L6"],
    ["MAP 4.2"]
);

impl Rule for HumanPrivilege {
    fn on_event(&mut self, seen: &Seen<'_>, book: &mut Incidents) {
        file(seen, book);
        if seen.event.event.kind == EventKind::Exec {
            uid(seen, book);
        }
    }
}

/// An exec as root, or inside another uid's login session, the registration not declaring it.
fn uid(seen: &Seen<'_>, book: &mut Incidents) {
    let Some(agent) = seen.agent else { return };
    let ev = seen.event;
    let uid = ev.event.uid;
    let declared = agent.selectors.iter().any(|s| s.uid == Some(uid));
    let why = if uid == 0 && !declared {
        "runs as root".to_owned()
    } else if let Some(login) = ev.loginuid.filter(|_| !declared) {
        format!("runs as uid {uid} inside the login session of uid {login}")
    } else {
        return;
    };
    let a = seen.alert_agent();
    let mut draft = AlertDraft::new(
        &HUMAN_PRIVILEGE,
        &[
            agent.id.as_str(),
            &uid.to_string(),
            &ev.loginuid.unwrap_or(u32::MAX).to_string(),
        ],
        ev.event.time,
        format!("{} {why}", a.label()),
        format!(
            "{} {why}, a uid its registration does not declare",
            agent.id
        ),
    );
    draft.agents = vec![a];
    draft.evidence = Evidence {
        processes: vec![seen.process()],
        ..Evidence::default()
    };
    book.raise(draft);
}

/// A credential file under `/home` or `/root`, owned by another uid, read by an agent
/// that does not declare it as its own (`credentials.files`). The file is the one the
/// kernel says was opened, whatever path reached it (`via`).
fn file(seen: &Seen<'_>, book: &mut Incidents) {
    let (Some(agent), Some(file)) = (seen.agent, &seen.findings.file) else {
        return;
    };
    let ev = &seen.event.event;
    let text = file.path.to_string_lossy();
    let human_home = text.starts_with("/home/") || text.starts_with("/root/");
    if !human_home || file.owner == ev.uid || agent.credentials.owns_file(&text) {
        return;
    }
    let through = file
        .via
        .as_ref()
        .map(|v| format!(" through {}", v.display()))
        .unwrap_or_default();
    let a = seen.alert_agent();
    let mut draft = AlertDraft::new(
        &HUMAN_PRIVILEGE,
        &[agent.id.as_str(), "file", &text],
        ev.time,
        format!("{} read a human's credential file {text}", a.label()),
        format!(
            "{} (uid {}) opened {text}{through}, owned by uid {}",
            agent.id, ev.uid, file.owner
        ),
    );
    draft.severity = Severity::High;
    draft.agents = vec![a];
    draft.evidence = Evidence {
        processes: vec![seen.process()],
        connections: vec![],
        credential: seen
            .findings
            .observations
            .first()
            .map(|o| CredentialEvidence {
                fingerprint: o.fingerprint.to_string(),
                kind: o.kind.to_string(),
                seen_as: vec![format!("file:{text}")],
                token: o.issued.as_deref().cloned(),
            }),
    };
    book.raise(draft);
}
