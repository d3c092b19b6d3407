//! `ambiguous-identity`: a process matches two or more agents (other than the one it came
//! from), so it cannot be given one identity. Reported, never resolved by picking one.
use super::Rule;
use crate::{
    attribution::Transition,
    detect::{AlertAgent, Evidence, Incidents, incidents::AlertDraft, seen::Seen},
    identity::SpiffeId,
};

rule!(
    unit AmbiguousIdentity,
    AMBIGUOUS_IDENTITY,
    "ambiguous-identity",
    Medium,
    "A process matches the selectors of two or more agents, none of them the one it came from.",
    ["ASI03", "ASI07"],
    ["T9"],
    ["L7"],
    ["MEASURE 2.7"]
);

impl Rule for AmbiguousIdentity {
    fn on_event(&mut self, seen: &Seen<'_>, book: &mut Incidents) {
        let Some(Transition::Ambiguous { candidates }) = &seen.event.transition else {
            return;
        };
        let ev = &seen.event.event;
        let cgroup = ev.cgroup.as_deref().unwrap_or("/");
        let mut subject: Vec<&str> = candidates.iter().map(String::as_str).collect();
        subject.push(cgroup);
        let now = match seen.agent {
            Some(agent) => format!("it stays {}'s work", agent.id),
            None => "it is unregistered".to_owned(),
        };
        let mut draft = AlertDraft::new(
            &AMBIGUOUS_IDENTITY,
            &subject,
            ev.time,
            format!("pid {} matches {} agents", ev.pid, candidates.len()),
            format!(
                "{} (pid {}, cgroup {cgroup}) matches {}; {now}",
                ev.comm,
                ev.pid,
                candidates.join(" and ")
            ),
        );
        draft.agents = candidates
            .iter()
            .filter_map(|c| SpiffeId::parse(c).ok())
            .map(AlertAgent::bare)
            .collect();
        if seen.agent.is_some() {
            draft.agents.insert(0, seen.alert_agent());
        }
        draft.evidence = Evidence {
            processes: vec![seen.process()],
            ..Evidence::default()
        };
        book.raise(draft);
    }
}
