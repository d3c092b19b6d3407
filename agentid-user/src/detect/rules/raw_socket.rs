//! `raw-socket`: a registered agent created a raw IP or packet socket. What it sends through
//! it bypasses the cgroup connect/sendmsg hooks — and so the egress policy — so the bypass
//! is at least seen.
use super::Rule;
use crate::{
    detect::{Evidence, Incidents, incidents::AlertDraft, seen::Seen},
    event::Detail,
};

rule!(
    unit RawSocket,
    RAW_SOCKET,
    "raw-socket",
    Medium,
    "A registered agent created a raw IP or packet socket: its traffic bypasses the connect hooks and the egress policy.",
    ["ASI02"],
    ["T2"],
    ["L4"],
    ["MEASURE 2.4"]
);

impl Rule for RawSocket {
    fn on_event(&mut self, seen: &Seen<'_>, book: &mut Incidents) {
        let Detail::Socket {
            family,
            sock_type,
            protocol,
        } = &seen.event.event.detail
        else {
            return;
        };
        let Some(agent) = seen.agent else { return };
        let a = seen.alert_agent();
        let ev = &seen.event.event;
        let kind = format!("{family} type {sock_type} protocol {protocol}");
        let mut draft = AlertDraft::new(
            &RAW_SOCKET,
            &[agent.id.as_str(), &kind],
            ev.time,
            format!("{} opened a raw {family} socket", a.label()),
            format!(
                "{} (pid {}, {}) created a {kind} socket: traffic through it is not seen by \
                 the connect hooks nor checked against the egress policy",
                agent.id, ev.pid, ev.comm
            ),
        );
        draft.agents = vec![a];
        draft.evidence = Evidence {
            processes: vec![seen.process()],
            ..Evidence::default()
        };
        book.raise(draft);
    }
}
