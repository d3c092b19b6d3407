//! `shadow-agent`: an unregistered workload acting in a watched scope (medium), or
//! presenting a registered agent's credential (high).
use super::Rule;
use crate::{
    detect::{
        Evidence, Incidents, Severity, incidents::AlertDraft, seen::Seen, sightings::CredentialView,
    },
    event::EventKind,
    identity::GlobList,
};

rule!(
    ShadowAgent,
    SHADOW_AGENT,
    "shadow-agent",
    Medium,
    "An unregistered workload acts in a watched scope, or presents a registered agent's credential.",
    ["ASI10", "ASI02"],
    ["T13", "T2"],
    ["L4", "L7"],
    ["GOVERN 1.6", "MEASURE 2.4"]
);

#[derive(Debug)]
pub struct ShadowAgent {
    /// cgroup globs where an unregistered workload is a shadow agent (`watch_cgroups`).
    pub watch: Option<GlobList>,
}

impl Rule for ShadowAgent {
    fn on_event(&mut self, seen: &Seen<'_>, book: &mut Incidents) {
        let ev = &seen.event.event;
        if seen.agent.is_some()
            || !matches!(
                ev.kind,
                EventKind::Exec | EventKind::Connect | EventKind::Send
            )
        {
            return;
        }
        let (Some(watch), Some(cgroup)) = (&self.watch, ev.cgroup.as_deref()) else {
            return;
        };
        if !watch.is_match(cgroup) {
            return;
        }
        let mut draft = AlertDraft::new(
            &SHADOW_AGENT,
            &["scope", cgroup],
            ev.time,
            format!("Unregistered workload active in {cgroup}"),
            format!(
                "{} by an unregistered process in watched cgroup {cgroup}",
                ev.kind
            ),
        );
        draft.agents = vec![seen.alert_agent()];
        draft.evidence = Evidence {
            processes: vec![seen.process()],
            connections: seen.connection().into_iter().collect(),
            credential: None,
        };
        book.raise(draft);
    }

    fn on_credential(&mut self, seen: &Seen<'_>, cred: &CredentialView<'_>, book: &mut Incidents) {
        let registered: Vec<&str> = cred.registered().map(|(p, ..)| p.as_str()).collect();
        if registered.is_empty() || !cred.holders.iter().any(|(p, ..)| !p.is_registered()) {
            return;
        }
        let fp = &cred.evidence.fingerprint;
        let mut draft = AlertDraft::new(
            &SHADOW_AGENT,
            &["credential", &cred.observation.fingerprint.full_hex()],
            seen.event.event.time,
            "Unregistered workload holds a registered agent's credential".into(),
            format!(
                "{fp} of {} was presented by an unregistered process",
                registered.join(", ")
            ),
        );
        draft.severity = Severity::High;
        draft.agents = cred.holders.iter().map(|(_, a, _)| a.clone()).collect();
        draft.evidence = Evidence {
            processes: cred.holders.iter().map(|(.., p)| p.clone()).collect(),
            connections: vec![],
            credential: Some(cred.evidence.clone()),
        };
        book.raise(draft);
    }
}
