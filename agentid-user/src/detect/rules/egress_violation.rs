//! `egress-violation`: a connection or send outside the agent's `egress` allowlist, or an
//! HTTPS request whose `Host` the allowlist does not name.
use super::Rule;
use crate::{
    detect::{
        Evidence, Incidents,
        incidents::AlertDraft,
        seen::{self, Seen},
    },
    event::{Detail, Event, EventKind, Protocol},
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
        let (Some(agent), ev) = (seen.agent, &seen.event.event) else {
            return;
        };
        let Detail::Sock {
            dst_ip,
            dst_port,
            dst_names,
            protocol,
        } = &ev.detail
        else {
            return;
        };
        let policed = || seen.policy_owners().any(|(o, _)| o.policy.egress.is_some());
        if ev.kind == EventKind::Connect && *protocol == Protocol::Tcp && policed() {
            self.ports.insert(ev.pid, *dst_port);
        }
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
        let (subject, whose) = seen::policy_subject(agent, owner, own, &dst);
        let a = seen.alert_agent();
        let draft = draft(
            seen,
            &subject,
            format!(
                "{} connected to {dst} outside {whose} egress allowlist",
                a.label()
            ),
            format!(
                "{} {dst} is not in the egress policy of {}",
                ev.kind, owner.id
            ),
            ev,
        );
        book.raise(draft);
    }
}

/// A request whose `Host` the policy does not name: never blocked (the kernel decided on
/// the connection, which was allowed), reported.
fn on_request(seen: &Seen<'_>, book: &mut Incidents, host: &str, port: u16) {
    let (Some(agent), ev) = (seen.agent, &seen.event.event) else {
        return;
    };
    let Some((owner, own)) = seen.policy_owners().find(|(owner, _)| {
        owner.policy.egress.is_some() && !owner.policy.allows_request_host(host, port)
    }) else {
        return;
    };
    let dst = format!("https://{host}:{port}");
    let (subject, whose) = seen::policy_subject(agent, owner, own, &dst);
    let a = seen.alert_agent();
    let draft = draft(
        seen,
        &subject,
        format!(
            "{} sent a request for {dst} outside {whose} egress allowlist",
            a.label()
        ),
        format!(
            "the request's Host {host}:{port} is not named in the egress policy of {} \
             (whatever address or name its connection went to)",
            owner.id
        ),
        ev,
    );
    book.raise(draft);
}

fn draft(
    seen: &Seen<'_>,
    subject: &[&str],
    title: String,
    detail: String,
    ev: &Event,
) -> AlertDraft {
    let mut draft = AlertDraft::new(&EGRESS_VIOLATION, subject, ev.time, title, detail);
    draft.agents = vec![seen.alert_agent()];
    draft.action = Some(if ev.blocked { "blocked" } else { "allowed" });
    draft.evidence = Evidence {
        processes: vec![seen.process()],
        connections: seen.connection().into_iter().collect(),
        credential: None,
    };
    draft
}
