//! `egress-violation`: a connection or send outside the agent's `egress` allowlist.
use super::Rule;
use crate::{
    detect::{Evidence, Incidents, incidents::AlertDraft, seen::Seen},
    event::{Detail, EventKind},
};

rule!(
    unit EgressViolation,
    EGRESS_VIOLATION,
    "egress-violation",
    Medium,
    "A connection outside the agent's egress allowlist.",
    ["ASI02"],
    ["T2"],
    ["L4"],
    ["MEASURE 2.4"]
);

impl Rule for EgressViolation {
    fn on_event(&mut self, seen: &Seen<'_>, book: &mut Incidents) {
        let Some(agent) = seen.agent else { return };
        let ev = &seen.event.event;
        let (
            EventKind::Connect | EventKind::Send,
            Detail::Sock {
                dst_ip, dst_port, ..
            },
        ) = (ev.kind, &ev.detail)
        else {
            return;
        };
        if agent.policy.egress.is_none() || agent.policy.allows_egress(*dst_ip, *dst_port) {
            return;
        }
        let dst = if dst_ip.is_ipv6() {
            format!("[{dst_ip}]:{dst_port}")
        } else {
            format!("{dst_ip}:{dst_port}")
        };
        let a = seen.alert_agent();
        let mut draft = AlertDraft::new(
            &EGRESS_VIOLATION,
            &[agent.id.as_str(), &dst],
            ev.time,
            format!(
                "{} connected to {dst} outside its egress allowlist",
                a.label()
            ),
            format!(
                "{} {dst} is not in the egress policy of {}",
                ev.kind, agent.id
            ),
        );
        draft.agents = vec![a];
        draft.evidence = Evidence {
            processes: vec![seen.process()],
            connections: seen.connection().into_iter().collect(),
            credential: None,
        };
        book.raise(draft);
    }
}
