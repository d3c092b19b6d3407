//! `egress-violation`: a connection or send outside the agent's `egress` allowlist, or an
//! HTTPS request whose `Host` the allowlist does not name.
use super::Rule;
use crate::{
    detect::{
        Evidence, Incidents,
        incidents::AlertDraft,
        seen::{self, Seen},
    },
    event::{Detail, EventKind, Protocol},
    identity::{SpiffeId, policy::Policy},
};

/// The port of each live process's latest TCP connect (a request over TLS does not say
/// which connection it travels on; the latest connect of its process is the estimate).
#[derive(Debug, Default)]
pub struct EgressViolation {
    ports: rustc_hash::FxHashMap<u32, u16>,
}

rule!(
    EgressViolation,
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
        let ev = &seen.event.event;
        if ev.kind == EventKind::Exit {
            self.ports.remove(&ev.pid);
            return;
        }
        if seen.agent.is_none() {
            return;
        }
        match (ev.kind, &ev.detail) {
            (EventKind::Connect | EventKind::Send, Detail::Sock { .. }) => {
                self.on_sock(seen, book);
            }
            (
                EventKind::Request,
                Detail::Request {
                    host: Some(host), ..
                },
            ) => {
                let port = self.ports.get(&ev.pid).copied().unwrap_or(443);
                on_request(seen, book, host, port);
            }
            _ => {}
        }
    }
}

impl EgressViolation {
    fn on_sock(&mut self, seen: &Seen<'_>, book: &mut Incidents) {
        let ev = &seen.event.event;
        let Detail::Sock {
            dst_ip,
            dst_port,
            dst_names,
            protocol,
        } = &ev.detail
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
        let policed = raise(
            seen,
            book,
            &dst,
            |p| ev.blocked || !p.allows_egress(*dst_ip, *dst_port, dst_names),
            |label, whose| format!("{label} connected to {dst} outside {whose} egress allowlist"),
            |owner| format!("{} {dst} is not in the egress policy of {owner}", ev.kind),
        );
        if policed && ev.kind == EventKind::Connect && *protocol == Protocol::Tcp {
            self.ports.insert(ev.pid, *dst_port);
        }
    }
}

/// A request whose `Host` the policy does not name: never blocked (the kernel decided on
/// the connection, which was allowed), reported.
fn on_request(seen: &Seen<'_>, book: &mut Incidents, host: &str, port: u16) {
    let dst = format!("https://{host}:{port}");
    raise(
        seen,
        book,
        &dst,
        |p| !p.allows_request_host(host, port),
        |label, whose| format!("{label} sent a request for {dst} outside {whose} egress allowlist"),
        |owner| {
            format!(
                "the request's Host {host}:{port} is not named in the egress policy of {owner} \
                 (whatever address or name its connection went to)"
            )
        },
    );
}

/// Raises an alert for `dst` against the first policy owner with an `egress` list that
/// `violates`; returns whether any owner has an `egress` list (the event is policed).
fn raise(
    seen: &Seen<'_>,
    book: &mut Incidents,
    dst: &str,
    violates: impl Fn(&Policy) -> bool,
    title: impl FnOnce(String, &str) -> String,
    detail: impl FnOnce(&SpiffeId) -> String,
) -> bool {
    let Some(agent) = seen.agent else {
        return false;
    };
    let mut policed = false;
    let mut found = None;
    for (owner, own) in seen.policy_owners() {
        if owner.policy.egress.is_none() {
            continue;
        }
        policed = true;
        if violates(&owner.policy) {
            found = Some((owner, own));
            break;
        }
    }
    let Some((owner, own)) = found else {
        return policed;
    };
    let ev = &seen.event.event;
    let (subject, whose) = seen::policy_subject(agent, owner, own, dst);
    let mut draft = AlertDraft::new(
        &EGRESS_VIOLATION,
        &subject,
        ev.time,
        title(seen.alert_agent().label(), &whose),
        detail(&owner.id),
    );
    draft.agents = vec![seen.alert_agent()];
    draft.action = Some(if ev.blocked { "blocked" } else { "allowed" });
    draft.evidence = Evidence {
        processes: vec![seen.process()],
        connections: seen.connection().into_iter().collect(),
        credential: None,
    };
    book.raise(draft);
    true
}
