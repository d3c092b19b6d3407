//! `identity-escape`: a registered agent's process left for a cgroup that no agent's
//! selectors match (one write to `cgroup.procs`, or a child born elsewhere) without a
//! declared hand-off. It stays the agent's work under the agent's policy; this says it tried.
use super::Rule;
use crate::{
    attribution::Transition,
    detect::{Evidence, Incidents, incidents::AlertDraft, seen::Seen},
};

rule!(
    unit IdentityEscape,
    IDENTITY_ESCAPE,
    "identity-escape",
    High,
    "A registered agent's process left every identity (moved or was born where no agent's selectors match) without a declared hand-off.",
    ["ASI03", "ASI10"],
    ["T8", "T13"],
    ["L4", "L5"],
    ["MEASURE 2.8"]
);

impl Rule for IdentityEscape {
    fn on_event(&mut self, seen: &Seen<'_>, book: &mut Incidents) {
        let Some(Transition::Escape { from, to }) = &seen.event.transition else {
            return;
        };
        let a = seen.alert_agent();
        let ev = &seen.event.event;
        let process = seen.process();
        let who = process
            .exec_id
            .clone()
            .unwrap_or_else(|| ev.pid.to_string());
        let mut draft = AlertDraft::new(
            &IDENTITY_ESCAPE,
            &[a.id.as_str(), &who, to],
            ev.time,
            format!(
                "{} process {} left its identity for {to}",
                a.label(),
                ev.pid
            ),
            format!(
                "pid {} of {} went from cgroup {from} to {to}, where no agent's selectors \
                 match; it is still attributed to {} and under its policy",
                ev.pid, a.id, a.id
            ),
        );
        draft.agents = vec![a];
        draft.evidence = Evidence {
            processes: vec![process],
            connections: seen.connection().into_iter().collect(),
            credential: None,
        };
        book.raise(draft);
    }
}
