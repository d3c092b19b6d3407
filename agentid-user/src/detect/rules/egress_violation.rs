//! `egress-violation`: a connection or send outside the agent's `egress` allowlist.
use super::Rule;
use crate::{
    detect::{
        Evidence, Incidents,
        incidents::AlertDraft,
        seen::{self, Seen},
    },
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
                dst_ip,
                dst_port,
                dst_names,
                ..
            },
        ) = (ev.kind, &ev.detail)
        else {
            return;
        };
        let addr = if dst_ip.is_ipv6() {
            format!("[{dst_ip}]:{dst_port}")
        } else {
            format!("{dst_ip}:{dst_port}")
        };
        // Named by the host the agent asked for, when its DNS said.
        let dst = match dst_names.as_slice() {
            [] => addr,
            names => format!("{}:{dst_port} ({addr})", names.join(", ")),
        };
        let Some((owner, own)) = seen.policy_owners().find(|(owner, _)| {
            owner.policy.egress.is_some()
                && (ev.blocked || !owner.policy.allows_egress(*dst_ip, *dst_port, dst_names))
        }) else {
            return;
        };
        let a = seen.alert_agent();
        let (subject, whose) = seen::policy_subject(agent, owner, own, &dst);
        let mut draft = AlertDraft::new(
            &EGRESS_VIOLATION,
            &subject,
            ev.time,
            format!(
                "{} connected to {dst} outside {whose} egress allowlist",
                a.label()
            ),
            format!(
                "{} {dst} is not in the egress policy of {}",
                ev.kind, owner.id
            ),
        );
        draft.agents = vec![a];
        draft.action = Some(if ev.blocked { "blocked" } else { "allowed" });
        draft.evidence = Evidence {
            processes: vec![seen.process()],
            connections: seen.connection().into_iter().collect(),
            credential: None,
        };
        book.raise(draft);
    }
}
