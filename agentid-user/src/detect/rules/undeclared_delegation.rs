//! `undeclared-delegation`: work handed from one agent to another that does not list it in
//! `accepts_delegation_from`.
use super::Rule;
use crate::{
    detect::{AlertAgent, Evidence, Incidents, incidents::AlertDraft, seen::Seen},
    event::EventKind,
    identity::SpiffeId,
};

rule!(
    unit UndeclaredDelegation,
    UNDECLARED_DELEGATION,
    "undeclared-delegation",
    Medium,
    "Work was handed from one agent to another that does not list it in accepts_delegation_from.",
    ["ASI03"],
    ["T8", "T3"],
    ["L5"],
    ["MEASURE 2.8"]
);

impl Rule for UndeclaredDelegation {
    fn on_event(&mut self, seen: &Seen<'_>, book: &mut Incidents) {
        let ev = seen.event;
        if ev.delegation_declared || ev.agent.is_none() {
            return;
        }
        if !matches!(ev.event.kind, EventKind::Exec | EventKind::Fork) {
            return;
        }
        let Some(from) = ev.acting_for.last() else {
            return;
        };
        let a = seen.alert_agent();
        let to = a.id.to_string();
        let mut draft = AlertDraft::new(
            &UNDECLARED_DELEGATION,
            &[from, &to],
            ev.event.time,
            format!(
                "{from} handed work to {} without a declared delegation",
                a.label()
            ),
            format!(
                "{to} does not list {from} in accepts_delegation_from; chain: {}",
                ev.acting_for.join(" → ")
            ),
        );
        // The chain holds registered agents' ids only; an unparsable one names nobody.
        let from =
            SpiffeId::parse(from).map_or_else(|_| AlertAgent::unregistered(), AlertAgent::bare);
        draft.agents = vec![from, a];
        draft.evidence = Evidence {
            processes: vec![seen.process()],
            ..Evidence::default()
        };
        book.raise(draft);
    }
}
